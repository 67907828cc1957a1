"""The receiver's on-disk spool: every acknowledged instance is on disk before its C-STORE succeeds.

Layout under ``root`` (mode 0700: the files are the hospital's raw DICOM, PHI included, until the
platform de-identifies them on Ingest)::

    incoming/<series id>/<instance id>.dcm   received, waiting for the series to settle
    incoming/<series id>/series.json         caller AE, site, profile, modality kind (no PHI)
    work/<series id>.<n>/                    claimed by one Ingest call (atomic rename)
    done/<series id>/                        ingested; kept ``linger_s`` so a late instance re-ingests it whole

Series and instance ids are keyed hashes (HMAC-SHA256 with a random per-spool salt) of the
SeriesInstanceUID / SOPInstanceUID, so no UID appears in a path or a log line. Every file is
written to a temporary name, fsynced, renamed, and its directory fsynced: after a crash an
instance is either wholly there or absent, and :meth:`Spool.recover` puts claimed series back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Spool", "SpooledSeries"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass
class SpooledSeries:
    """One series waiting in ``incoming/`` (or claimed in ``work/``)."""

    series_id: str
    path: Path
    meta: dict
    files: list[Path] = field(default_factory=list)
    last_write: float = 0.0  # wall-clock mtime of the newest instance

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.exists())


class Spool:
    """Crash-safe per-series storage of received instances (thread-safe)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        for sub in ("incoming", "work", "done"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        salt_file = self.root / ".salt"
        if not salt_file.exists():
            _write_atomic(salt_file, secrets.token_bytes(32))
        self._salt = salt_file.read_bytes()
        self._lock = threading.RLock()

    # ---- ids ----------------------------------------------------------------------------------
    def key(self, uid: str) -> str:
        """A 24-hex keyed hash of a UID (stable for this spool, meaningless outside it)."""
        return hmac.new(self._salt, uid.encode(), hashlib.sha256).hexdigest()[:24]

    # ---- writing ------------------------------------------------------------------------------
    def put(self, series_uid: str, sop_uid: str, data: bytes, meta: dict) -> Path:
        """Store one instance durably; returns its path. A re-sent instance replaces itself."""
        sid, iid = self.key(series_uid), self.key(sop_uid)
        with self._lock:
            folder = self.root / "incoming" / sid
            if not folder.exists():
                folder.mkdir(mode=0o700)
                _fsync_dir(folder.parent)
                done = self.root / "done" / sid
                if done.exists():  # a late instance: the earlier ones come back, so the series re-ingests whole
                    for f in done.iterdir():
                        os.replace(f, folder / f.name)
                    shutil.rmtree(done, ignore_errors=True)
                    _fsync_dir(folder)
            if not (folder / "series.json").exists():
                _write_atomic(folder / "series.json", json.dumps(meta, sort_keys=True).encode())
            path = folder / f"{iid}.dcm"
            _write_atomic(path, data)
            return path

    def discard(self, paths: list[Path]) -> int:
        """Remove these instances if they are still waiting (not claimed); returns how many went."""
        gone = 0
        with self._lock:
            for p in paths:
                try:
                    p.unlink()
                    gone += 1
                except FileNotFoundError:
                    continue
                folder = p.parent
                if not any(f.suffix == ".dcm" for f in folder.iterdir()):
                    shutil.rmtree(folder, ignore_errors=True)
        return gone

    # ---- reading and claiming ----------------------------------------------------------------
    def _load(self, folder: Path) -> SpooledSeries | None:
        try:
            meta = json.loads((folder / "series.json").read_text())
        except (OSError, ValueError):
            return None
        files = sorted(f for f in folder.iterdir() if f.suffix == ".dcm" and not f.name.startswith("."))
        last = max((f.stat().st_mtime for f in files), default=0.0)
        return SpooledSeries(folder.name.split(".")[0], folder, meta, files, last)

    def waiting(self) -> list[SpooledSeries]:
        """The series in ``incoming/`` with at least one instance."""
        with self._lock:
            out = []
            for folder in sorted((self.root / "incoming").iterdir()):
                s = self._load(folder) if folder.is_dir() else None
                if s is not None and s.files:
                    out.append(s)
            return out

    def claim(self, series_id: str) -> SpooledSeries | None:
        """Move a waiting series to ``work/`` (atomically) for one Ingest; None if it is gone."""
        with self._lock:
            src = self.root / "incoming" / series_id
            if not src.exists():
                return None
            dst = self.root / "work" / f"{series_id}.{time.time_ns()}"
            os.replace(src, dst)
            _fsync_dir(dst.parent)
            return self._load(dst)

    def finish(self, series: SpooledSeries, *, keep: bool) -> None:
        """After Ingest: keep it in ``done/`` (linger) or delete it."""
        with self._lock:
            done = self.root / "done" / series.series_id
            if keep and not (self.root / "incoming" / series.series_id).exists():
                shutil.rmtree(done, ignore_errors=True)
                os.replace(series.path, done)
                os.utime(done)
            else:
                shutil.rmtree(series.path, ignore_errors=True)

    def unclaim(self, series: SpooledSeries) -> None:
        """Put a claimed series back (Ingest failed retriably); merges with instances that arrived since."""
        with self._lock:
            dst = self.root / "incoming" / series.series_id
            if not dst.exists():
                os.replace(series.path, dst)
            else:
                for f in series.path.iterdir():
                    if not (dst / f.name).exists():
                        os.replace(f, dst / f.name)
                shutil.rmtree(series.path, ignore_errors=True)
            _fsync_dir(dst.parent)

    def recover(self) -> int:
        """At start: series claimed by a process that died go back to ``incoming/``; returns how many."""
        n = 0
        for folder in sorted((self.root / "work").iterdir()):
            s = self._load(folder)
            if s is None:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self.unclaim(s)
            n += 1
        for tmp in (self.root / "incoming").glob("*/.*.tmp"):  # a write cut short was never acknowledged
            tmp.unlink(missing_ok=True)
        return n

    def expire_done(self, linger_s: float) -> None:
        cutoff = time.time() - linger_s
        for folder in (self.root / "done").iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                continue

    def bytes_used(self) -> int:
        total = 0
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                try:
                    total += os.stat(os.path.join(dirpath, n)).st_size
                except FileNotFoundError:
                    continue
        return total
