"""The wrapper every deployment's gRPC method goes through: metrics, auth and the status mapping.

A method decorated with :func:`rpc` is called two ways:

* from the Serve gRPC proxy with ``grpc_context`` (Serve passes it because the signature names it):
  nothing escapes; a failure sets code, details and ``lungsearch-error-bin`` on the context and an
  empty response message is returned (Serve would otherwise send the traceback as INTERNAL);
* through a deployment handle from another deployment (no ``grpc_context``): a
  :class:`~lungsearch.errors.LungsearchError` propagates to the caller (it pickles cleanly) and is
  mapped by the gateway; any other exception is replaced by a generic ``LungsearchError`` so its
  message (which might quote input) never crosses the actor boundary or reaches a log.

Example::

    class Fusion:
        @rpc("Fuse", fusion_pb2.FuseResponse)
        async def Fuse(self, request, grpc_context=None):
            ...
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from typing import Any, Callable

from lungsearch.errors import LungsearchError
from lungsearch.serving.status import apply_status, status_for, where

__all__ = ["rpc", "call_metadata"]

log = logging.getLogger(__name__)


def call_metadata(grpc_context: Any) -> list[tuple[str, Any]]:
    """Invocation metadata of a call ([] for handle calls)."""
    if grpc_context is None:
        return []
    try:
        return list(grpc_context.invocation_metadata() or [])
    except Exception:  # noqa: BLE001 - a context without metadata is treated as anonymous
        return []


def _peer(grpc_context: Any) -> str | None:
    try:
        return grpc_context.peer()
    except Exception:  # noqa: BLE001 - no peer information: treated as unknown (not loopback)
        return ""


def rpc(method: str, response_cls: type, *, authorize: bool = True) -> Callable:
    """Decorate an ``async def X(self, request, grpc_context=None, **kw)`` deployment method.

    The instance must have ``self.metrics`` (:class:`~lungsearch.serving.metrics.ServingMetrics`)
    and may have ``self.auth`` (:class:`~lungsearch.serving.auth.Authenticator`): when present,
    calls arriving through the proxy are authorized for ``method`` first (handle calls from
    inside the graph are trusted).

    Args:
        method: the RPC name (metric label and role lookup).
        response_cls: the response message class (an empty one is returned on failure).
        authorize: False for methods that must stay open (health).
    """

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def wrapper(self, request, grpc_context=None, **kwargs):
            timer = self.metrics.time(method)
            # External calls of a deployment that keeps an audit trail (the gateway) get one line each.
            audit = getattr(self, "audit", None) if grpc_context is not None else None
            who = "anonymous"
            with timer:
                try:
                    auth = getattr(self, "auth", None)
                    if authorize and auth is not None and grpc_context is not None:
                        try:
                            principal = auth.authorize(method, call_metadata(grpc_context), _peer(grpc_context))
                            who = principal.name if principal is not None else who
                        except LungsearchError as exc:
                            self.metrics.auth_failure(exc.reason)
                            raise
                    response = await fn(self, request, grpc_context=grpc_context, **kwargs)
                    if audit is not None:
                        await audit.record(method, who, "ok", request, response)
                    return response
                except BaseException as exc:  # noqa: BLE001 - the whole point: nothing escapes unmapped
                    status = status_for(exc)
                    timer.code, timer.reason = status.code_name, status.reason
                    if isinstance(exc, asyncio.CancelledError):
                        raise  # the caller is gone; never swallow a cancellation
                    if audit is not None:
                        await audit.record(method, who, str(status.reason or status.code_name).lower(), request, None)
                    if grpc_context is not None:
                        apply_status(grpc_context, status)
                        return response_cls()
                    if isinstance(exc, LungsearchError):
                        raise
                    ref = uuid.uuid4().hex[:12]
                    log.error("%s failed: ref=%s type=%s at %s", method, ref, type(exc).__name__, where(exc))
                    # `from None`: the original message (possibly quoting input) does not travel.
                    raise LungsearchError(f"internal error in {method} (ref {ref})") from None

        return wrapper

    return deco
