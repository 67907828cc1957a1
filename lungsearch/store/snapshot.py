"""Snapshots of the in-memory :class:`CaseIndex`, tagged with the store's write generation.

Restarting the ranking deployment over 1M cases by reading every row back from Milvus took 203 s
here; loading a snapshot of the index is a few large sequential reads. A snapshot is used only
when the collection's write generation (:mod:`lungsearch.store.generation`) is still the one the
snapshot was taken at; otherwise the index is rebuilt from the store and a new snapshot written.

Format (one directory per collection, ``<snapshot_dir>/<collection name>/``): ``meta.json``
(format, generation, dimensions, vocabularies, row count, SHA-256 of every array file) and
``.npy`` arrays (``emb`` float16 rows, ``codes`` uint64 words, ``modality``/``view`` uint8,
``labels`` uint64 bitmasks, ``keys`` fixed-width ASCII). Loaded with ``allow_pickle=False``;
a snapshot whose checksums, shapes or generation do not match is ignored (rebuild), never trusted.
Written to a temporary directory and renamed into place, so a crash mid-write leaves the old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lungsearch.errors import LungsearchError
from lungsearch.store.index import CaseIndex

if TYPE_CHECKING:
    from lungsearch.store.milvus import MilvusStore

__all__ = ["save_snapshot", "load_snapshot", "index_from_store", "default_snapshot_dir", "SnapshotKeeper", "FORMAT"]

log = logging.getLogger(__name__)

FORMAT = "lungsearch-caseindex-1"
_ARRAYS = ("emb", "codes", "modality", "view", "labels", "keys")


def default_snapshot_dir(store: "MilvusStore") -> Path | None:
    """``<file>.snapshots`` next to a milvus-lite file; None for a server (pass a local directory)."""
    lite = getattr(store, "_lite_path", None)
    return Path(lite + ".snapshots") if lite else None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_snapshot(
    index: CaseIndex, directory: str | Path, collection: str, generation: str, parts: dict | None = None
) -> Path:
    """Write ``index`` (or its already exported ``parts``) as the snapshot of ``collection`` at ``generation``."""
    parts = parts if parts is not None else index.export_parts()
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / collection
    tmp = Path(tempfile.mkdtemp(prefix=f".{collection}.", dir=str(root)))
    try:
        keys = parts["keys"]
        width = max([len(k) for k in keys], default=1)
        arrays = {
            "emb": parts["emb"],
            "codes": parts["codes"],
            "modality": parts["modality"],
            "view": parts["view"],
            "labels": parts["labels"],
            "keys": np.array(keys, dtype=f"S{width}"),
        }
        sums = {}
        for name in _ARRAYS:
            path = tmp / f"{name}.npy"
            np.save(path, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            sums[name] = _sha256(path)
        meta = {
            "format": FORMAT,
            "collection": collection,
            "generation": generation,
            "rows": len(keys),
            "embedding_dim": parts["embedding_dim"],
            "code_bits": parts["code_bits"],
            "modalities": parts["modalities"],
            "views": parts["views"],
            "label_names": parts["label_names"],
            "sha256": sums,
            "saved_at": time.time(),
        }
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        old = root / f".{collection}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_snapshot(
    directory: str | Path, collection: str, generation: str, *, backend: str = "auto", default_candidates: int = 100
) -> CaseIndex | None:
    """The snapshot of ``collection`` if it exists, is intact and was taken at ``generation``; else None."""
    path = Path(directory) / collection
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("collection") != collection or meta.get("generation") != generation:
        return None
    try:
        for name in _ARRAYS:
            if _sha256(path / f"{name}.npy") != meta["sha256"][name]:
                log.warning("index snapshot %s: %s does not match its checksum; rebuilding", collection, name)
                return None
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
        keys = np.char.decode(arrays.pop("keys"), "ascii").tolist()
        if len(keys) != meta["rows"]:
            return None
        parts = {
            **arrays,
            "keys": keys,
            "embedding_dim": meta["embedding_dim"],
            "code_bits": meta["code_bits"],
            "modalities": meta["modalities"],
            "views": meta["views"],
            "label_names": meta["label_names"],
        }
        return CaseIndex.from_parts(parts, backend=backend, default_candidates=default_candidates)
    except (OSError, ValueError, KeyError, TypeError, LungsearchError):
        log.warning("index snapshot %s unreadable; rebuilding", collection, exc_info=True)
        return None


class SnapshotKeeper:
    """Writes a new snapshot of a live index when it has changed and is in step with the store.

    In step means: every write completed through the store object since the index was built
    has also been applied to the index (write and mutation counts moved together), the
    collection's generation is the one the last of those writes left (no other writer, no
    failed write), and no write happened while the parts were being exported.

    Args:
        every_s: seconds between checks (a background daemon thread); 0 = only :meth:`maybe_save`.
    """

    def __init__(
        self,
        index: CaseIndex,
        store: "MilvusStore",
        profile: str,
        version: str,
        directory: str | Path,
        *,
        saved_generation: str,
        every_s: float = 0.0,
    ) -> None:
        from lungsearch.store.schema import collection_name

        self.index, self.store, self.profile, self.version = index, store, profile, version
        self.directory, self.collection = Path(directory), collection_name(profile, version)
        self.saved_generation = saved_generation
        self._w0, self._m0 = store.write_count(profile, version), index.mutations
        self._stop = threading.Event()
        self._thread = None
        if every_s > 0:
            self._thread = threading.Thread(
                target=self._run, args=(float(every_s),), daemon=True, name=f"snapshot-{self.collection[:40]}"
            )
            self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.maybe_save()
            except Exception:  # noqa: BLE001 - a failed snapshot only costs a rebuild at the next start
                log.warning("index snapshot of %s failed", self.collection, exc_info=True)

    def maybe_save(self) -> bool:
        """Save a snapshot if the index changed since the last one and is in step; True if saved."""
        m1 = self.index.mutations
        parts = self.index.export_parts()
        if parts["mutations"] != m1:
            return False
        generation = self.store.clean_generation(self.profile, self.version)
        writes = self.store.write_count(self.profile, self.version)
        if generation is None or generation == self.saved_generation:
            return False
        if writes - self._w0 != m1 - self._m0 or self.index.mutations != m1:
            return False
        save_snapshot(self.index, self.directory, self.collection, generation, parts=parts)
        self.saved_generation = generation
        return True

    def close(self) -> None:
        self._stop.set()


def index_from_store(
    store: "MilvusStore",
    profile: str,
    version: str,
    *,
    snapshot_dir: str | Path | None = None,
    backend: str = "auto",
    default_candidates: int = 100,
    batch_rows: int | None = None,
    keep_every_s: float = 0.0,
) -> tuple[CaseIndex, str]:
    """The collection's in-memory index: from its snapshot when that is current, else rebuilt.

    A rebuild writes a fresh snapshot. Call before accepting writes (as
    :meth:`CaseIndex.from_store`). With ``keep_every_s`` > 0, a :class:`SnapshotKeeper` thread
    re-snapshots the index after ingests (attached as ``index.snapshot_keeper``).

    Args:
        snapshot_dir: where snapshots live (default :func:`default_snapshot_dir`; None for a
            server and no directory = always rebuild, no snapshot).

    Returns:
        (index, how): how is "snapshot" or "rebuild".
    """
    from lungsearch.store.schema import collection_name

    directory = Path(snapshot_dir) if snapshot_dir is not None else default_snapshot_dir(store)
    if directory is None:
        return CaseIndex.from_store(
            store, profile, version, backend=backend, batch_rows=batch_rows, default_candidates=default_candidates
        ), "rebuild"
    name = collection_name(profile, version)
    store.collection_info(profile, version)  # NotFoundError before any snapshot is trusted for a missing collection
    generation = store.clean_generation(profile, version)
    idx = None
    if generation is not None:
        idx = load_snapshot(directory, name, generation, backend=backend, default_candidates=default_candidates)
    how = "snapshot"
    if idx is None:
        how = "rebuild"
        idx = CaseIndex.from_store(
            store, profile, version, backend=backend, batch_rows=batch_rows, default_candidates=default_candidates
        )
        after = store.clean_generation(profile, version)
        if after is not None and after == generation:  # nobody wrote during the rebuild: a valid snapshot
            try:
                save_snapshot(idx, directory, name, after)
            except OSError:
                log.warning("could not write the index snapshot of %s", name, exc_info=True)
        generation = after
    idx.snapshot_keeper = SnapshotKeeper(
        idx, store, profile, version, directory, saved_generation=generation or "", every_s=keep_every_s
    )
    return idx, how
