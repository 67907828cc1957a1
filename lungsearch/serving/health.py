"""The gRPC health service's rule: which parts of the graph each service name depends on, and the
status that follows from the parts' readiness (``Gateway.readiness``: part -> why it is not ready,
"" when it is). Kept out of the deployment so it is tested without Ray."""

from __future__ import annotations

from typing import Mapping

from grpc_health.v1 import health_pb2

__all__ = ["HEALTH_SERVICES", "health_status"]

#: Service names the health service answers for ("" = the server as a whole), and the parts each
#: needs (None = every part: the gateway's own models, every stage, the store).
_PARTS: dict[str, tuple[str, ...] | None] = {
    "": None,
    "lungsearch.v1.LungSearch": None,
    "lungsearch.v1.Encoding": ("encoding",),
    "lungsearch.v1.Fusion": ("fusion",),
    "lungsearch.v1.Hashing": ("hashing",),
    "lungsearch.v1.Ranking": ("ranking",),
}
HEALTH_SERVICES = tuple(_PARTS)


def health_status(service: str, ready: Mapping[str, str]) -> int:
    """SERVING when every part ``service`` needs is ready, else NOT_SERVING; SERVICE_UNKNOWN for a
    name outside :data:`HEALTH_SERVICES`. A part missing from ``ready`` (it did not answer) counts
    as not ready only when the service needs it by name."""
    if service not in _PARTS:
        return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    parts = _PARTS[service]
    needed = list(ready) if parts is None else parts
    missing = [] if parts is None else [p for p in parts if p not in ready]
    ok = not missing and all(not ready.get(p) for p in needed)
    return health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
