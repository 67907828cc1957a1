"""Start or attach to Ray: one helper used by the jobs, ``lungsearch serve`` and the tests.

On a laptop it starts a local Ray with the machine's CPUs; on a cluster it attaches to
``address`` (or ``LUNGSEARCH_RAY_ADDRESS``). The same code runs in both places.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lungsearch import constants

__all__ = ["init_ray", "shutdown_ray"]

log = logging.getLogger(__name__)


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    namespace: str = "lungsearch",
    runtime_env: dict[str, Any] | None = None,
    log_to_driver: bool = True,
    **kwargs: Any,
):
    """Attach to a running Ray (``address``) or start a local one; idempotent.

    Args:
        address: Cluster address ("auto", "ray://head:10001", "127.0.0.1:6379"). Defaults to
            ``LUNGSEARCH_RAY_ADDRESS``; empty starts a local cluster.
        num_cpus: Logical CPUs of a locally started cluster (ignored when attaching).
            Defaults to ``LUNGSEARCH_RAY_NUM_CPUS`` or the machine's CPU count.
        namespace: Ray namespace, so named actors (Serve, the store owner) are found again.
        runtime_env: Passed to ``ray.init`` (working_dir, pip, env_vars).

    Returns:
        The ``ray`` module's context object of the connection.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address if address is not None else constants.RAY_ADDRESS
    opts: dict[str, Any] = dict(namespace=namespace, log_to_driver=log_to_driver, runtime_env=runtime_env, **kwargs)
    if address:
        log.info("attaching to Ray at %s", address)
        opts["address"] = address
    else:
        opts["num_cpus"] = num_cpus or constants.RAY_NUM_CPUS or os.cpu_count() or 1
        opts.setdefault("include_dashboard", False)
        log.info("starting a local Ray with %s CPUs", opts["num_cpus"])
    return ray.init(**opts)


def shutdown_ray() -> None:
    """Shut Serve (if running) and Ray down."""
    import ray

    if not ray.is_initialized():
        return
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve may not be running; shutdown must not fail
        log.debug("serve.shutdown failed", exc_info=True)
    ray.shutdown()
