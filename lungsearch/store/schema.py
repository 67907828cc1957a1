"""Collection names, schemas and index parameters (pure: no server call).

A lungsearch collection holds one profile and model version. Where its codes live depends on the
store's capabilities (:attr:`StoreCapabilities.code_storage`):

- ``"binary_vector"``: a BINARY_VECTOR ``code`` field next to the embedding (servers that allow two
  vector fields, Milvus >= 2.4);
- ``"companion"``: the case collection keeps the code as hex text (the system of record, read by
  index rebuilds) and a companion collection ``<name>__codes`` keyed by the same ``case_key`` holds
  it as BINARY_VECTOR with a HAMMING index and the filter columns (Milvus 2.3: one vector field
  per collection);
- ``"hex"``: hex text only (milvus-lite: no BINARY_VECTOR; Hamming search is in memory).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass

from lungsearch.errors import InvalidRequestError
from lungsearch.store.capabilities import StoreCapabilities
from lungsearch.store.types import MAX_EXCERPT_BYTES, MAX_KEY_CHARS, MAX_LABEL_CHARS, MAX_LABELS

__all__ = [
    "CollectionInfo",
    "collection_name",
    "companion_name",
    "collection_schema",
    "companion_schema",
    "collection_index_params",
    "companion_index_params",
    "bucket_of",
    "SCHEMA_VERSION",
    "BUCKETS",
    "NAME_PREFIX",
    "COMPANION_SUFFIX",
    "HAMMING_NLIST",
]

#: Bumped when the collection schema changes (written into the collection description).
SCHEMA_VERSION = 1
#: Range of the hashed ``bucket`` column used to page through a collection.
BUCKETS = 1 << 16
NAME_PREFIX = "ls_"
COMPANION_SUFFIX = "__codes"
#: Lists of the BIN_IVF_FLAT code index; a search with ``nprobe=HAMMING_NLIST`` is exhaustive (exact).
HAMMING_NLIST = 128
EXPECTED_FIELDS = {
    "case_key",
    "bucket",
    "modality",
    "view",
    "labels",
    "report_excerpt",
    "embedding",
    "code",
    "ingested_at",
    "num_images",
    "model_version",
}


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's identity and dimensions (read back from its fields and index)."""

    name: str
    profile: str
    version: str
    embedding_dim: int
    code_bits: int
    code_storage: str  # "hex" (VARCHAR), "binary_vector", or "companion" (hex + a BINARY_VECTOR companion)
    metric: str = "COSINE"

    @property
    def companion(self) -> str | None:
        """Name of the companion code collection, or None."""
        return companion_name(self.name) if self.code_storage == "companion" else None

    @property
    def code_field_is_binary(self) -> bool:
        return self.code_storage == "binary_vector"


def _sanitise(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)[:limit]


def collection_name(profile: str, version: str) -> str:
    """Milvus collection name for one profile and model version.

    Milvus names allow letters, digits and underscores (first a letter or underscore, at most 255).
    Sanitising can map two versions to one string ("a-b" and "a_b"), so a short hash of the exact
    ``profile@version`` is appended.

    Example:
        >>> collection_name("cxr-report", "20261124-1953-ab12cd")
        'ls_cxr_report__20261124_1953_ab12cd_...'  # doctest: +SKIP

    Raises:
        InvalidRequestError: empty profile or version.
    """
    if not profile or not version:
        raise InvalidRequestError(
            "a collection needs a profile and a model version", code="bad_model_ref", field="model"
        )
    digest = hashlib.sha256(f"{profile}@{version}".encode()).hexdigest()[:8]
    return f"{NAME_PREFIX}{_sanitise(profile, 64)}__{_sanitise(version, 96)}_{digest}"


def companion_name(name: str) -> str:
    """The companion code collection of case collection ``name`` (at most 255 characters)."""
    return f"{name}{COMPANION_SUFFIX}"


def _description(info: CollectionInfo, **extra) -> str:
    return json.dumps(
        {
            "lungsearch_schema": SCHEMA_VERSION,
            "profile": info.profile,
            "version": info.version,
            "embedding_dim": info.embedding_dim,
            "code_bits": info.code_bits,
            "code_storage": info.code_storage,
            "metric": info.metric,
            **extra,
        },
        sort_keys=True,
    )


def _filter_fields(s) -> None:
    from pymilvus import DataType

    s.add_field("bucket", DataType.INT32)
    s.add_field("modality", DataType.VARCHAR, max_length=16)
    s.add_field("view", DataType.VARCHAR, max_length=16)
    s.add_field(
        "labels", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_LABELS, max_length=MAX_LABEL_CHARS * 4
    )


def collection_schema(info: CollectionInfo):
    """The pymilvus schema of a lungsearch case collection.

    The collection description carries the dimensions as JSON for people browsing a server;
    lungsearch itself reads them back from the fields (milvus-lite does not keep descriptions).
    """
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=_description(info))
    s.add_field("case_key", DataType.VARCHAR, max_length=MAX_KEY_CHARS, is_primary=True)
    _filter_fields(s)
    s.add_field("report_excerpt", DataType.VARCHAR, max_length=MAX_EXCERPT_BYTES)
    s.add_field("embedding", DataType.FLOAT_VECTOR, dim=info.embedding_dim)
    if info.code_storage == "binary_vector":
        s.add_field("code", DataType.BINARY_VECTOR, dim=info.code_bits)
    else:
        s.add_field("code", DataType.VARCHAR, max_length=max(1, info.code_bits // 4))
    s.add_field("ingested_at", DataType.DOUBLE)
    s.add_field("num_images", DataType.INT32)
    s.add_field("model_version", DataType.VARCHAR, max_length=128)
    return s


def companion_schema(info: CollectionInfo):
    """Schema of the companion code collection: key, BINARY_VECTOR code, the filter columns."""
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(
        auto_id=False, enable_dynamic_field=False, description=_description(info, companion_of=info.name)
    )
    s.add_field("case_key", DataType.VARCHAR, max_length=MAX_KEY_CHARS, is_primary=True)
    _filter_fields(s)
    s.add_field("code", DataType.BINARY_VECTOR, dim=info.code_bits)
    return s


def _scalar_indexes(ip, caps: StoreCapabilities) -> None:
    if caps.numeric_index_type:
        ip.add_index("bucket", index_type=caps.numeric_index_type)
    if caps.scalar_index_type:
        for field_name in ("modality", "view"):
            ip.add_index(field_name, index_type=caps.scalar_index_type)
    if caps.array_scalar_index:
        ip.add_index("labels", index_type="INVERTED")


def _hamming_index(ip) -> None:
    ip.add_index("code", index_type="BIN_IVF_FLAT", metric_type="HAMMING", params={"nlist": HAMMING_NLIST})


def collection_index_params(
    info: CollectionInfo,
    caps: StoreCapabilities,
    *,
    index_type: str = "HNSW",
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 100,
):
    """Index parameters: the float ANN index, the scalar indexes the store has, HAMMING where codes are vectors."""
    from pymilvus import MilvusClient

    ip = MilvusClient.prepare_index_params()
    params = (
        {"M": hnsw_m, "efConstruction": hnsw_ef_construction}
        if index_type == "HNSW"
        else ({"nlist": 1024} if index_type == "IVF_FLAT" else {})
    )
    ip.add_index("embedding", index_type=index_type, metric_type=info.metric, params=params)
    _scalar_indexes(ip, caps)
    if info.code_storage == "binary_vector":
        _hamming_index(ip)
    return ip


def companion_index_params(info: CollectionInfo, caps: StoreCapabilities):
    """Index parameters of the companion code collection."""
    from pymilvus import MilvusClient

    ip = MilvusClient.prepare_index_params()
    _hamming_index(ip)
    _scalar_indexes(ip, caps)
    return ip


def bucket_of(key: str) -> int:
    """The paging bucket of a case key (a hash, so buckets fill evenly)."""
    return zlib.crc32(key.encode("ascii")) & (BUCKETS - 1)
