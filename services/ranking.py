"""Ranking deployment (``lungsearch.v1.Ranking``): owns the vector store and the in-memory index.

Exactly one replica owns a milvus-lite file (a second process cannot open it), so every write
goes through here: an upsert is written to Milvus and flushed *before* the in-memory
:class:`~lungsearch.store.CaseIndex` changes and before the gateway acknowledges the ingest; if
Milvus fails nothing changes (a failed ingest stores nothing). The index is rebuilt from Milvus
when a profile version is first used (on start for the live ones). Writes are serialised; reads
search an immutable snapshot of the index and never wait for a write.

With a Milvus server instead of a lite file, several replicas may run: each builds its index from
the store and follows the others' writes (``lungsearch.store.follow``: rows since its watermark,
reconciled by key when the counts differ), so they answer the same within ``follow_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from ray import serve

from lungsearch._proto.v1 import ranking_pb2
from lungsearch.errors import InvalidRequestError, LungsearchError, NotFoundError
from lungsearch.serving import convert, limits
from lungsearch.serving.logs import route_to_serve_log
from lungsearch.serving.metrics import ServingMetrics
from lungsearch.serving.models import ModelSet, ServedModel
from lungsearch.serving.quality import GalleryReference, QualityMonitor
from lungsearch.serving.rpc import rpc

__all__ = ["Ranking"]

log = logging.getLogger("lungsearch.services.ranking")


@serve.deployment(name="Ranking", ray_actor_options={"num_cpus": 0.3}, max_ongoing_requests=32)
class Ranking:
    """Args:
    profiles: profiles (or ``profile@version``) to serve.
    artifacts_dir: model registry root (cards only: dimensions, code bits, index settings).
    milvus_uri: a milvus-lite file (``data/lungsearch.db``) or ``http://host:19530``.
    milvus_token_env: name of the environment variable holding the server token.
    store_timeout: seconds per Milvus call.
    backend: CaseIndex scan kernels ("auto", "faiss", "numpy").
    follow_interval_s: with a Milvus server, seconds between reads of the other replicas' writes.
    """

    def __init__(
        self,
        profiles: list[str],
        artifacts_dir: str | None = None,
        milvus_uri: str | None = None,
        milvus_token_env: str = "LUNGSEARCH_MILVUS_TOKEN",
        store_timeout: float = 10.0,
        backend: str = "auto",
        follow_interval_s: float = 2.0,
    ) -> None:
        route_to_serve_log()
        from lungsearch import constants

        self.metrics = ServingMetrics("ranking")
        # Retrieval quality against the gallery this replica holds (no site on RankRequest yet: "unspecified").
        self.quality = QualityMonitor(self.metrics)
        self.models = ModelSet(profiles, root=artifacts_dir, load_weights=False)
        self.models.load()
        self.uri = str(milvus_uri or constants.MILVUS_URI)
        self._token = os.environ.get(milvus_token_env, "") if milvus_token_env else ""
        self._timeout = float(store_timeout)
        self._backend = backend
        self._store = None
        self.store_error = ""
        self._indexes: dict[tuple[str, str], Any] = {}
        self._followers: dict[tuple[str, str], Any] = {}
        self._follow_interval_s = float(follow_interval_s)
        self._index_lock = threading.Lock()
        self._write_lock = asyncio.Lock()
        try:
            self._open_store()
            for m in self.models.loaded():
                self._index(m)
        except LungsearchError as exc:
            # Keep serving health answers; every call retries opening (recovery without restart).
            self.store_error = exc.message
            log.error("vector store not ready: %s", exc.message)
        self._publish()

    # --- store and indexes -------------------------------------------------------------------------
    def _open_store(self):
        if self._store is None:
            from lungsearch.store import MilvusStore

            self._store = MilvusStore(self.uri, token=self._token, timeout=self._timeout)
            self.store_error = ""
            log.info("vector store open (%s)", self._store.backend)
        return self._store

    def _index(self, served: ServedModel):
        key = (served.profile, served.version)
        idx = self._indexes.get(key)
        if idx is not None:
            return idx
        with self._index_lock:
            idx = self._indexes.get(key)
            if idx is not None:
                return idx
            from lungsearch.store.snapshot import index_from_store

            store = self._open_store()
            card, cfg = served.card, served.cfg
            candidates = cfg.index.candidates if cfg.index is not None else 100
            store.ensure_collection(
                card.profile, card.version, embedding_dim=card.embedding_dim, code_bits=card.code_bits, index=cfg.index
            )
            # From the index snapshot when the collection's write generation still matches it, else
            # rebuilt from the store (and re-snapshotted; a keeper thread re-snapshots after ingests).
            idx, how = index_from_store(
                store,
                card.profile,
                card.version,
                backend=self._backend,
                default_candidates=candidates,
                keep_every_s=300.0,
            )
            self._indexes[key] = idx
            log.info(
                "index %s@%s %s: %d cases",
                card.profile,
                card.version,
                "loaded from its snapshot" if how == "snapshot" else "rebuilt from the store",
                len(idx),
            )
            if not store.capabilities.single_process:
                # A server store may have other Ranking replicas writing to it: follow their writes
                # (lungsearch.store.follow), so every replica answers the same within one interval.
                from lungsearch.store.follow import IndexFollower

                self._followers[key] = IndexFollower(
                    store, card.profile, card.version, idx, interval_s=self._follow_interval_s
                ).start()
            self._publish_index(card.profile, card.version, idx)
            return idx

    def _publish_index(self, profile: str, version: str, idx) -> None:
        st = idx.stats()
        self.metrics.set_index(profile, version, int(st["num_cases"]), int(st["index_bytes"]))
        if self.models.live.get(profile, version) == version:
            # The drift reference follows the live gallery; recomputed (O(N*D)) only when it grew or shrank by 10 %.
            ref = self.quality.reference(profile)
            if ref is None or abs(int(st["num_cases"]) - ref.size) > 0.1 * ref.size:
                self.quality.set_reference(profile, GalleryReference.from_index(idx))

    def _publish(self) -> None:
        self.metrics.clear_models()
        for m in self.models.loaded():
            self.metrics.set_model(m.profile, m.version, live=self.models.live.get(m.profile) == m.version)

    def _served(self, ref) -> tuple[ServedModel, Any]:
        served = self.models.get(ref.profile, ref.version)
        return served, self._index(served)

    # --- Serve hooks -----------------------------------------------------------------------------------
    def check_health(self) -> None:
        """Unhealthy only when a model card failed to load. A store outage is *not* a replica
        failure (restarting would not help): calls answer UNAVAILABLE and the health service
        says NOT_SERVING until the store is back (see :meth:`ready`)."""
        self.models.health()

    async def ready(self) -> str:
        """ "" when the cards are loaded and the store answers, else why not (gRPC health service)."""
        if self.models.errors:
            return "; ".join(f"{p}: {m}" for p, m in sorted(self.models.errors.items()))
        try:
            store = await asyncio.to_thread(self._open_store)
            await asyncio.to_thread(store.list_collections)
            for m in self.models.loaded():
                await asyncio.to_thread(self._index, m)
                # The index answers searches from memory, but ingests and GetCase need the collection
                # loaded on the server: a restarted Milvus server has released it.
                await asyncio.to_thread(store.ensure_loaded, m.profile, m.version)
            return ""
        except LungsearchError as exc:
            self.store_error = exc.message
            return exc.message

    async def activate(self, profile: str, version: str) -> int:
        """Make a version live here after building its index; returns its case count."""
        served = await asyncio.to_thread(self.models.get, profile, version)
        idx = await asyncio.to_thread(self._index, served)
        self.models.activate(profile, version)
        self._publish()
        self.quality.set_reference(profile, GalleryReference.from_index(idx))  # drift against the new gallery
        return len(idx)

    def metrics_text(self) -> str:
        return self.metrics.render()

    def __del__(self) -> None:
        for follower in getattr(self, "_followers", {}).values():
            follower.stop()
        # Graceful shutdown: release the milvus-lite file so a restarted app can open it.
        store = getattr(self, "_store", None)
        if store is not None:
            try:
                store.close()
            except Exception:  # noqa: BLE001 - shutdown must finish
                log.debug("store close failed", exc_info=True)

    # --- RPCs ----------------------------------------------------------------------------------------
    @rpc("Upsert", ranking_pb2.UpsertResponse)
    async def Upsert(self, request: ranking_pb2.UpsertRequest, grpc_context=None) -> ranking_pb2.UpsertResponse:
        from lungsearch.store import StoredCase

        served, idx = await asyncio.to_thread(self._served, request.model)
        if not request.records:
            raise InvalidRequestError("no records to upsert", code="no_records", field="records")
        card = served.card
        cases = [
            StoredCase(**convert.case_fields_from_proto(r, embedding_dim=card.embedding_dim, code_bits=card.code_bits))
            for r in request.records
        ]
        for c in cases:
            c.model_version = card.version
            c.validate(embedding_dim=card.embedding_dim, code_bits=card.code_bits)
        async with self._write_lock:
            # Milvus first (flushed inside upsert): if it fails, the index is untouched.
            res = await asyncio.to_thread(self._store.upsert, card.profile, card.version, cases)
            idx.upsert(cases)
        self._publish_index(card.profile, card.version, idx)
        return ranking_pb2.UpsertResponse(inserted=res.inserted, updated=res.updated)

    @rpc("Rank", ranking_pb2.RankResponse)
    async def Rank(self, request: ranking_pb2.RankRequest, grpc_context=None) -> ranking_pb2.RankResponse:
        from lungsearch.store import SearchFilter

        served, idx = await asyncio.to_thread(self._served, request.model)
        card = served.card
        k = limits.check_top_k(request.top_k, served.cfg.serve.limits)
        emb = (
            convert.tensor_from_proto(request.embedding, field="embedding").reshape(-1)
            if request.HasField("embedding")
            else None
        )
        code = convert.code_from_proto(request.code, expected_bits=card.code_bits) if card.code_bits else b""
        flt = SearchFilter(
            **{
                k2: tuple(v) if isinstance(v, list) else v
                for k2, v in convert.filter_from_proto(request.filter).items()
            }
        )
        hits = idx.search(emb, code or None, top_k=k, filter=flt, candidates=max(0, int(request.candidates)))
        cases = (
            await asyncio.to_thread(self._store.get_many, card.profile, card.version, [h.key for h in hits])
            if hits
            else {}
        )
        if self.models.live.get(card.profile, card.version) == card.version:
            try:
                self.quality.observe(card.profile, None, emb, [float(h.score) for h in hits], code or None)
            except Exception:  # noqa: BLE001 - quality signals never fail a search
                log.debug("quality observation failed", exc_info=True)
        resp = ranking_pb2.RankResponse(model=convert.model_ref(card.profile, card.version))
        for h in hits:
            case = cases.get(h.key)
            if case is None:  # deleted between search and fetch
                continue
            resp.results.add(
                case=convert.case_to_proto(case, profile=card.profile),
                score=float(h.score),
                hamming_distance=int(h.hamming),
            )
        return resp

    @rpc("Get", ranking_pb2.GetResponse)
    async def Get(self, request: ranking_pb2.GetRequest, grpc_context=None) -> ranking_pb2.GetResponse:
        served, _ = await asyncio.to_thread(self._served, request.model)
        key = limits.check_case_key(request.case_key)
        cases = await asyncio.to_thread(self._store.get_many, served.profile, served.version, [key])
        if key not in cases:
            raise NotFoundError("no case with this key", code="unknown_case", field="case_key")
        return ranking_pb2.GetResponse(case=convert.case_to_proto(cases[key], profile=served.profile))

    @rpc("Delete", ranking_pb2.DeleteResponse)
    async def Delete(self, request: ranking_pb2.DeleteRequest, grpc_context=None) -> ranking_pb2.DeleteResponse:
        served, idx = await asyncio.to_thread(self._served, request.model)
        key = limits.check_case_key(request.case_key)
        async with self._write_lock:
            n = await asyncio.to_thread(self._store.delete, served.profile, served.version, [key])
            idx.delete(key)
        self._publish_index(served.profile, served.version, idx)
        return ranking_pb2.DeleteResponse(deleted=n > 0)

    @rpc("Stats", ranking_pb2.StatsResponse)
    async def Stats(self, request: ranking_pb2.StatsRequest, grpc_context=None) -> ranking_pb2.StatsResponse:
        served, idx = await asyncio.to_thread(self._served, request.model)
        st = idx.stats()
        return ranking_pb2.StatsResponse(
            model=convert.model_ref(served.profile, served.version),
            num_cases=int(st["num_cases"]),
            index_bytes=int(st["index_bytes"]),
            backend=self._store.backend if self._store is not None else "",
        )
