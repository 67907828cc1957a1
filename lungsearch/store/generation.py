"""Write generations: a token per collection that changes on every write to it.

An in-memory index snapshot (:mod:`lungsearch.store.snapshot`) is tagged with the generation of the
collection it was taken from, and is loaded on start only when the collection still has that
generation; otherwise the index is rebuilt. The token is a random UUID, replaced *before* each
upsert, delete or drop (write-ahead): a write that fails half-way still leaves a token no snapshot
carries, so a partial write can never be mistaken for the state a snapshot holds.

Where the token lives:

- milvus-lite file: a small JSON file next to it, ``<file>.generations.json`` (one process owns
  the file; replaced atomically with fsync, a few ms per write);
- server: a metadata collection ``lsmeta_generations`` in the store itself (shared by every
  replica and job that writes through :class:`~lungsearch.store.MilvusStore`), read with Strong
  consistency where the server has it.

A writer that bypasses MilvusStore does not change the token: such a write is invisible to the
snapshot check (documented in docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

__all__ = ["FileGenerations", "CollectionGenerations", "META_COLLECTION", "new_generation"]

META_COLLECTION = "lsmeta_generations"


def new_generation() -> str:
    return uuid.uuid4().hex


class FileGenerations:
    """Generations of a milvus-lite file's collections, in a JSON file beside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable: every snapshot check fails, indexes are rebuilt (safe)
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write(self, data: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=str(self.path.parent))
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> str:
        """The collection's generation (one is created for a collection that has none yet)."""
        with self._lock:
            data = self._read()
            if name not in data:
                data[name] = new_generation()
                self._write(data)
            return data[name]

    def bump(self, name: str) -> str:
        with self._lock:
            data = self._read()
            data[name] = g = new_generation()
            self._write(data)
            return g

    def forget(self, name: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(name, None) is not None:
                self._write(data)


class CollectionGenerations:
    """Generations kept in a metadata collection of the store (servers: shared by replicas).

    Args:
        client: the store's pymilvus ``MilvusClient``.
        guard: the store's error-mapping context manager factory (``guard(op, name)``).
        timeout: seconds per call.
        read_kwargs: extra arguments of reads (``consistency_level="Strong"`` where available).
        flush: flush after each write (milvus-lite behind a server syncs its log at flush).
    """

    def __init__(self, client, guard, *, timeout: float, read_kwargs: dict | None = None, flush: bool = False) -> None:
        self._client, self._guard, self._timeout = client, guard, timeout
        self._read_kwargs = dict(read_kwargs or {})
        self._flush = flush
        self._ready = False
        self._lock = threading.Lock()

    def _ensure(self) -> None:
        if self._ready:
            return
        from pymilvus import DataType, MilvusClient

        with self._guard("create_collection", META_COLLECTION):
            if not self._client.has_collection(META_COLLECTION, timeout=self._timeout):
                s = MilvusClient.create_schema(
                    auto_id=False,
                    enable_dynamic_field=False,
                    description="lungsearch write generations (one row per collection)",
                )
                s.add_field("name", DataType.VARCHAR, max_length=300, is_primary=True)
                s.add_field("generation", DataType.VARCHAR, max_length=64)
                s.add_field("updated_at", DataType.DOUBLE)
                s.add_field("vec", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires one vector field
                ip = MilvusClient.prepare_index_params()
                ip.add_index("vec", index_type="FLAT", metric_type="L2")
                try:
                    self._client.create_collection(META_COLLECTION, schema=s, index_params=ip, timeout=self._timeout)
                except Exception:
                    # Another replica created it first: fine if it exists now.
                    if not self._client.has_collection(META_COLLECTION, timeout=self._timeout):
                        raise
            self._client.load_collection(META_COLLECTION, timeout=self._timeout)
        self._ready = True

    def _set(self, name: str, generation: str) -> None:
        with self._guard("upsert", META_COLLECTION):
            self._client.upsert(
                META_COLLECTION,
                [{"name": name, "generation": generation, "updated_at": time.time(), "vec": [0.0, 0.0]}],
                timeout=self._timeout,
            )
            if self._flush:
                self._client.flush(META_COLLECTION, timeout=self._timeout)

    def get(self, name: str) -> str:
        with self._lock:
            self._ensure()
            with self._guard("get", META_COLLECTION):
                rows = self._client.get(
                    META_COLLECTION,
                    ids=[name],
                    output_fields=["generation"],
                    timeout=self._timeout,
                    **self._read_kwargs,
                )
            if rows:
                return str(rows[0]["generation"])
            g = new_generation()
            self._set(name, g)
            return g

    def bump(self, name: str) -> str:
        with self._lock:
            self._ensure()
            g = new_generation()
            self._set(name, g)
            return g

    def forget(self, name: str) -> None:
        with self._lock:
            self._ensure()
            with self._guard("delete", META_COLLECTION):
                self._client.delete(META_COLLECTION, ids=[name], timeout=self._timeout)
