"""What a Gateway replica knows of the registry's pointers: ``<profile>/LIVE`` (the version an
unpinned request uses) and ``<profile>/STAGED`` (the version a re-index is building, which every
ingest is written to as well).

Several Gateway replicas serve one registry; one of them (or an operator, or ``lungsearch.reindex``)
moves a pointer and the others follow. Each replica re-reads the files at most every
``registry.POINTER_REFRESH_S`` (a stat and a small read per profile, on the request path), so a
request that starts that long after a pointer was written sees it on every replica; the writers wait
that long before they answer (``ActivateModel``) or go on (the re-index's settle time).

LIVE is followed when the file *changes* after start-up, not read as a state: a replica started with
a pinned version (``profile@version`` in its profiles) keeps it until someone switches.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterable

from lungsearch.registry import POINTER_REFRESH_S, live_version, live_written_at, staged_version

__all__ = ["RegistryPointers"]

log = logging.getLogger(__name__)


class RegistryPointers:
    """The LIVE and STAGED pointers of ``profiles`` under ``root``, re-read at most every ``interval`` s.

    Args:
        root: the registry root (the application's ``artifacts_dir``).
        profiles: the profiles this replica serves.
        interval: seconds between re-reads (``registry.POINTER_REFRESH_S``).
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        root: str | Path | None,
        profiles: Iterable[str],
        *,
        interval: float = POINTER_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root, self.profiles, self.interval, self._clock = root, list(profiles), float(interval), clock
        self._live_mtime = {p: live_written_at(p, self.root) for p in self.profiles}
        self._checked = clock()
        #: profile -> the version a re-index is building ("" when none)
        self.staged: dict[str, str] = {}
        self._read_staged()

    def _read_staged(self) -> None:
        for p in self.profiles:
            v = staged_version(p, root=self.root) or ""
            if v != self.staged.get(p, ""):
                log.info("re-index of %s: %s", p, f"ingests also go to {v}" if v else "ended")
            self.staged[p] = v

    def poll(self) -> dict[str, str]:
        """Re-read the pointers if ``interval`` has passed since the last read; returns the LIVE
        versions that changed since then (``{profile: version}``, usually empty). ``staged`` is
        brought up to date by the same read."""
        now = self._clock()
        if now - self._checked < self.interval:
            return {}
        self._checked = now
        self._read_staged()
        changed: dict[str, str] = {}
        for p in self.profiles:
            mtime = live_written_at(p, self.root)
            if mtime != self._live_mtime.get(p):
                self._live_mtime[p] = mtime
                v = live_version(p, root=self.root)
                if v:
                    changed[p] = v
        return changed

    def wrote_live(self, profile: str) -> None:
        """This replica wrote ``profile``'s LIVE itself (and has switched): not a change to follow."""
        self._live_mtime[profile] = live_written_at(profile, self.root)

    def staged_for(self, profile: str) -> str:
        """The version a re-index of ``profile`` is building, or ""."""
        return self.staged.get(profile, "")
