"""Vector store and in-memory ranking index.

- :class:`MilvusStore`: the system of record (pymilvus ``MilvusClient`` over an embedded
  milvus-lite file or a Milvus server), one collection per profile and model version.
- :class:`CaseIndex`: what the ranking deployment searches: float16 embeddings, packed uint64
  codes with popcount Hamming, filter columns; on start loaded from its snapshot when the store's
  write generation matches, else rebuilt from the store (:func:`index_from_store`).
- :class:`StoreCapabilities`: what the connected Milvus can do (probed once per server connection).
- :class:`StoredCase`: one case as stored; :class:`SearchFilter`: typed metadata filters.

Example:
    >>> from lungsearch.store import MilvusStore, CaseIndex  # doctest: +SKIP
    >>> store = MilvusStore("data/lungsearch.db")  # doctest: +SKIP
    >>> index = CaseIndex.from_store(store, "cxr-hash", "v1")  # doctest: +SKIP
    >>> index.search(embedding, code, top_k=10)  # doctest: +SKIP
"""

from lungsearch.store.filters import SearchFilter, to_milvus_expr
from lungsearch.store.index import CaseIndex
from lungsearch.store.milvus import CollectionInfo, MilvusStore, StoreCapabilities, collection_name, is_lite_uri
from lungsearch.store.snapshot import index_from_store
from lungsearch.store.types import CaseBatch, Hit, StoredCase, UpsertResult

__all__ = [
    "MilvusStore",
    "StoreCapabilities",
    "CollectionInfo",
    "collection_name",
    "is_lite_uri",
    "CaseIndex",
    "index_from_store",
    "StoredCase",
    "SearchFilter",
    "to_milvus_expr",
    "Hit",
    "UpsertResult",
    "CaseBatch",
]
