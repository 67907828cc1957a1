"""Where the deployments' own log records go.

Ray Serve configures only the ``ray.serve`` logger inside a replica (its file under
``logs/serve/``, the format and level of ``logging_config``). Records of any other logger reach
the root logger, which has no handler there: everything below WARNING was silently dropped, so
lines such as "index ct-ild@v3 rebuilt from the store: 1200 cases" were never written anywhere.
:func:`route_to_serve_log` sends the ``lungsearch`` logger tree to Serve's handlers instead, at
Serve's level. (Every lungsearch log line is PHI-free by construction; tests/reliability greps
them all.)

Example (first thing in a deployment's ``__init__``)::

    route_to_serve_log()
"""

from __future__ import annotations

import logging

__all__ = ["route_to_serve_log", "SERVE_LOGGER", "LIBRARY_LOGGER"]

SERVE_LOGGER = "ray.serve"
LIBRARY_LOGGER = "lungsearch"


def _in_replica() -> bool:
    try:
        from ray.serve.context import _get_internal_replica_context  # set before the user's __init__
    except ImportError:  # pragma: no cover - Serve not installed or the private API moved
        return False
    return _get_internal_replica_context() is not None


def route_to_serve_log(level: int | None = None) -> logging.Logger:
    """Attach Serve's replica log handlers to the ``lungsearch`` logger (idempotent).

    Args:
        level: the ``lungsearch`` logger's level; default Serve's own (``logging_config.log_level``),
            INFO when Serve set none.

    Returns:
        The ``lungsearch`` logger. Outside a replica (a test calling a deployment class directly,
        a driver that started Serve) nothing changes: the process's own logging stays in charge.
    """
    serve_logger = logging.getLogger(SERVE_LOGGER)
    lib = logging.getLogger(LIBRARY_LOGGER)
    if not serve_logger.handlers or not _in_replica():
        return lib
    for handler in serve_logger.handlers:
        if handler not in lib.handlers:
            lib.addHandler(handler)
    lib.setLevel(level if level is not None else (serve_logger.level or logging.INFO))
    lib.propagate = False  # written once, in the replica's Serve log, not again on stderr
    return lib
