"""The SDK's exceptions: one class per gRPC status code a caller may want to handle.

Every exception keeps what the server said: the status code, the status details (the server's
PHI-free reason) and, when the gateway sent one, the ``lungsearch.v1.ErrorDetail`` from the binary
trailing-metadata entry ``lungsearch-error-bin`` (reason, field at fault, component code, retriable).

``LungSearchError`` derives from :class:`lungsearch.errors.LungsearchError`, so code that already
catches the library's base class also catches remote failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from lungsearch._proto.v1 import common_pb2
from lungsearch.errors import LungsearchError

__all__ = [
    "ERROR_METADATA_KEY",
    "ErrorDetail",
    "LungSearchError",
    "InvalidArgument",
    "NotFound",
    "Unauthenticated",
    "PermissionDenied",
    "ResourceExhausted",
    "Unavailable",
    "DeadlineExceeded",
    "Internal",
    "error_from_rpc",
]

#: Binary trailing-metadata key carrying a serialized ``lungsearch.v1.ErrorDetail``.
ERROR_METADATA_KEY = "lungsearch-error-bin"


@dataclass(frozen=True)
class ErrorDetail:
    """The machine-readable half of a server error (``lungsearch.v1.ErrorDetail``).

    Attributes:
        reason: ``ErrorReason`` name without its prefix, e.g. ``"INVALID_IMAGE"``.
        message: PHI-free explanation.
        retriable: the server says the same request may succeed later.
        field: the request field at fault (e.g. ``"images[2]"``) or "".
        code: finer-grained component code (e.g. ``"truncated_pixel_data"``) or "".
    """

    reason: str
    message: str = ""
    retriable: bool = False
    field: str = ""
    code: str = ""

    @classmethod
    def from_proto(cls, msg: common_pb2.ErrorDetail) -> "ErrorDetail":
        name = (
            common_pb2.ErrorReason.Name(msg.reason)
            if msg.reason in common_pb2.ErrorReason.values()
            else "ERROR_REASON_UNSPECIFIED"
        )
        return cls(
            reason=name.removeprefix("ERROR_REASON_"),
            message=msg.message,
            retriable=msg.retriable,
            field=msg.field,
            code=msg.code,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "message": self.message,
            "retriable": self.retriable,
            "field": self.field,
            "code": self.code,
        }


class LungSearchError(LungsearchError):
    """A call failed. Subclasses name the gRPC status; unmapped statuses raise this base class.

    Attributes:
        status: the ``grpc.StatusCode`` (None for a failure detected before any call was made).
        details: the server's status details (its PHI-free reason), verbatim.
        detail: the parsed :class:`ErrorDetail`, or None when the server sent none.
        reason: ``detail.reason`` or the status name.
        retriable: ``detail.retriable`` when present, else whether the status is transient.
        method: the RPC that failed (e.g. ``"Search"``), when known.
    """

    status_code: grpc.StatusCode | None = None  # per-subclass default

    def __init__(
        self,
        message: str,
        *,
        status: grpc.StatusCode | None = None,
        details: str = "",
        detail: ErrorDetail | None = None,
        method: str = "",
        code: str = "",
        field: str = "",
    ) -> None:
        status = status if status is not None else type(self).status_code
        super().__init__(
            message, code=code or (detail.code if detail else ""), field=field or (detail.field if detail else "")
        )
        self.status = status
        self.details = details or message
        self.detail = detail
        self.method = method
        self.grpc_status = status.name if status is not None else "UNKNOWN"
        self.reason = detail.reason if detail and detail.reason != "UNSPECIFIED" else self.grpc_status
        self.retriable = (
            detail.retriable if detail else status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        )

    def __reduce__(self):  # keep every field across pickling (worker pools, Ray tasks)
        return (
            _rebuild,
            (
                type(self),
                self.message,
                self.status.name if self.status else None,
                self.details,
                self.detail,
                self.method,
                self.code,
                self.field,
            ),
        )

    def __str__(self) -> str:
        where = f"{self.method}: " if self.method else ""
        status = f"{self.status.name}: " if self.status is not None else ""
        return f"{where}{status}{super().__str__()}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``lungsearch … --json`` prints on failure)."""
        return {
            "status": self.grpc_status,
            "reason": self.reason,
            "message": self.message,
            "method": self.method,
            "retriable": self.retriable,
            "field": self.field,
            "code": self.code,
            "detail": self.detail.to_dict() if self.detail else None,
        }


def _rebuild(cls, message, status_name, details, detail, method, code, field):
    status = grpc.StatusCode[status_name] if status_name else None
    return cls(message, status=status, details=details, detail=detail, method=method, code=code, field=field)


class InvalidArgument(LungSearchError, ValueError):
    """The request is malformed or its content was rejected (bad image, empty report, PHI). Never retried.

    Also raised before any call for arguments the client itself can reject (``status`` is then
    INVALID_ARGUMENT too, and ``method`` names the SDK method).
    """

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LungSearchError):
    """Unknown case key, profile or model version."""

    status_code = grpc.StatusCode.NOT_FOUND


class Unauthenticated(LungSearchError):
    """No valid bearer token (pass ``token=`` to the client)."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LungSearchError):
    """The token is valid but its role may not call this method (e.g. ActivateModel needs admin)."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(LungSearchError):
    """A size limit was exceeded (not retriable) or the server is overloaded (retriable: see ``retriable``)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(LungSearchError):
    """The server, a model or the store cannot be reached right now; retried with backoff."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(LungSearchError):
    """The call did not finish within its ``timeout``."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(LungSearchError):
    """The server failed (INTERNAL, UNKNOWN or DATA_LOSS); the details carry its safe message."""

    status_code = grpc.StatusCode.INTERNAL


_BY_STATUS: dict[grpc.StatusCode, type[LungSearchError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}


def parse_error_detail(trailing_metadata: Any) -> ErrorDetail | None:
    """The ``ErrorDetail`` in ``trailing_metadata`` (sync tuples or ``grpc.aio.Metadata``), if any."""
    if not trailing_metadata:
        return None
    for key, value in trailing_metadata:
        if key == ERROR_METADATA_KEY and isinstance(value, (bytes, bytearray)):
            try:
                return ErrorDetail.from_proto(common_pb2.ErrorDetail.FromString(bytes(value)))
            except Exception:  # a malformed detail must not hide the real status  # noqa: BLE001
                return None
    return None


def error_from_rpc(exc: grpc.RpcError, method: str = "") -> LungSearchError:
    """Map a ``grpc.RpcError`` (sync or ``grpc.aio.AioRpcError``) to the matching SDK exception.

    Args:
        exc: the error raised by a gRPC call; it must also be a ``grpc.Call`` (it is, for calls).
        method: RPC name to record on the exception.

    Returns:
        An instance of the subclass mapped from the status code (``LungSearchError`` when unmapped),
        with the server's details and parsed ``ErrorDetail``.
    """
    status = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if callable(getattr(exc, "details", None)) else "") or ""
    try:
        trailing = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
    except Exception:  # noqa: BLE001 - some channel-level failures carry no call state
        trailing = None
    detail = parse_error_detail(trailing)
    message = (
        details
        or (detail.message if detail else "")
        or (status.name.lower().replace("_", " ") if status else "call failed")
    )
    cls = _BY_STATUS.get(status, LungSearchError)
    return cls(message, status=status, details=details, detail=detail, method=method)
