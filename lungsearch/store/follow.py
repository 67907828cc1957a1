"""Keep a Ranking replica's in-memory index in step with a shared Milvus server store.

With a Milvus server several Ranking replicas serve one collection, each from its own in-memory
:class:`~lungsearch.store.CaseIndex`; a write goes through one of them (store first, then that
replica's index). The others follow the store: every ``interval_s`` each one

1. reads the rows written since its watermark (``ingested_at >= watermark - overlap_s``; the
   overlap covers clock skew between the gateways that stamp ``ingested_at`` and writes that became
   visible late) and upserts them into its index (idempotent: a row it already has is replaced by
   the same row);
2. compares the store's row count with its index: when they differ (a delete elsewhere, or a row
   older than the window), it reconciles by key: keys gone from the store are dropped, keys missing
   from the index are fetched and added.

So every replica answers the same within about one ``interval_s`` of a write (the stated delay;
tested in tests/store/test_follow.py against the real server). milvus-lite has one writer and one
Ranking replica by construction and needs none of this.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lungsearch.store import CaseIndex, MilvusStore
    from lungsearch.store.types import CaseBatch

__all__ = ["IndexFollower"]

log = logging.getLogger(__name__)


class IndexFollower:
    """Follows one collection of ``store`` into ``index``.

    Args:
        store, profile, version: the collection.
        index: the replica's in-memory index of it (already built from the store).
        overlap_s: how far before the watermark each poll reads again.
        interval_s: seconds between polls of :meth:`start`'s thread.
        since: the first watermark (default: now, for an index just built from the store).
    """

    def __init__(
        self,
        store: "MilvusStore",
        profile: str,
        version: str,
        index: "CaseIndex",
        *,
        overlap_s: float = 30.0,
        interval_s: float = 2.0,
        since: float | None = None,
    ) -> None:
        self.store, self.profile, self.version, self.index = store, profile, version, index
        self.overlap_s, self.interval_s = float(overlap_s), float(interval_s)
        self.watermark = time.time() if since is None else float(since)  # the newest ingested_at applied
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _apply(self, batch: "CaseBatch") -> int:
        if not len(batch):
            return 0
        self.index.add_arrays(
            batch.keys,
            batch.embeddings,
            batch.codes if self.index.code_bits else None,
            modalities=batch.modalities,
            views=batch.views,
            labels=batch.labels,
        )
        if batch.ingested_at is not None and len(batch.ingested_at):
            self.watermark = max(self.watermark, float(np.max(batch.ingested_at)))
        return len(batch)

    def poll(self) -> tuple[int, int]:
        """One round; returns (rows upserted into the index, keys removed from it)."""
        upserted = self._apply(self.store.rows_since(self.profile, self.version, self.watermark - self.overlap_s))
        removed = 0
        if self.store.count(self.profile, self.version) != len(self.index):
            stored = self.store.all_keys(self.profile, self.version)
            have = set(self.index.keys())
            removed = self.index.delete(sorted(have - stored))
            missing = sorted(stored - have)
            for i in range(0, len(missing), 1000):
                cases = self.store.get_many(self.profile, self.version, missing[i : i + 1000])
                if cases:
                    self.index.upsert(cases.values())
                    upserted += len(cases)
        return upserted, removed

    def start(self) -> "IndexFollower":
        """Poll in a daemon thread until :meth:`stop` (errors are logged by type and retried)."""

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.poll()
                except Exception as exc:  # noqa: BLE001 - a store outage: try again next round
                    log.warning("following %s@%s: %s", self.profile, self.version, type(exc).__name__)

        self._thread = threading.Thread(target=loop, name=f"follow-{self.profile}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
