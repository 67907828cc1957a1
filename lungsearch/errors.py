"""The one lungsearch error hierarchy.

Library code raises these; only the gateway maps them to gRPC status codes (``grpc_status``
names a ``grpc.StatusCode`` member so this module does not import grpc). Messages must be
PHI-free: they reach clients and logs. Every class pickles cleanly so errors can cross Ray
actor boundaries.
"""

from __future__ import annotations

__all__ = [
    "LungsearchError",
    "ConfigError",
    "InvalidImageError",
    "InvalidReportError",
    "InvalidRequestError",
    "LimitExceededError",
    "NotFoundError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "StoreUnavailableError",
    "UnauthenticatedError",
    "PermissionDeniedError",
    "PHIRejectedError",
    "OverloadedError",
]


class LungsearchError(Exception):
    """Base class. ``reason`` mirrors ``lungsearch.v1.ErrorReason``; ``code`` is a finer,
    component-specific reason (e.g. ``"truncated_pixel_data"``)."""

    grpc_status: str = "INTERNAL"
    reason: str = "INTERNAL"
    retriable: bool = False

    def __init__(self, message: str, *, code: str = "", field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field

    def __reduce__(self):  # keep keyword-only fields across pickling (Ray actors)
        return (_rebuild, (type(self), self.message, self.code, self.field))

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]" if self.code else self.message


def _rebuild(cls, message, code, field):
    return cls(message, code=code, field=field)


class ConfigError(LungsearchError):
    """A profile YAML or setting is malformed; the message names the file, key and expectation."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "INVALID_REQUEST"


class InvalidImageError(LungsearchError):
    """Image bytes are undecodable, unsupported or hostile; ``code`` says which."""

    grpc_status = "INVALID_ARGUMENT"
    reason = "INVALID_IMAGE"


class InvalidReportError(LungsearchError):
    grpc_status = "INVALID_ARGUMENT"
    reason = "INVALID_REPORT"


class InvalidRequestError(LungsearchError):
    grpc_status = "INVALID_ARGUMENT"
    reason = "INVALID_REQUEST"


class LimitExceededError(LungsearchError):
    """A size limit (message, image dimensions, series length, report length, top_k)."""

    grpc_status = "RESOURCE_EXHAUSTED"
    reason = "LIMIT_EXCEEDED"


class NotFoundError(LungsearchError):
    grpc_status = "NOT_FOUND"
    reason = "NOT_FOUND"


class ModelNotFoundError(NotFoundError):
    reason = "MODEL_NOT_FOUND"


class ModelNotReadyError(LungsearchError):
    grpc_status = "UNAVAILABLE"
    reason = "MODEL_NOT_READY"
    retriable = True


class StoreUnavailableError(LungsearchError):
    grpc_status = "UNAVAILABLE"
    reason = "STORE_UNAVAILABLE"
    retriable = True


class OverloadedError(LungsearchError):
    grpc_status = "RESOURCE_EXHAUSTED"
    reason = "OVERLOADED"
    retriable = True


class UnauthenticatedError(LungsearchError):
    grpc_status = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(LungsearchError):
    grpc_status = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class PHIRejectedError(LungsearchError):
    """The input carries PHI we refuse to store (e.g. BurnedInAnnotation = YES)."""

    grpc_status = "INVALID_ARGUMENT"
    reason = "PHI_REJECTED"
