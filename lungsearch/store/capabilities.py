"""What the connected Milvus can do, decided by capability (probed), never by version string.

milvus-lite files get fixed capabilities (nothing to probe: the engine ships with pymilvus). A
server URI is probed once per :class:`~lungsearch.store.MilvusStore` connection by creating a
throw-away collection (``_lsprobe_<random>``, dropped at once) and trying what lungsearch needs:

- two vector fields in one collection (Milvus >= 2.4; 2.3 says "multiple vector fields is not
  supported"): codes then live as BINARY_VECTOR in the case collection, else in a companion
  collection keyed the same;
- BINARY_VECTOR with a BIN_IVF_FLAT/HAMMING index (every Milvus server; milvus-lite has none);
- a scalar index per field kind: INVERTED where the server has it (Milvus >= 2.4), else the
  older per-type index (STL_SORT for numbers, Trie for strings in 2.3), else none;
- an index on an ARRAY field (INVERTED, Milvus >= 2.4);
- Strong consistency on reads.

Seen here against the real Milvus 2.3.5 standalone (PyPI ``milvus``): no second vector field, no
INVERTED, STL_SORT/Trie, no ARRAY index, BINARY_VECTOR + HAMMING, Strong reads. Against
milvus-lite's gRPC server (``tests/reliability``): no BINARY_VECTOR, INVERTED, no ARRAY index.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, replace

__all__ = ["StoreCapabilities", "is_lite_uri", "probe_server"]

log = logging.getLogger(__name__)


def is_lite_uri(uri: str) -> bool:
    """True when ``uri`` names an embedded milvus-lite file (pymilvus's own rule: a path ending in .db)."""
    return not re.match(r"^(https?|tcp|unix|grpc)://", uri) and uri.endswith(".db")


@dataclass(frozen=True)
class StoreCapabilities:
    """What the connected Milvus can do: the ONE place where engines differ.

    Attributes:
        backend: "milvus-lite" (a file) or "milvus" (a server URI, whatever engine answers it).
        binary_vector: BINARY_VECTOR fields with BIN_IVF_FLAT/HAMMING (servers).
        array_scalar_index: INVERTED index on ARRAY fields (Milvus >= 2.4).
        single_process: the store is a file one process may open at a time (lite).
        scalar_index_type: the index type of string filter fields (None = not indexed); kept under
            its old name for callers of the first version of this class.
        page_bytes: target response size of one paging query (:meth:`MilvusStore.iter_batches`).
        max_page_rows: most rows one paging query may return.
        multi_vector: two vector fields in one collection (Milvus >= 2.4): codes then sit next to
            the embedding; otherwise in a companion collection.
        numeric_index_type: the index type of numeric filter fields (None = not indexed).
        strong_reads: reads can ask for Strong consistency (see its own write at once).
        flush_on_write: writes must be flushed before they are durable (milvus-lite syncs its log
            at flush; a Milvus server persists an insert in its WAL before acknowledging it, and a
            flush there costs ~2 s, so it is not called per write).
        probed: decided by probing the server (False: assumed from the URI).
    """

    backend: str
    binary_vector: bool
    array_scalar_index: bool
    single_process: bool
    scalar_index_type: str | None = "INVERTED"
    page_bytes: int = 32 << 20
    max_page_rows: int = 10_000
    multi_vector: bool = False
    numeric_index_type: str | None = "INVERTED"
    strong_reads: bool = False
    flush_on_write: bool = True
    probed: bool = False

    @property
    def code_storage(self) -> str:
        """Where a collection with codes keeps them on this store (see ``CollectionInfo.code_storage``)."""
        if not self.binary_vector:
            return "hex"
        return "binary_vector" if self.multi_vector else "companion"

    @classmethod
    def for_uri(cls, uri: str) -> "StoreCapabilities":
        """Capabilities known from the URI alone: final for milvus-lite; for a server, what a
        current Milvus (2.4+, the chart's 2.6) documents, until :func:`probe_server` says otherwise."""
        if is_lite_uri(uri):
            # milvus-lite gathers every row of the collection (keys, vectors, row references) in
            # Python for each query, whatever the filter: at 1M rows a page costs seconds before it
            # returns anything. So page as coarsely as its 256 MB message limit allows.
            return cls(
                backend="milvus-lite",
                binary_vector=False,
                array_scalar_index=False,
                single_process=True,
                page_bytes=160 << 20,
                max_page_rows=400_000,
            )
        # A server answers bucket ranges from its scalar index; keep pages well under its
        # per-query output limits.
        return cls(
            backend="milvus",
            binary_vector=True,
            array_scalar_index=True,
            single_process=False,
            multi_vector=True,
            strong_reads=True,
            flush_on_write=False,
        )


def _try(what: str, fn) -> bool:
    try:
        fn()
        return True
    except Exception as exc:  # the server says no (MilvusException) or the call is unknown to it
        log.debug("capability probe: %s not available (%s)", what, type(exc).__name__)
        return False


def probe_server(client, base: StoreCapabilities, *, timeout: float = 30.0) -> StoreCapabilities:
    """Probe a server's capabilities with a throw-away collection (dropped before returning).

    Costs a few calls (about 2-3 s on Milvus 2.3: pymilvus waits for each scalar index it
    creates). Any failure of the probe itself keeps the cautious answer (no such capability).
    """
    from pymilvus import DataType, MilvusClient

    name = f"_lsprobe_{uuid.uuid4().hex[:12]}"
    # pymilvus logs every refused call at ERROR with a traceback; a refusal is the answer here.
    quiet = logging.getLogger("pymilvus")
    old_level = quiet.level
    quiet.setLevel(logging.CRITICAL)

    def schema(*vectors: tuple[str, DataType]):
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("pk", DataType.VARCHAR, max_length=16, is_primary=True)
        s.add_field("num", DataType.INT32)
        s.add_field("txt", DataType.VARCHAR, max_length=16)
        s.add_field("arr", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=2, max_length=8)
        for field_name, dtype in vectors:
            s.add_field(field_name, dtype, dim=64 if dtype == DataType.BINARY_VECTOR else 8)
        return s

    def create(*vectors):
        return lambda: client.create_collection(name, schema=schema(*vectors), timeout=timeout)

    def index(field_name: str, index_type: str, **kw):
        def go():
            ip = MilvusClient.prepare_index_params()
            ip.add_index(field_name, index_type=index_type, **kw)
            client.create_index(name, ip, timeout=timeout)

        return go

    try:
        multi = _try("two vector fields", create(("emb", DataType.FLOAT_VECTOR), ("bin", DataType.BINARY_VECTOR)))
        binary = multi or _try("BINARY_VECTOR", create(("bin", DataType.BINARY_VECTOR)))
        if binary:
            binary = _try(
                "BIN_IVF_FLAT/HAMMING", index("bin", "BIN_IVF_FLAT", metric_type="HAMMING", params={"nlist": 8})
            )
        if not (multi or binary) and not _try("a float collection", create(("emb", DataType.FLOAT_VECTOR))):
            # Not an answer about capabilities (the server is down or refuses everything): fail
            # this call retriably and probe again on the next one, rather than remember "nothing".
            from lungsearch.errors import StoreUnavailableError

            raise StoreUnavailableError("the vector store did not answer the capability probe", code="probe_failed")
        numeric = next((t for t in ("INVERTED", "STL_SORT") if _try(f"{t} on INT32", index("num", t))), None)
        varchar = next((t for t in ("INVERTED", "Trie") if _try(f"{t} on VARCHAR", index("txt", t))), None)
        array = _try("INVERTED on ARRAY", index("arr", "INVERTED"))
        strong = False
        if multi or not binary:  # every vector field needs an index before the collection loads
            _try("FLAT index", index("emb", "FLAT", metric_type="L2"))
        if _try("load", lambda: client.load_collection(name, timeout=timeout)):
            strong = _try(
                "Strong reads",
                lambda: client.query(
                    name, filter="num >= 0", output_fields=["pk"], limit=1, consistency_level="Strong", timeout=timeout
                ),
            )
    finally:
        _try("drop probe", lambda: client.drop_collection(name, timeout=timeout))
        quiet.setLevel(old_level)
    caps = replace(
        base,
        binary_vector=binary,
        multi_vector=multi and binary,
        array_scalar_index=array,
        scalar_index_type=varchar,
        numeric_index_type=numeric,
        strong_reads=strong,
        # milvus-lite (the one Milvus engine without BINARY_VECTOR) syncs its log at flush,
        # also behind a gRPC server; a Milvus server's WAL makes an acknowledged insert durable.
        flush_on_write=not binary,
        probed=True,
    )
    log.info(
        "Milvus capabilities: binary_vector=%s multi_vector=%s "
        "numeric_index=%s varchar_index=%s array_index=%s strong=%s",
        caps.binary_vector,
        caps.multi_vector,
        caps.numeric_index_type,
        caps.scalar_index_type,
        caps.array_scalar_index,
        caps.strong_reads,
    )
    return caps
