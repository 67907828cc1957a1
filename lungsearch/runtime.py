"""Start or attach to Ray: one helper used by the jobs, ``lungsearch serve``, the benchmarks and the tests.

On a laptop it starts a local Ray with the machine's CPUs; on a cluster it attaches to
``address`` (or ``LUNGSEARCH_RAY_ADDRESS``). The same code runs in both places.

Why the local start is careful (issue: one start in four failed right after another Ray stopped, on
2 cores): ``ray.shutdown()`` returns before the raylet, the GCS and their workers have exited, so the
next run's GCS and raylet start while the previous ones still burn both cores and the GCS misses
its 30 s port-file deadline ("Timed out waiting for file .../gcs_server_port_*") or the raylet
misses its registration ("The current node timed out during startup"). So:

* :func:`shutdown_ray` waits for the processes it started (``wait_for_processes=True``), and a
  process that started a local Ray and exits without calling it still waits (an ``atexit`` hook);
* no dashboard where nothing uses it (``include_dashboard=False`` unless asked);
* Ray already picks a free GCS port (port 0) and a session folder per start under ``/tmp/ray``,
  which the first attempt keeps (so ``ray status`` and ``address="auto"`` still find a local Ray);
* one bounded retry, on exactly those start-up time-outs, after a clean shutdown of what the failed
  attempt left, in a temp folder of its own (``<tmp>/ray-ls-*``: no port file, socket or
  ``session_latest`` link of the failed attempt is read again) with a longer GCS wait, saying so in
  one log line. Any other failure raises at once.

Ray Serve's request path runs in its **throughput-optimized mode** (``SERVE_MODES``; Ray 2.60):
handles call replicas over gRPC, user code and the router share the replica's event loop, GC is
frozen after start-up. Serve reads these variables when it is imported, in every process, so they
are set for the whole cluster: here, before a local Ray starts (its processes inherit this
process's environment; an operator's own value of a variable wins); on Kubernetes, by the chart on
every Ray container (``ray.serveMode``). Direct ingress stays off: it would remove the proxy, the
one address clients, the TLS terminator and the chart's Service use. Measured side by side with the
default by ``benchmarks.serve_latency --serve-modes`` and ``benchmarks.load --serve-modes``
(docs/serving.md, "Serve's request-path mode").
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import time
from typing import Any

from lungsearch import constants

__all__ = ["SERVE_MODES", "init_ray", "serve_mode_env", "shutdown_ray", "is_startup_timeout"]

log = logging.getLogger(__name__)

#: Messages of the start-up failures that a retry on a clean session folder fixes (Ray 2.60's texts).
_STARTUP_TIMEOUTS = (
    "The current node timed out during startup",
    "Timed out waiting for file",
    "Failed to get node info",
)
#: Seconds the retry gives the GCS to publish its port (Ray's default: 30).
_RETRY_GCS_WAIT_S = 90

#: Serve's request-path settings by mode name (``LUNGSEARCH_SERVE_MODE``; "inherit" sets nothing).
SERVE_MODES: dict[str, dict[str, str]] = {
    "default": {},
    "throughput": {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",  # keep the proxy: one address for clients and TLS
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",  # log lines written at once (a crash loses none)
        # Serve's replica stderr stays a stream: the mode's default (stderr redirected into Serve's
        # logger) lost every Ranking log line after the milvus-lite client started (seen in
        # tests/reliability/test_live_app.py's log controls)
        "RAY_SERVE_LOG_TO_STDERR": "1",
    },
}
DEFAULT_SERVE_MODE = "throughput"

_state: dict[str, Any] = {"temp_dir": None, "atexit": False}


def serve_mode_env(mode: str | None = None) -> dict[str, str]:
    """The environment of Serve mode ``mode`` (default: ``LUNGSEARCH_SERVE_MODE``, else
    ``throughput``); {} for "inherit" (the caller set the variables itself, as the benchmarks do).

    Raises:
        ValueError: an unknown mode.
    """
    mode = mode or constants.serve_mode() or DEFAULT_SERVE_MODE
    if mode == "inherit":
        return {}
    if mode not in SERVE_MODES:
        raise ValueError(f"unknown Serve mode {mode!r}; expected one of {', '.join(SERVE_MODES)} or inherit")
    return dict(SERVE_MODES[mode])


def is_startup_timeout(exc: BaseException) -> bool:
    """True for the local start-up time-outs that one retry on a clean session folder fixes."""
    text = str(exc)
    return any(m in text for m in _STARTUP_TIMEOUTS)


def _new_temp_dir() -> str:
    # Short and under the system temp dir: Ray puts unix sockets in it (108-byte path limit).
    base = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="ray-ls-", dir=base)


def _remove_temp_dir() -> None:
    """Remove the folder of a start that failed (nothing in it is worth keeping)."""
    path, _state["temp_dir"] = _state["temp_dir"], None
    if path:
        shutil.rmtree(path, ignore_errors=True)


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    namespace: str = "lungsearch",
    runtime_env: dict[str, Any] | None = None,
    log_to_driver: bool = True,
    serve_mode: str | None = None,
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
        serve_mode: Serve's request-path mode of a locally started cluster (:func:`serve_mode_env`;
            ignored when attaching: a running cluster has its own environment).
        **kwargs: Passed to ``ray.init`` (``include_dashboard=True`` to have the dashboard).

    Returns:
        The ``ray`` module's context object of the connection.

    Raises:
        Whatever ``ray.init`` raises; a local start-up time-out only after one retry failed too.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address if address is not None else constants.RAY_ADDRESS
    opts: dict[str, Any] = dict(namespace=namespace, log_to_driver=log_to_driver, runtime_env=runtime_env, **kwargs)
    if address:
        log.info("attaching to Ray at %s", address)
        opts["address"] = address
        return ray.init(**opts)
    for k, v in serve_mode_env(serve_mode).items():
        os.environ.setdefault(k, v)  # before Ray starts: its processes inherit it
    opts["num_cpus"] = num_cpus or constants.RAY_NUM_CPUS or os.cpu_count() or 1
    opts.setdefault("include_dashboard", False)
    caller_temp_dir = "_temp_dir" in opts
    log.info("starting a local Ray with %s CPUs", opts["num_cpus"])
    for attempt in (1, 2):
        if attempt == 2 and not caller_temp_dir:
            _state["temp_dir"] = opts["_temp_dir"] = _new_temp_dir()
        try:
            if attempt == 1:
                ctx = ray.init(**opts)
            else:
                with _env("RAY_gcs_server_port_wait_time_s", str(_RETRY_GCS_WAIT_S)):
                    ctx = ray.init(**opts)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is exactly a start-up time-out
            _cleanup_failed_start()
            if attempt == 2 or not is_startup_timeout(exc):
                raise
            log.warning(
                "local Ray start timed out (%s); retrying once on a clean session folder",
                str(exc).splitlines()[0][:120],
            )
            time.sleep(1.0)
            continue
        if not _state["atexit"]:
            # LIFO: runs before Ray's own atexit shutdown, which does not wait for the processes.
            atexit.register(shutdown_ray)
            _state["atexit"] = True
        return ctx
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def _env(name: str, value: str):
    """Set an environment variable for the duration (an operator's own setting wins)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _cleanup_failed_start() -> None:
    import ray

    try:
        ray.shutdown(wait_for_processes=True)
    except Exception:  # noqa: BLE001 - a half-started Ray may fail to shut down; the folder goes anyway
        log.debug("ray.shutdown after a failed start failed", exc_info=True)
    _remove_temp_dir()


def shutdown_ray() -> None:
    """Shut Serve (if running) and Ray down, and wait for the local processes to exit."""
    import ray

    if not ray.is_initialized():
        return
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve may not be running; shutdown must not fail
        log.debug("serve.shutdown failed", exc_info=True)
    ray.shutdown(wait_for_processes=True)
    _state["temp_dir"] = None
