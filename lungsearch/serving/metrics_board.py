"""Every replica's metrics in one place, for the plain ``/metrics`` endpoint of ``lungsearch serve``.

With several replicas of a deployment (two Gateways by default), asking one replica through a
Serve handle reaches a different replica on each scrape and the counters jump. Instead every
replica publishes its exposition (:meth:`ServingMetrics.render`) every :data:`PUSH_INTERVAL_S`,
and again whenever a scrape asks, to one small named, detached Ray actor,
:class:`MetricsCollector`, keyed by the replica's Serve id; a scrape merges each live replica's
latest exposition exactly once (:func:`lungsearch.serving.metrics.merge_expositions`).

A replica that stops publishing (SIGKILLed, its node lost, the app deleted) is dropped after
:data:`STALE_AFTER_S`: its gauges (model_info, index sizes) must not linger, and its counters go
with it, which Prometheus reads as a counter reset, as after a restart of a one-process server.
Exact per-replica series are on Ray's own metrics port (``ray_lungsearch_*``).

The collector needs no CPU (``num_cpus=0``) and lives in the Ray namespace :data:`NAMESPACE`
whatever namespace its callers use; the first publisher creates it (``get_if_exists``), and a
publisher that finds it gone creates it again.

Example (a driver attached to the cluster)::

    text = graph_exposition("lungsearch")   # every replica of every deployment, once
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "MetricsBoard",
    "MetricsCollector",
    "Publisher",
    "collector",
    "graph_exposition",
    "replica_texts",
    "start_publisher",
    "ACTOR_NAME",
    "NAMESPACE",
    "PUSH_INTERVAL_S",
    "STALE_AFTER_S",
]

log = logging.getLogger(__name__)

ACTOR_NAME = "lungsearch-metrics"
NAMESPACE = "lungsearch"
#: Seconds between two publications of one replica when no scrape asks sooner (the heartbeat that
#: keeps it on the board; a replica too slow to answer a scrape shows counts at most this old).
PUSH_INTERVAL_S = 2.0
#: A replica whose last publication is older than this is dropped (5 missed publications).
STALE_AFTER_S = 10.0


@dataclass(frozen=True)
class _Entry:
    app: str
    deployment: str
    pid: int
    text: str
    at: float
    generation: int = 0


class MetricsBoard:
    """The latest exposition of each replica, by replica id; entries older than ``stale_after_s``
    are dropped when read or written. Plain Python (the actor wraps it; tests use it directly)."""

    def __init__(self, stale_after_s: float = STALE_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s, self.clock = float(stale_after_s), clock
        self._entries: dict[str, _Entry] = {}
        self.generation = 0  # bumped by every scrape that wants fresh expositions

    def put(self, replica_id: str, app: str, deployment: str, text: str, pid: int = 0, generation: int = 0) -> None:
        """Store a replica's exposition, rendered after it saw scrape ``generation``."""
        self._entries[replica_id] = _Entry(app, deployment, int(pid), text, self.clock(), int(generation))
        self._expire()

    def ask_fresh(self) -> int:
        """A scrape starts: the generation every publishing replica should render after."""
        self.generation += 1
        return self.generation

    def pending(self, app: str, generation: int, *, active_s: float = 2 * PUSH_INTERVAL_S) -> list[str]:
        """Replicas of ``app`` still publishing (last put within ``active_s``) but not yet after
        ``generation``: the ones a fresh scrape waits for (a dead one is not waited for)."""
        now = self.clock()
        return [
            r
            for r, e in sorted(self._entries.items())
            if e.app == app and e.generation < generation and now - e.at <= active_s
        ]

    def forget(self, replica_id: str) -> None:
        self._entries.pop(replica_id, None)

    def _expire(self) -> None:
        cutoff = self.clock() - self.stale_after_s
        for rid in [r for r, e in self._entries.items() if e.at < cutoff]:
            del self._entries[rid]

    def replicas(self, app: str) -> dict[str, dict]:
        """``{replica_id: {"deployment", "pid", "age_s"}}`` of the live replicas of ``app``."""
        self._expire()
        now = self.clock()
        return {
            r: {"deployment": e.deployment, "pid": e.pid, "age_s": now - e.at}
            for r, e in sorted(self._entries.items())
            if e.app == app
        }

    def texts(self, app: str) -> dict[str, str]:
        """``{replica_id: exposition}`` of the live replicas of ``app``."""
        self._expire()
        return {r: e.text for r, e in sorted(self._entries.items()) if e.app == app}

    def exposition(self, app: str) -> str:
        """One exposition: every live replica of ``app`` merged once ("" when none published)."""
        from lungsearch.serving.metrics import merge_expositions

        texts = list(self.texts(app).values())
        return merge_expositions(texts) if texts else ""


class MetricsCollector:
    """The collector actor (an asyncio actor: :func:`collector` gives the handle).

    Fresh on scrape: each publisher keeps one :meth:`wait_for_scrape` call pending; a scrape
    (:meth:`exposition`) wakes them all and waits, up to ``fresh_timeout_s``, until every replica
    still publishing has put an exposition rendered after the scrape began, so what a client was
    answered before the scrape is counted in it. A replica too slow to answer in time contributes
    its previous exposition (at most :data:`PUSH_INTERVAL_S` old).
    """

    def __init__(self, stale_after_s: float = STALE_AFTER_S) -> None:
        self.board = MetricsBoard(stale_after_s)
        self._wake: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    async def put(
        self, replica_id: str, app: str, deployment: str, text: str, pid: int = 0, generation: int = 0
    ) -> None:
        self.board.put(replica_id, app, deployment, text, pid, generation)

    async def forget(self, replica_id: str) -> None:
        self.board.forget(replica_id)

    async def wait_for_scrape(self, seen: int, timeout_s: float) -> int:
        """Return the current generation once it is past ``seen`` (a scrape began), else after ``timeout_s``."""
        if self.board.generation <= seen:
            try:
                await asyncio.wait_for(self._event().wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        return self.board.generation

    async def replicas(self, app: str) -> dict[str, dict]:
        return self.board.replicas(app)

    async def texts(self, app: str) -> dict[str, str]:
        return self.board.texts(app)

    async def exposition(self, app: str, fresh_timeout_s: float = 2.0) -> str:
        generation = self.board.ask_fresh()
        woken, self._wake = self._event(), asyncio.Event()
        woken.set()  # every pending wait_for_scrape returns; later ones see the new generation
        deadline = time.monotonic() + fresh_timeout_s
        while self.board.pending(app, generation) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.board.exposition(app)


@functools.cache
def _actor_class():
    import ray

    # An asyncio actor (one event loop, no locks needed): the waits of the publishers are coroutines.
    return ray.remote(num_cpus=0)(MetricsCollector)


def collector(*, create: bool = True):
    """Handle of the cluster's collector actor (created, detached, when ``create`` and missing).

    Raises:
        ValueError: ``create=False`` and there is none.
    """
    import ray

    if not create:
        return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    return (
        _actor_class().options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()
    )


def graph_exposition(app: str, *, timeout_s: float = 10.0) -> str:
    """Every replica of every deployment of ``app``, merged once (what ``/metrics`` serves).

    Raises:
        ValueError: no replica has published yet (no collector in the cluster).
        ray.exceptions.GetTimeoutError: the collector did not answer in ``timeout_s``.
    """
    import ray

    return ray.get(collector(create=False).exposition.remote(app), timeout=timeout_s)


def replica_texts(app: str, *, timeout_s: float = 10.0) -> dict[str, dict]:
    """``{replica_id: {"deployment", "pid", "age_s", "text"}}`` of ``app``'s live replicas (tests, debugging)."""
    import ray

    c = collector(create=False)
    meta, texts = ray.get([c.replicas.remote(app), c.texts.remote(app)], timeout=timeout_s)
    return {r: {**m, "text": texts.get(r, "")} for r, m in meta.items()}


class Publisher:
    """A daemon thread publishing ``render()`` for one replica every ``interval_s``.

    Publication failures are logged at DEBUG and retried on the next tick with a fresh handle
    (the collector may have died and been re-created): metrics never fail a replica.
    """

    def __init__(
        self,
        replica_id: str,
        app: str,
        deployment: str,
        render: Callable[[], str],
        *,
        interval_s: float = PUSH_INTERVAL_S,
    ) -> None:
        self.replica_id, self.app, self.deployment = replica_id, app, deployment
        self.render, self.interval_s = render, float(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lungsearch-metrics-publisher", daemon=True)

    def start(self) -> "Publisher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def publish_once(self, handle=None, generation: int = 0):
        import ray

        handle = handle or collector()
        ray.get(
            handle.put.remote(self.replica_id, self.app, self.deployment, self.render(), os.getpid(), generation),
            timeout=max(5.0, self.interval_s),
        )
        return handle

    def _run(self) -> None:
        import ray

        handle, generation = None, 0
        while not self._stop.is_set():
            try:
                handle = self.publish_once(handle, generation)
                # Until the next tick or a scrape, whichever comes first (then publish again).
                generation = ray.get(
                    handle.wait_for_scrape.remote(generation, self.interval_s), timeout=self.interval_s + 5.0
                )
            except SystemExit:  # Ray shutting down in this process (raised into blocked ray.get calls)
                return
            except Exception:  # noqa: BLE001 - a lost collector or a slow tick: try again, fresh handle
                log.debug("metrics publication failed", exc_info=True)
                handle = None
                self._stop.wait(self.interval_s)


def start_publisher(render: Callable[[], str]) -> Publisher | None:
    """Start publishing ``render()`` when called inside a Serve replica; None elsewhere (tests,
    drivers, Ray tasks), where there is no replica id to key the exposition by."""
    try:
        from ray import serve

        ctx = serve.get_replica_context()
    except Exception:  # noqa: BLE001 - not in a replica (RayServeException), or no Serve at all
        return None
    return Publisher(ctx.replica_id.to_full_id_str(), ctx.app_name, ctx.deployment, render).start()
