"""Retry policy: exponential backoff with full jitter, bounded by the caller's overall deadline.

Only idempotent calls are retried (every LungSearch RPC is: ingest is idempotent by case key),
only on transient status codes, and never past the deadline the caller asked for: the time left
is re-computed before every attempt and every sleep.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import grpc

from lungsearch.client._errors import LungSearchError

__all__ = ["RetryPolicy", "NO_RETRY"]

_NEVER = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
# grpc's own client-side message-size failure reads RESOURCE_EXHAUSTED too; resending cannot help.
_SIZE_ERRORS = ("larger than max", "message too large")
# Standard gRPC retry pushback (ms); a negative value means "do not retry".
_PUSHBACK_KEY = "grpc-retry-pushback-ms"


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries transient failures.

    The n-th retry (n = 1, 2, …) sleeps a uniformly random time in
    ``[0, min(max_backoff, initial_backoff * multiplier ** (n - 1))]`` (gRPC's "full jitter"),
    or the server's ``grpc-retry-pushback-ms`` when it sends one, and happens only if the call
    still has time before its deadline. A server ``ErrorDetail`` with ``retriable=False`` (e.g. a
    size limit, also RESOURCE_EXHAUSTED) is never retried.

    Args:
        max_attempts: total attempts including the first (1 disables retries).
        initial_backoff: upper bound of the first sleep, seconds.
        max_backoff: cap on any sleep, seconds.
        multiplier: growth of the bound per retry.
        retry_on: status codes that may be retried. INVALID_ARGUMENT, UNAUTHENTICATED,
            PERMISSION_DENIED, NOT_FOUND and DEADLINE_EXCEEDED are refused (ValueError).
        seed: seed of the jitter's random generator (None = from the OS), for reproducible tests.
        retry_bare_internal: also retry INTERNAL that carries no lungsearch ``ErrorDetail``: the server
            maps every error of its own to a status with a detail, so a bare INTERNAL is the serving
            machinery failing under the call (a Gateway replica killed mid-call: "actor died"), which
            another replica answers. Every LungSearch RPC is idempotent, so resending is safe.

    Example:
        >>> RetryPolicy(max_attempts=6, initial_backoff=0.05).max_attempts
        6
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    retry_on: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
    seed: int | None = None
    retry_bare_internal: bool = True
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")
        codes = frozenset(self.retry_on)
        bad = codes & _NEVER
        if bad:
            raise ValueError(f"refusing to retry on {sorted(c.name for c in bad)}: retrying cannot fix these")
        object.__setattr__(self, "retry_on", codes)
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def should_retry(self, error: LungSearchError) -> bool:
        """Whether ``error`` is worth another attempt (ignoring time; see :meth:`next_delay`)."""
        if (
            error.status == grpc.StatusCode.INTERNAL
            and error.detail is None
            and self.retry_bare_internal
            and self.max_attempts > 1
        ):
            return True
        if error.status not in self.retry_on:
            return False
        if error.detail is not None and not error.detail.retriable:
            return False
        if error.status == grpc.StatusCode.RESOURCE_EXHAUSTED and error.detail is None:
            if any(s in error.details.lower() for s in _SIZE_ERRORS):
                return False
        return True

    def backoff(self, retry: int) -> float:
        """Sleep before retry number ``retry`` (1-based): full jitter under the exponential bound."""
        bound = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return self._rng.uniform(0.0, bound)


#: A policy that never retries.
NO_RETRY = RetryPolicy(max_attempts=1)


class Attempts:
    """Book-keeping of one logical call: the deadline, the attempt count and the next sleep.

    Used identically by the sync and the async client so both retry the same way.
    """

    def __init__(self, policy: RetryPolicy, timeout: float, clock=time.monotonic) -> None:
        if timeout is None or not (timeout > 0):
            raise ValueError("timeout must be a positive number of seconds (gRPC has no default deadline)")
        self.policy = policy
        self.clock = clock
        self.deadline = clock() + float(timeout)
        self.attempt = 0

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def next_delay(self, error: LungSearchError, pushback_ms: int | None = None) -> float | None:
        """Seconds to sleep before the next attempt, or None to give up and raise ``error``."""
        if self.attempt >= self.policy.max_attempts or not self.policy.should_retry(error):
            return None
        if pushback_ms is not None and pushback_ms < 0:
            return None
        delay = pushback_ms / 1000.0 if pushback_ms is not None else self.policy.backoff(self.attempt)
        # A retry needs time to sleep and then still do useful work: keep a small margin so the
        # last attempt is not started with a deadline it cannot meet.
        if delay + 0.01 >= self.remaining():
            return None
        return delay


def pushback_ms(trailing_metadata) -> int | None:
    """The server's ``grpc-retry-pushback-ms`` (None when absent or malformed)."""
    if not trailing_metadata:
        return None
    for key, value in trailing_metadata:
        if key == _PUSHBACK_KEY:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None
