"""The Milvus adapter: lungsearch's system of record for indexed cases.

One collection per profile and model version (:func:`collection_name`), with the schema defined
here in code. The same class talks to an embedded milvus-lite file (the default,
``LUNGSEARCH_MILVUS_URI``) or to a Milvus server (``http://host:19530`` + token); every difference
between engines lives in :class:`StoreCapabilities`: fixed for a milvus-lite file, probed once per
connection for a server (:mod:`lungsearch.store.capabilities`; schemas in :mod:`lungsearch.store.schema`).

Facts this adapter is built around (shared/FACTS.md, re-checked with milvus-lite 3.2.2):

- milvus-lite has no BINARY_VECTOR: codes are stored as a hex VARCHAR there (the ranking
  deployment searches them in memory with :class:`lungsearch.store.CaseIndex`); a server gets a
  BINARY_VECTOR code with a BIN_IVF_FLAT/HAMMING index, next to the embedding where it allows two
  vector fields (2.4+), else in a companion collection (2.3).
- milvus-lite scalar indexes are INVERTED only, and not on ARRAY fields; Milvus 2.3 has STL_SORT
  and Trie instead of INVERTED.
- milvus-lite: unflushed rows are searched by a slow scan and the write-ahead log syncs at flush:
  every :meth:`MilvusStore.upsert` / :meth:`MilvusStore.delete` flushes before it returns, so a
  return means durable. A server's WAL makes an acknowledged write durable; reads that must see
  it use Strong consistency.
- Every write replaces the collection's write generation first (:mod:`lungsearch.store.generation`),
  which tags in-memory index snapshots.
- One process per milvus-lite file (an flock on ``<file>/LOCK``); a second process gets
  :class:`StoreUnavailableError` with ``code="store_locked"``.
- After reopening, collections are released: they are loaded again on first use.
- milvus-lite answers every query by gathering all rows of the collection in Python first (keys,
  vectors, row references), so a query costs O(collection) whatever its filter, and
  ``query_iterator`` (one query per page) is quadratic: 16 s for 100k rows here.
  :meth:`MilvusStore.iter_batches` pages by ranges of a hashed ``bucket`` column instead, with
  pages as large as the message limit allows on milvus-lite (see :class:`StoreCapabilities`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lungsearch import constants
from lungsearch.errors import InvalidRequestError, LungsearchError, NotFoundError, StoreUnavailableError
from lungsearch.store.capabilities import StoreCapabilities, is_lite_uri, probe_server
from lungsearch.store.filters import SearchFilter, to_milvus_expr
from lungsearch.store.generation import META_COLLECTION, CollectionGenerations, FileGenerations
from lungsearch.store.schema import (
    BUCKETS,
    COMPANION_SUFFIX,
    HAMMING_NLIST,
    SCHEMA_VERSION,
    CollectionInfo,
    bucket_of,
    collection_index_params,
    collection_name,
    collection_schema,
    companion_index_params,
    companion_name,
    companion_schema,
)
from lungsearch.store.schema import (
    EXPECTED_FIELDS as _EXPECTED_FIELDS,
)
from lungsearch.store.schema import (
    NAME_PREFIX as _NAME_PREFIX,
)
from lungsearch.store.types import MAX_EXCERPT_BYTES, CaseBatch, Hit, StoredCase, UpsertResult, validate_case_key

__all__ = [
    "MilvusStore",
    "META_COLLECTION",
    "StoreCapabilities",
    "CollectionInfo",
    "collection_name",
    "collection_schema",
    "collection_index_params",
    "is_lite_uri",
    "SCHEMA_VERSION",
    "BUCKETS",
]

log = logging.getLogger(__name__)


class _LiteUnimplementedFilter(logging.Filter):
    """Drops grpc's ERROR traceback for ``AllocTimestamp``, which milvus-lite's in-process server
    does not implement and pymilvus calls while it waits for an index it just created. pymilvus
    copes (the index gets built); the traceback only alarms whoever reads the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "AllocTimestamp":
                return False
            tb = tb.tb_next
        return True


_LITE_LOG_FILTER = _LiteUnimplementedFilter()

#: Milvus error code "collection not loaded" (merr.ErrCollectionNotLoaded; milvus-lite uses it too).
_NOT_LOADED = 101


_bucket = bucket_of  # the name this module used before the split


# --- milvus-lite process-level bookkeeping -------------------------------------------------------
# pymilvus starts one in-process milvus-lite server per file and reuses it for every client of that
# path; closing a client does not stop it. We count our own users per path and stop the server when
# the last one closes, so the file lock is released and a reopen really reads the file again.
_LITE_LOCK = threading.Lock()
_LITE_USERS: dict[str, int] = {}


def _lite_lock_held_elsewhere(path: str) -> bool:
    """True when another process holds milvus-lite's flock on ``path`` (probe, released at once)."""
    import fcntl

    lock_path = os.path.join(path, "LOCK")
    if not os.path.exists(lock_path):
        return False
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _keepalive_options(uri: str) -> dict[str, int]:
    """gRPC keepalive the server accepts. pymilvus pings every 10 s even with no call in flight; a
    Milvus server permits that, but milvus-lite's embedded gRPC server keeps gRPC's defaults (no pings
    without calls, at most one per 5 minutes) and answers GOAWAY "too_many_pings", dropping the channel
    of an idle Ranking replica. For a lite file: ping only during calls, and at most every 5 minutes."""
    if "://" in uri:
        return {}
    return {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": 0}


class MilvusStore:
    """Vector store over pymilvus ``MilvusClient``: the system of record for indexed cases.

    Args:
        uri: a milvus-lite file path ending in ``.db`` (default ``LUNGSEARCH_MILVUS_URI``) or a server
            URI such as ``http://milvus:19530``.
        token: server token ("user:password" or an API key); ignored by milvus-lite.
        timeout: seconds allowed for each Milvus call.
        load_timeout: seconds allowed for calls that load or build an index (collection creation,
            ``load_collection`` after a reopen).

    Raises:
        StoreUnavailableError: the store cannot be opened (``code="store_locked"`` when another
            process holds the milvus-lite file).

    Example:
        >>> store = MilvusStore("data/lungsearch.db")  # doctest: +SKIP
        >>> store.upsert("cxr-hash", "v1", [case])  # doctest: +SKIP
        UpsertResult(inserted=1, updated=0)
        >>> store.search("cxr-hash", "v1", case.embedding, top_k=5)  # doctest: +SKIP
    """

    def __init__(
        self, uri: str | None = None, *, token: str = "", timeout: float = 10.0, load_timeout: float = 600.0
    ) -> None:
        from pymilvus import MilvusClient

        self.uri = str(uri if uri is not None else constants.MILVUS_URI)
        self.timeout = float(timeout)
        self.load_timeout = float(max(load_timeout, timeout))
        self._base_caps = StoreCapabilities.for_uri(self.uri)
        self._caps: StoreCapabilities | None = self._base_caps if self._base_caps.single_process else None
        self._caps_lock = threading.Lock()
        self._lite_path = os.path.abspath(self.uri) if self._base_caps.single_process else None
        self._info: dict[str, CollectionInfo] = {}
        self._loaded: set[str] = set()
        self._closed = False
        self._generations = None
        # Per collection: writes completed through this object, and the generation the last one
        # left (see clean_generation: what an index snapshot may be tagged with).
        self._writes: dict[str, int] = {}
        self._clean_gen: dict[str, str] = {}
        self._dirty: set[str] = set()  # a write began here and has not completed (yet)
        self._tainted: set[str] = set()  # a write here failed: the store may hold rows no index has
        if self._lite_path is not None:
            logging.getLogger("grpc._server").addFilter(_LITE_LOG_FILTER)  # idempotent: one filter object
            Path(self._lite_path).parent.mkdir(parents=True, exist_ok=True)
            if _lite_lock_held_elsewhere(self._lite_path):
                raise StoreUnavailableError(
                    "the milvus-lite file is open in another process "
                    "(one process per file; use a Milvus server to share)",
                    code="store_locked",
                )
        try:
            self._client = MilvusClient(
                uri=self.uri, token=token or "", timeout=self.timeout, grpc_options=_keepalive_options(self.uri)
            )
        except Exception as exc:  # pymilvus raises MilvusException subclasses and grpc errors here
            locked = self._lite_path is not None and _lite_lock_held_elsewhere(self._lite_path)
            raise StoreUnavailableError(
                "the milvus-lite file is open in another process"
                if locked
                else f"cannot connect to the vector store ({self._base_caps.backend}: {type(exc).__name__})",
                code="store_locked" if locked else "connect_failed",
            ) from None
        if self._lite_path is not None:
            with _LITE_LOCK:
                _LITE_USERS[self._lite_path] = _LITE_USERS.get(self._lite_path, 0) + 1

    # --- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client; for milvus-lite, also stop the in-process server when no user is left."""
        if self._closed:
            return
        self._closed = True
        try:
            self._client.close()
        except Exception:  # closing a broken connection must not mask the caller's error
            log.debug("milvus client close failed", exc_info=True)
        if self._lite_path is not None:
            with _LITE_LOCK:
                left = _LITE_USERS.get(self._lite_path, 1) - 1
                if left <= 0:
                    _LITE_USERS.pop(self._lite_path, None)
                else:
                    _LITE_USERS[self._lite_path] = left
            if left <= 0:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self._lite_path)

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backend(self) -> str:
        return self._base_caps.backend

    @property
    def capabilities(self) -> StoreCapabilities:
        """What this store can do: fixed for milvus-lite, probed once per connection for a server
        (:func:`lungsearch.store.capabilities.probe_server`)."""
        caps = self._caps
        if caps is None:
            with self._caps_lock:
                caps = self._caps
                if caps is None:
                    if self._closed:
                        raise StoreUnavailableError("the vector store is closed", code="store_closed")
                    caps = self._caps = probe_server(self._client, self._base_caps, timeout=self.timeout)
        return caps

    def _read_kw(self) -> dict[str, Any]:
        """Read arguments that make a read see every write acknowledged before it (Strong where the
        server has it; milvus-lite reads flushed rows at once and gets nothing extra)."""
        return {"consistency_level": "Strong"} if self.capabilities.strong_reads else {}

    # --- error mapping ---------------------------------------------------------------------------

    @contextmanager
    def _guard(self, op: str, name: str = "") -> Iterator[None]:
        """Map pymilvus/grpc failures to lungsearch errors with PHI-free messages.

        The raw Milvus message is not passed on: it can echo row values (report text).
        """
        if self._closed:
            raise StoreUnavailableError("the vector store is closed", code="store_closed")
        try:
            yield
        except LungsearchError:
            raise
        except Exception as exc:
            from pymilvus.exceptions import MilvusException

            code = getattr(exc, "code", None)
            text = str(getattr(exc, "message", "") or exc).lower()
            if isinstance(exc, MilvusException) and ("not found" in text or "not exist" in text or code == 100):
                raise NotFoundError(f"collection not found during {op}", code="collection_not_found") from None
            if isinstance(exc, MilvusException) and (code == _NOT_LOADED or "released" in text or "not loaded" in text):
                # The server came back without our collection loaded (a restart releases it):
                # forget that we loaded it, so the next call loads it again instead of failing
                # forever. This call still fails retriably (the SDK retries UNAVAILABLE).
                self._loaded.discard(name)
                raise StoreUnavailableError(
                    f"vector store call {op} failed: collection not loaded, reloading", code="collection_not_loaded"
                ) from None
            kind = type(exc).__name__
            raise StoreUnavailableError(
                f"vector store call {op} failed ({self._base_caps.backend}: "
                f"{kind}{'' if code is None else f' code {code}'})",
                code="store_call_failed",
            ) from None

    # --- collections -----------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        """Names of lungsearch collections in the store."""
        with self._guard("list_collections"):
            names = self._client.list_collections(timeout=self.timeout)
        return sorted(n for n in names if n.startswith(_NAME_PREFIX) and not n.endswith(COMPANION_SUFFIX))

    def has_collection(self, profile: str, version: str) -> bool:
        name = collection_name(profile, version)
        with self._guard("has_collection", name):
            return bool(self._client.has_collection(name, timeout=self.timeout))

    def collection_info(self, profile: str, version: str) -> CollectionInfo:
        """Dimensions of an existing collection (read from its schema once, then cached).

        Raises:
            NotFoundError: no such collection.
        """
        name = collection_name(profile, version)
        info = self._info.get(name)
        if info is not None:
            return info
        if not self.has_collection(profile, version):
            raise NotFoundError("no collection for this profile and model version", code="collection_not_found")
        with self._guard("describe_collection", name):
            desc = self._client.describe_collection(name, timeout=self.timeout)
            idx = self._client.describe_index(name, "embedding", timeout=self.timeout) or {}
        # The schema itself is the source of truth: milvus-lite does not keep collection descriptions.
        fields = {f["name"]: f for f in desc.get("fields", [])}
        if not _EXPECTED_FIELDS <= set(fields):
            raise StoreUnavailableError(
                "collection was not created by lungsearch (unexpected schema)", code="foreign_collection"
            )
        from pymilvus import DataType

        code_field = fields["code"]
        params = code_field.get("params") or {}
        if code_field["type"] == DataType.BINARY_VECTOR:
            code_bits, storage = int(params["dim"]), "binary_vector"
        else:
            width = int(params.get("max_length", 1))
            code_bits, storage = (0 if width <= 1 else width * 4), "hex"
            if code_bits and not self._base_caps.single_process:
                with self._guard("has_collection", name):
                    if self._client.has_collection(companion_name(name), timeout=self.timeout):
                        storage = "companion"
        info = CollectionInfo(
            name=name,
            profile=profile,
            version=version,
            embedding_dim=int(fields["embedding"]["params"]["dim"]),
            code_bits=code_bits,
            code_storage=storage,
            metric=str(idx.get("metric_type") or "COSINE"),
        )
        self._info[name] = info
        return info

    def ensure_collection(
        self, profile: str, version: str, *, embedding_dim: int, code_bits: int = 0, index=None
    ) -> CollectionInfo:
        """Create the collection for ``profile@version`` if missing, check its dimensions if present.

        Args:
            embedding_dim: float embedding dimension.
            code_bits: binary code length (a multiple of 8; 0 = no codes).
            index: optional :class:`lungsearch.config.IndexConfig` (metric, Milvus index type, HNSW params).

        Raises:
            InvalidRequestError: the existing collection has other dimensions.
        """
        if embedding_dim <= 0 or code_bits < 0 or code_bits % 8:
            raise InvalidRequestError("embedding_dim must be > 0 and code_bits a multiple of 8", code="bad_dimensions")
        name = collection_name(profile, version)
        if self.has_collection(profile, version):
            info = self.collection_info(profile, version)
            if (info.embedding_dim, info.code_bits) != (embedding_dim, code_bits):
                raise InvalidRequestError(
                    f"collection has dim {info.embedding_dim}/{info.code_bits} "
                    f"bits, asked for {embedding_dim}/{code_bits}",
                    code="dimension_mismatch",
                )
            return info
        metric = getattr(index, "metric", "COSINE") or "COSINE"
        caps = self.capabilities
        storage = caps.code_storage if code_bits > 0 else "hex"
        info = CollectionInfo(
            name=name,
            profile=profile,
            version=version,
            embedding_dim=embedding_dim,
            code_bits=code_bits,
            code_storage=storage,
            metric=metric,
        )
        kwargs = {}
        if index is not None:
            kwargs = {
                "index_type": index.milvus_index,
                "hnsw_m": index.hnsw_m,
                "hnsw_ef_construction": index.hnsw_ef_construction,
            }
        if info.companion:
            # The companion first: a case collection without it would read back as "hex".
            with self._guard("create_collection", info.companion):
                if not self._client.has_collection(info.companion, timeout=self.timeout):
                    self._client.create_collection(
                        info.companion,
                        schema=companion_schema(info),
                        index_params=companion_index_params(info, caps),
                        timeout=self.load_timeout,
                    )
            self._ensure_loaded(info.companion)
        with self._guard("create_collection", name):
            self._client.create_collection(
                name,
                schema=collection_schema(info),
                index_params=collection_index_params(info, caps, **kwargs),
                timeout=self.load_timeout,
            )
        self._info[name] = info
        self._ensure_loaded(name)
        log.info("created collection %s (dim=%d, code_bits=%d, %s)", name, embedding_dim, code_bits, storage)
        return info

    def drop_collection(self, profile: str, version: str) -> bool:
        """Drop a collection; returns False when it did not exist."""
        name = collection_name(profile, version)
        if not self.has_collection(profile, version):
            return False
        self._generation_store().bump(name)  # write-ahead: a half-done drop matches no snapshot
        with self._guard("drop_collection", name):
            self._client.drop_collection(name, timeout=self.timeout)
            if not self._base_caps.single_process and self._client.has_collection(
                companion_name(name), timeout=self.timeout
            ):
                self._client.drop_collection(companion_name(name), timeout=self.timeout)
        self._generation_store().forget(name)
        self._dirty.discard(name)
        self._info.pop(name, None)
        self._loaded.discard(name)
        self._loaded.discard(companion_name(name))
        self._clean_gen.pop(name, None)
        return True

    # --- write generations (index snapshots are tagged with them) ----------------------------------

    def _generation_store(self):
        if self._generations is None:
            if self._lite_path is not None:
                self._generations = FileGenerations(self._lite_path + ".generations.json")
            else:
                self._generations = CollectionGenerations(
                    self._client,
                    self._guard,
                    timeout=self.timeout,
                    read_kwargs=self._read_kw(),
                    flush=self.capabilities.flush_on_write,
                )
        return self._generations

    def write_generation(self, profile: str, version: str) -> str:
        """The collection's current write generation: a token replaced before every upsert, delete
        or drop through any MilvusStore on this store (see :mod:`lungsearch.store.generation`)."""
        return self._generation_store().get(collection_name(profile, version))

    def clean_generation(self, profile: str, version: str) -> str | None:
        """The generation the last write *through this object* completed with, if no write
        (here or elsewhere) has changed it since; None otherwise (a failed write, another writer)."""
        name = collection_name(profile, version)
        if name in self._dirty or name in self._tainted:
            return None
        current = self.write_generation(profile, version)
        mine = self._clean_gen.setdefault(name, current)  # nothing written here yet: what the store has now
        return current if current == mine else None

    def write_count(self, profile: str, version: str) -> int:
        """Writes (upsert/delete calls) completed through this object on the collection."""
        return self._writes.get(collection_name(profile, version), 0)

    def _begin_write(self, name: str) -> str:
        if name in self._dirty:  # the previous write never completed: it failed part-way
            self._tainted.add(name)
        self._dirty.add(name)
        return self._generation_store().bump(name)

    def _end_write(self, name: str, generation: str) -> None:
        self._writes[name] = self._writes.get(name, 0) + 1
        self._clean_gen[name] = generation
        self._dirty.discard(name)

    def _ensure_loaded(self, name: str, timeout: float | None = None) -> None:
        # Collections come back released after a reopen; loading is idempotent, so once per process.
        if name in self._loaded:
            return
        with self._guard("load_collection", name):
            self._client.load_collection(name, timeout=self.load_timeout if timeout is None else timeout)
        self._loaded.add(name)

    def ensure_loaded(self, profile: str, version: str) -> None:
        """Ask the server whether the collection (and its companion) is loaded, and load it if not.

        A Milvus server comes back from a restart with every collection released; this process's
        "loaded once" memory would not notice until a write failed. The health service calls this, so
        it says NOT_SERVING (the load's error) until the collections answer again. The load waits at
        most the call timeout: the server goes on loading, and the next health check asks again. Raises
        :class:`NotFoundError` for a missing collection, :class:`StoreUnavailableError` otherwise.
        """
        info = self.collection_info(profile, version)
        for name in filter(None, (info.name, info.companion)):
            with self._guard("get_load_state", name):
                state = self._client.get_load_state(name, timeout=self.timeout)
            if getattr(state.get("state"), "name", str(state.get("state"))) != "Loaded":
                self._loaded.discard(name)
            self._ensure_loaded(name, timeout=self.timeout)

    def _open(self, profile: str, version: str) -> CollectionInfo:
        info = self.collection_info(profile, version)
        self._ensure_loaded(info.name)
        if info.companion:
            self._ensure_loaded(info.companion)
        return info

    # --- writes ----------------------------------------------------------------------------------

    def _to_row(self, case: StoredCase, info: CollectionInfo) -> dict[str, Any]:
        if info.code_storage == "binary_vector":
            code: Any = case.code
        else:
            code = case.code.hex()
        return {
            "case_key": case.case_key,
            "bucket": bucket_of(case.case_key),
            "modality": case.modality,
            "view": case.view,
            "labels": list(case.labels),
            "report_excerpt": case.report_excerpt,
            "embedding": case.embedding,
            "code": code,
            "ingested_at": case.ingested_at,
            "num_images": case.num_images,
            "model_version": case.model_version,
        }

    def upsert(
        self, profile: str, version: str, records: Iterable[StoredCase], *, batch_size: int = 2000
    ) -> UpsertResult:
        """Insert or replace cases by ``case_key`` (idempotent), then flush.

        The collection is created from the first record's dimensions if it does not exist. When this
        returns, the rows are flushed (durable in milvus-lite's log and searchable without the slow
        unflushed path); acknowledge an ingest only after it returns.

        Args:
            records: the cases; a key repeated within the call keeps its last record.
            batch_size: rows per Milvus upsert call.

        Returns:
            How many keys were new and how many replaced existing rows.

        Raises:
            InvalidRequestError: a record is malformed or has other dimensions than the collection.
            StoreUnavailableError: Milvus failed (retriable: upserts are idempotent).
        """
        records = list(records)
        if not records:
            return UpsertResult(0, 0)
        first = records[0]
        emb0 = np.asarray(first.embedding).reshape(-1)
        info = self.ensure_collection(profile, version, embedding_dim=int(emb0.size), code_bits=len(first.code) * 8)
        self._open(profile, version)
        by_key: dict[str, StoredCase] = {}
        for case in records:
            case.validate(embedding_dim=info.embedding_dim, code_bits=info.code_bits)
            by_key[case.case_key] = case
        cases = list(by_key.values())
        inserted = updated = 0
        generation = self._begin_write(info.name)
        for start in range(0, len(cases), batch_size):
            batch = cases[start : start + batch_size]
            existing = self._existing_keys(info.name, [c.case_key for c in batch])
            rows = [self._to_row(c, info) for c in batch]
            with self._guard("upsert", info.name):
                self._client.upsert(info.name, rows, timeout=self.timeout)
            if info.companion:
                # After the case rows: the case collection is the record, the companion follows it
                # (a retry of a failed upsert, which is idempotent, repairs a missing companion row).
                with self._guard("upsert", info.companion):
                    self._client.upsert(
                        info.companion, [_companion_row(r, c) for r, c in zip(rows, batch)], timeout=self.timeout
                    )
            updated += len(existing)
            inserted += len(batch) - len(existing)
        if self.capabilities.flush_on_write:
            self.flush(profile, version)
        self._end_write(info.name, generation)
        return UpsertResult(inserted=inserted, updated=updated)

    def _existing_keys(self, name: str, keys: list[str]) -> set[str]:
        with self._guard("get", name):
            rows = self._client.get(name, ids=keys, output_fields=["case_key"], timeout=self.timeout, **self._read_kw())
        return {r["case_key"] for r in rows}

    def delete(self, profile: str, version: str, case_keys: str | Sequence[str]) -> int:
        """Delete cases by key, then flush. Returns how many of the keys existed."""
        keys = [case_keys] if isinstance(case_keys, str) else list(case_keys)
        for k in keys:
            validate_case_key(k)
        if not keys:
            return 0
        info = self._open(profile, version)
        existing = set()
        generation = self._begin_write(info.name)
        for start in range(0, len(keys), 2000):
            part = keys[start : start + 2000]
            existing |= self._existing_keys(info.name, part)
            with self._guard("delete", info.name):
                self._client.delete(info.name, ids=part, timeout=self.timeout)
            if info.companion:
                with self._guard("delete", info.companion):
                    self._client.delete(info.companion, ids=part, timeout=self.timeout)
        if self.capabilities.flush_on_write:
            self.flush(profile, version)
        self._end_write(info.name, generation)
        return len(existing)

    def flush(self, profile: str, version: str) -> None:
        """Seal written rows: durable (milvus-lite's log syncs at flush) and indexed for fast search.

        Writes call it themselves where the store needs it (``capabilities.flush_on_write``); on a
        server it only seals segments so their index gets built (about 2 s on Milvus 2.3).
        """
        name = collection_name(profile, version)
        info = self._info.get(name)
        with self._guard("flush", name):
            self._client.flush(name, timeout=self.load_timeout)
            if info is not None and info.companion:
                self._client.flush(info.companion, timeout=self.load_timeout)

    # --- reads -----------------------------------------------------------------------------------

    def count(self, profile: str, version: str) -> int:
        """Number of cases in the collection."""
        info = self._open(profile, version)
        with self._guard("count", info.name):
            res = self._client.query(
                info.name, filter="", output_fields=["count(*)"], timeout=self.timeout, **self._read_kw()
            )
        return int(res[0]["count(*)"])

    def get_many(self, profile: str, version: str, case_keys: Sequence[str]) -> dict[str, StoredCase]:
        """The stored cases among ``case_keys`` (missing keys are absent from the result)."""
        keys = [validate_case_key(k) for k in case_keys]
        if not keys:
            return {}
        info = self._open(profile, version)
        out: dict[str, StoredCase] = {}
        for start in range(0, len(keys), 2000):
            with self._guard("get", info.name):
                res = self._client.get(
                    info.name,
                    ids=keys[start : start + 2000],
                    output_fields=self._fields(info),
                    timeout=self.timeout,
                    **self._read_kw(),
                )
            for case in self._to_batch(res, info).cases():
                out[case.case_key] = case
        return out

    def get(self, profile: str, version: str, case_key: str) -> StoredCase:
        """One stored case.

        Raises:
            NotFoundError: unknown key (or collection).
        """
        found = self.get_many(profile, version, [case_key])
        if case_key not in found:
            raise NotFoundError("case not found", code="case_not_found", field="case_key")
        return found[case_key]

    def _fields(self, info: CollectionInfo, *, with_text: bool = True) -> list[str]:
        fields = ["case_key", "modality", "view", "labels", "embedding", "code"]
        if with_text:
            fields += ["report_excerpt", "ingested_at", "num_images", "model_version"]
        return fields

    def query_keys(
        self, profile: str, version: str, filter: SearchFilter | None = None, *, limit: int = 16384
    ) -> list[str]:
        """Keys of the cases matching ``filter`` exactly (a scalar query, no vector search), sorted."""
        info = self._open(profile, version)
        expr = to_milvus_expr(filter)
        with self._guard("query", info.name):
            res = self._client.query(
                info.name,
                filter=expr or "bucket >= 0",
                output_fields=["case_key"],
                limit=int(limit),
                timeout=self.timeout,
                **self._read_kw(),
            )
        return sorted(r["case_key"] for r in res)

    def page_rows(self, info: CollectionInfo, *, with_text: bool = False) -> int:
        """Rows per paging query for this store and collection (see :class:`StoreCapabilities`)."""
        row = 320 + info.embedding_dim * 4 + info.code_bits // 4 + (MAX_EXCERPT_BYTES if with_text else 0)
        return max(1000, min(self.capabilities.max_page_rows, self.capabilities.page_bytes // row))

    def iter_batches(
        self, profile: str, version: str, *, batch_rows: int | None = None, with_text: bool = False
    ) -> Iterator[CaseBatch]:
        """Every case of the collection, in columnar batches of about ``batch_rows`` rows.

        Pages by ranges of the hashed ``bucket`` column, sized from the row count. A primary-key
        cursor (``query_iterator``) re-reads the collection for every page; milvus-lite does that
        for any query, so there pages are as large as its message limit allows.

        Args:
            batch_rows: rows per page (default :meth:`page_rows`).
            with_text: also return report excerpts, timestamps, image counts and model versions.
        """
        info = self._open(profile, version)
        total = self.count(profile, version)
        if total == 0:
            return
        batch_rows = batch_rows or self.page_rows(info, with_text=with_text)
        pages = max(1, -(-total // max(1, batch_rows)))
        width = -(-BUCKETS // pages)
        fields = self._fields(info, with_text=with_text)
        read_kw = self._read_kw()
        for lo in range(0, BUCKETS, width):
            hi = min(BUCKETS, lo + width)
            with self._guard("query", info.name):
                res = self._client.query(
                    info.name,
                    filter=f"bucket >= {lo} and bucket < {hi}",
                    output_fields=fields,
                    timeout=self.load_timeout,
                    **read_kw,
                )
            if len(res):
                yield self._to_batch(res, info, with_text=with_text)

    def rows_since(self, profile: str, version: str, since: float, *, limit: int = 16384) -> CaseBatch:
        """The cases written (``ingested_at``) at or after ``since`` (seconds since the epoch), with
        their timestamps: what a Ranking replica that follows the store reads (``store.follow``)."""
        info = self._open(profile, version)
        fields = self._fields(info, with_text=True)
        with self._guard("query", info.name):
            res = self._client.query(
                info.name,
                filter=f"ingested_at >= {float(since)!r}",
                output_fields=fields,
                limit=int(limit),
                timeout=self.timeout,
                **self._read_kw(),
            )
        return self._to_batch(res, info, with_text=True)

    def all_keys(self, profile: str, version: str) -> set[str]:
        """Every case key of the collection (paged by ``bucket`` ranges, keys only)."""
        info = self._open(profile, version)
        total = self.count(profile, version)
        if total == 0:
            return set()
        pages = max(1, -(-total // max(1, self.capabilities.max_page_rows)))
        width = -(-BUCKETS // pages)
        out: set[str] = set()
        for lo in range(0, BUCKETS, width):
            with self._guard("query", info.name):
                res = self._client.query(
                    info.name,
                    filter=f"bucket >= {lo} and bucket < {min(BUCKETS, lo + width)}",
                    output_fields=["case_key"],
                    timeout=self.load_timeout,
                    **self._read_kw(),
                )
            out.update(r["case_key"] for r in res)
        return out

    def iterate(self, profile: str, version: str, *, batch_rows: int | None = None) -> Iterator[StoredCase]:
        """Every case of the collection as :class:`StoredCase` (see :meth:`iter_batches` for bulk use)."""
        for batch in self.iter_batches(profile, version, batch_rows=batch_rows, with_text=True):
            yield from batch.cases()

    def _to_batch(self, res, info: CollectionInfo, *, with_text: bool = True) -> CaseBatch:
        rows, vectors = _split_result(res)
        n = len(rows)
        emb = vectors.get("embedding")
        if emb is None:
            emb = (
                np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows])
                if n
                else np.zeros((0, info.embedding_dim), np.float32)
            )
        emb = emb.reshape(n, info.embedding_dim)
        nbytes = info.code_bits // 8
        if info.code_storage == "binary_vector":
            raw = vectors.get("code")
            if raw is None:
                raw = b"".join(bytes(r["code"][0] if isinstance(r["code"], list) else r["code"]) for r in rows)
            codes = np.frombuffer(bytes(raw), dtype=np.uint8).reshape(n, nbytes)
        else:
            codes = np.frombuffer(bytes.fromhex("".join(r["code"] for r in rows)), dtype=np.uint8).reshape(n, nbytes)
        batch = CaseBatch(
            keys=[r["case_key"] for r in rows],
            embeddings=emb,
            codes=codes,
            modalities=[r["modality"] for r in rows],
            views=[r["view"] for r in rows],
            labels=[list(r["labels"] or ()) for r in rows],
        )
        if with_text:
            batch.report_excerpts = [r["report_excerpt"] for r in rows]
            batch.ingested_at = np.array([r["ingested_at"] for r in rows], dtype=np.float64)
            batch.num_images = np.array([r["num_images"] for r in rows], dtype=np.int64)
            batch.model_versions = [r["model_version"] for r in rows]
        return batch

    # --- search ----------------------------------------------------------------------------------

    def _search_kw(self, consistency: str | None) -> dict[str, Any]:
        if consistency is None or not self.capabilities.strong_reads:
            return {}
        if consistency not in ("Strong", "Bounded", "Session", "Eventually"):
            raise InvalidRequestError(
                "consistency must be Strong, Bounded, Session or Eventually", code="bad_consistency"
            )
        return {"consistency_level": consistency}

    def search(
        self,
        profile: str,
        version: str,
        embedding,
        *,
        top_k: int = 10,
        filter: SearchFilter | None = None,
        ef: int = 64,
        consistency: str | None = None,
    ) -> list[Hit]:
        """Float ANN search in Milvus (HNSW): ``(key, cosine, -1)`` best first.

        The ranking deployment normally answers from :class:`CaseIndex`; this is the Milvus-side path
        (servers, tools and the benchmark).

        Args:
            consistency: "Strong" when the caller must see its own write (servers; default: the
                collection's level, Bounded). Ignored by milvus-lite (flushed rows are visible at once).
        """
        info = self._open(profile, version)
        q = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if q.size != info.embedding_dim or not np.all(np.isfinite(q)):
            raise InvalidRequestError("query embedding has the wrong dimension or is not finite", code="bad_embedding")
        params = {"metric_type": info.metric, "params": {"ef": max(int(ef), int(top_k))}}
        with self._guard("search", info.name):
            res = self._client.search(
                info.name,
                data=[q],
                anns_field="embedding",
                filter=to_milvus_expr(filter),
                limit=int(top_k),
                output_fields=["case_key"],
                search_params=params,
                timeout=self.timeout,
                **self._search_kw(consistency),
            )
        return [Hit(h["case_key"], float(h["distance"]), -1) for h in res[0]]

    def search_codes(
        self,
        profile: str,
        version: str,
        code: bytes,
        *,
        top_k: int = 10,
        filter: SearchFilter | None = None,
        nprobe: int = HAMMING_NLIST,
        consistency: str | None = None,
    ) -> list[Hit]:
        """Hamming search on the server (BIN_IVF_FLAT/HAMMING): ``(key, 1 - d/bits, d)`` best first.

        For deployments that do not keep the in-memory :class:`CaseIndex`. Searches the ``code``
        field of the case collection, or of its companion collection on servers with one vector
        field per collection (Milvus 2.3). Ties in distance come back in the server's order.

        Args:
            nprobe: BIN_IVF_FLAT lists searched; the default (all of them) makes the search exact.
            consistency: as in :meth:`search`.

        Raises:
            InvalidRequestError: the store is milvus-lite (no BINARY_VECTOR; use CaseIndex) or the
                code has the wrong length.
        """
        info = self._open(profile, version)
        if info.code_storage not in ("binary_vector", "companion"):
            raise InvalidRequestError(
                "this store keeps codes as text; search codes with CaseIndex", code="binary_vector_unsupported"
            )
        if len(code) * 8 != info.code_bits:
            raise InvalidRequestError("query code has the wrong length", code="code_bits_mismatch")
        params = {"metric_type": "HAMMING", "params": {"nprobe": int(nprobe)}}
        target = info.companion or info.name
        with self._guard("search", target):
            res = self._client.search(
                target,
                data=[bytes(code)],
                anns_field="code",
                filter=to_milvus_expr(filter),
                limit=int(top_k),
                output_fields=["case_key"],
                search_params=params,
                timeout=self.timeout,
                **self._search_kw(consistency),
            )
        return [Hit(h["case_key"], 1.0 - float(h["distance"]) / info.code_bits, int(h["distance"])) for h in res[0]]

    def wait_for_index(self, profile: str, version: str, *, timeout: float | None = None, poll_s: float = 0.5) -> None:
        """Block until the float index covers every flushed row (searches then avoid brute force).

        A server reports index progress (``describe_index``: pending/indexed rows), which is polled.
        milvus-lite reports every index as finished at once while it compacts segments and builds
        their indexes on a background thread after each flush (searches meanwhile scan unindexed
        segments, tens of times slower); there this drains that background work.

        Raises:
            StoreUnavailableError: not finished within ``timeout`` (default ``load_timeout``).
        """
        info = self._open(profile, version)
        budget = self.load_timeout if timeout is None else timeout
        if self._lite_path is not None:
            self._drain_lite_background(info.name, budget)
            return
        deadline = time.monotonic() + budget
        targets = [(info.name, "embedding")] + ([(info.companion, "code")] if info.companion else [])
        while True:
            finished = True
            for name, field_name in targets:  # the float index, and the companion's HAMMING index
                with self._guard("describe_index", name):
                    d = self._client.describe_index(name, field_name, timeout=self.timeout) or {}
                total, done, pending = (
                    int(d.get("total_rows", 0)),
                    int(d.get("indexed_rows", 0)),
                    int(d.get("pending_index_rows", 0)),
                )
                finished = finished and pending == 0 and done >= total
            if finished:
                return
            if time.monotonic() > deadline:
                raise StoreUnavailableError("index build did not finish in time", code="index_timeout")
            time.sleep(poll_s)

    def _drain_lite_background(self, name: str, timeout: float) -> None:
        """Wait for milvus-lite's post-flush compaction + index build of collection ``name``.

        milvus-lite has no public call for this; its in-process collection object has one
        (``_wait_for_bg``), reached through pymilvus's server manager. If a milvus-lite upgrade
        moves it, fall back to release + load, which builds missing segment indexes synchronously.
        """
        from concurrent.futures import TimeoutError as FutureTimeout

        try:
            from milvus_lite.server_manager import server_manager_instance

            db = server_manager_instance._servers[self._lite_path][1]
            col = db.get_collection(name)
            drain = col._wait_for_bg
        except (ImportError, AttributeError, KeyError, IndexError, TypeError):
            log.warning("milvus-lite internals changed: waiting for indexes by release + load")
            with self._guard("release_collection", name):
                self._client.release_collection(name, timeout=self.timeout)
            self._loaded.discard(name)
            self._ensure_loaded(name)
            return
        try:
            for _ in range(2):  # a compaction can queue one more index build behind it
                drain(timeout=timeout)
        except FutureTimeout:
            raise StoreUnavailableError("index build did not finish in time", code="index_timeout") from None

    # --- stats -----------------------------------------------------------------------------------

    def disk_bytes(self) -> int:
        """Size on disk of the milvus-lite file (0 for a server)."""
        if self._lite_path is None or not os.path.exists(self._lite_path):
            return 0
        if os.path.isfile(self._lite_path):
            return os.path.getsize(self._lite_path)
        return sum(p.stat().st_size for p in Path(self._lite_path).rglob("*") if p.is_file())

    def stats(self, profile: str, version: str) -> dict[str, Any]:
        """``num_cases``, ``backend`` and (lite) ``disk_bytes`` of the whole file."""
        return {"num_cases": self.count(profile, version), "backend": self.backend, "disk_bytes": self.disk_bytes()}


def _companion_row(row: dict[str, Any], case: StoredCase) -> dict[str, Any]:
    return {
        "case_key": row["case_key"],
        "bucket": row["bucket"],
        "modality": row["modality"],
        "view": row["view"],
        "labels": row["labels"],
        "code": case.code,
    }


def _split_result(res) -> tuple[list[dict], dict[str, np.ndarray | bytes]]:
    """Rows (scalar fields) and whole vector columns of a pymilvus query/get result.

    pymilvus 3 returns a lazy list whose rows decode their vectors one by one when touched (~13 µs
    per 128-d row); reading the vector columns from the response at once is ~50× faster. That uses
    the result's private ``_lazy_field_data``; if a pymilvus upgrade removes it, rows are decoded
    one by one (slower, same values). A test asserts the fast path is taken.
    """
    lazy = getattr(res, "_lazy_field_data", None)
    if lazy is None:
        return list(res), {}
    vectors: dict[str, np.ndarray | bytes] = {}
    try:
        for fd in lazy:
            if fd.vectors.HasField("float_vector"):
                vectors[fd.field_name] = np.asarray(fd.vectors.float_vector.data, dtype=np.float32)
            elif fd.vectors.binary_vector:
                vectors[fd.field_name] = bytes(fd.vectors.binary_vector)
            else:
                return list(res), {}
        if len(vectors) != len(lazy):
            return list(res), {}
    except AttributeError:
        return list(res), {}
    # list.__iter__ yields the eagerly built row dicts without triggering per-row vector decoding.
    return list(list.__iter__(res)), vectors
