"""The one place where errors become gRPC statuses.

Every failure a deployment sees ends here: a :class:`lungsearch.errors.LungsearchError` keeps its
own status (``err.grpc_status``), reason and PHI-free message; Serve's own failures (queue full,
replica gone, timeout) get the status they mean; anything else becomes INTERNAL with a generic
message and an opaque reference, never the exception text or a traceback (Ray Serve would send
the whole traceback to the client, and an exception message can carry a DICOM header value).

The machine-readable half travels as the binary trailing-metadata entry ``lungsearch-error-bin``
(a serialized ``lungsearch.v1.ErrorDetail``). Serve 2.60's gRPC context supports
``set_trailing_metadata`` and the proxy forwards it (verified: the SDK's ``error_from_rpc`` reads it),
so the reason is not squeezed into the details string.

Example (inside a deployment method that takes ``grpc_context``)::

    try:
        return await self._search(request)
    except BaseException as exc:  # the gateway catches everything
        apply_status(grpc_context, status_for(exc))
        return gateway_pb2.SearchResponse()
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import grpc

from lungsearch._proto.v1 import common_pb2
from lungsearch.errors import LungsearchError

__all__ = ["ERROR_METADATA_KEY", "Status", "status_for", "apply_status", "abort_status", "where", "MAX_DETAILS_CHARS"]

log = logging.getLogger(__name__)

#: Binary trailing-metadata key carrying a serialized ``lungsearch.v1.ErrorDetail``.
ERROR_METADATA_KEY = "lungsearch-error-bin"
#: Status details are HTTP/2 trailers (8 KiB default limit, Serve truncates at 4 KiB): stay well under.
MAX_DETAILS_CHARS = 1024


@dataclass(frozen=True)
class Status:
    """A gRPC status ready to send.

    Attributes:
        code: the ``grpc.StatusCode``.
        details: PHI-free human-readable status details.
        detail: the ``lungsearch.v1.ErrorDetail`` sent as trailing metadata.
        reason: ``ErrorReason`` name without its prefix (a bounded metric label).
    """

    code: grpc.StatusCode
    details: str
    detail: common_pb2.ErrorDetail
    reason: str

    @property
    def code_name(self) -> str:
        return self.code.name


def _reason_value(reason: str) -> int:
    try:
        return common_pb2.ErrorReason.Value(f"ERROR_REASON_{reason}")
    except ValueError:
        return common_pb2.ERROR_REASON_INTERNAL


def _make(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    retriable: bool = False,
    field: str = "",
    component_code: str = "",
) -> Status:
    message = message[:MAX_DETAILS_CHARS]
    detail = common_pb2.ErrorDetail(
        reason=_reason_value(reason), message=message, retriable=retriable, field=field[:128], code=component_code[:128]
    )
    return Status(code=code, details=message, detail=detail, reason=reason)


def _serve_exception_status(exc: BaseException) -> Status | None:
    """Ray/Serve failures by type name, so this module does not import ray (the SDK has none)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if "BackPressureError" in names:
        return _make(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "OVERLOADED",
            "server overloaded: queue full, retry with backoff",
            retriable=True,
        )
    if names & {
        "DeploymentUnavailableError",
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "WorkerCrashedError",
        "NodeDiedError",
        "ObjectLostError",
    }:
        return _make(
            grpc.StatusCode.UNAVAILABLE, "MODEL_NOT_READY", "a serving component is restarting, retry", retriable=True
        )
    return None


def where(exc: BaseException) -> str:
    """``file.py:123 in func`` of the innermost frame of ``exc``'s traceback (no message, no values)."""
    import os
    import traceback

    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if not frames:
        return "?"
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"


def _unwrap(exc: BaseException) -> BaseException:
    """The original exception inside Ray's wrapper (a deployment raised behind a handle)."""
    for _ in range(4):  # RayTaskError may wrap a RayTaskError
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    return exc


def status_for(exc: BaseException) -> Status:
    """Map any exception to the status the client sees.

    Args:
        exc: what a deployment method caught.

    Returns:
        The :class:`Status`. For unexpected exceptions the details are generic and carry a
        reference id that is also logged (with the exception type only, no message), so an
        operator can correlate without the client seeing internals.
    """
    exc = _unwrap(exc)
    if isinstance(exc, LungsearchError):
        code = getattr(grpc.StatusCode, exc.grpc_status, grpc.StatusCode.INTERNAL)
        return _make(
            code,
            exc.reason,
            exc.message or code.name.lower(),
            retriable=exc.retriable,
            field=exc.field,
            component_code=exc.code,
        )
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return _make(
            grpc.StatusCode.DEADLINE_EXCEEDED, "INTERNAL", "deadline exceeded inside the server", retriable=True
        )
    if isinstance(exc, asyncio.CancelledError):
        return _make(grpc.StatusCode.CANCELLED, "INTERNAL", "call cancelled")
    mapped = _serve_exception_status(exc)
    if mapped is not None:
        return mapped
    ref = uuid.uuid4().hex[:12]
    # Type and code location only: the message of an arbitrary exception may quote input (a DICOM
    # header value); file:line is enough for a developer to find the bug.
    log.error("internal error ref=%s type=%s at %s", ref, type(exc).__name__, where(exc))
    return _make(grpc.StatusCode.INTERNAL, "INTERNAL", f"internal error (ref {ref})")


def apply_status(grpc_context, status: Status) -> None:
    """Set code, details and the ``lungsearch-error-bin`` trailer on a Serve gRPC context.

    ``grpc_context`` is Serve's ``RayServegRPCContext`` (or a real ``grpc.ServicerContext``); None
    (a handle call from inside the graph) is ignored: the caller then gets the exception instead.
    """
    if grpc_context is None:
        return
    grpc_context.set_code(status.code)
    grpc_context.set_details(status.details)
    grpc_context.set_trailing_metadata([(ERROR_METADATA_KEY, status.detail.SerializeToString())])


async def abort_status(grpc_context: grpc.aio.ServicerContext, status: Status) -> None:
    """The same for a plain ``grpc.aio`` server (tests, a non-Serve host): abort the call."""
    grpc_context.set_trailing_metadata([(ERROR_METADATA_KEY, status.detail.SerializeToString())])
    await grpc_context.abort(status.code, status.details)
