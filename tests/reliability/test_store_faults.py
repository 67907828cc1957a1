"""The Ranking replica against a Milvus server that is not there yet, then comes up (no Ray: the
deployment class is called directly, as Serve would).

The live-app test (test_live_app.py) takes a running store away and brings it back; this covers
the other order: the replica *starts* while nothing listens on the store's loopback port (a Milvus
pod still starting), answers UNAVAILABLE with the reason and reports not-ready, and serves as soon
as the server is up, without being restarted. The server is milvus-lite's gRPC adapter in its own
process (a real Milvus-protocol server).
"""

from __future__ import annotations

import asyncio
import time

import _reliability as R
import numpy as np
import pytest

from lungsearch._proto.v1 import common_pb2, ranking_pb2
from lungsearch.errors import StoreUnavailableError


def _ranking_cls():
    import services.ranking

    return services.ranking.Ranking.func_or_class


def _record(card, i: int) -> ranking_pb2.CaseRecord:
    from lungsearch.serving import convert

    rng = np.random.default_rng(i)
    emb = rng.standard_normal(card.embedding_dim).astype(np.float32)
    emb /= np.linalg.norm(emb)
    case = common_pb2.Case(
        case_key=f"{i:032x}", modality=common_pb2.MODALITY_CT, view=common_pb2.VIEW_AXIAL, labels=["ggo"], num_images=3
    )
    rec = ranking_pb2.CaseRecord(case=case, embedding=convert.tensor_to_proto(emb))
    rec.code.CopyFrom(
        common_pb2.HashCode(
            packed=rng.integers(0, 256, card.code_bits // 8, dtype=np.uint8).tobytes(), bits=card.code_bits
        )
    )
    return rec


def test_ranking_started_before_the_store_recovers_without_restart(tmp_path):
    (card,) = R.build_registry(tmp_path / "artifacts", {"ct-ild": R.PROFILES["ct-ild"]})
    R.precreate_collections(tmp_path / "store.db", [card])
    server = R.MilvusServerProcess(tmp_path / "store.db")  # port chosen, nothing listening yet
    ref = common_pb2.ModelRef(profile=card.profile, version=card.version)
    t0 = time.monotonic()
    rk = _ranking_cls()(["ct-ild"], str(tmp_path / "artifacts"), server.uri, "", 2.0)
    assert time.monotonic() - t0 < 60, "the replica must come up (to answer health) while the store is down"
    rk.check_health()  # a store outage is not a replica failure: Serve must not restart it in a loop
    reason = asyncio.run(rk.ready())
    assert reason and "vector store" in reason
    with pytest.raises(StoreUnavailableError) as e:
        asyncio.run(rk.Upsert(ranking_pb2.UpsertRequest(model=ref, records=[_record(card, 1)])))
    assert e.value.retriable and e.value.reason == "STORE_UNAVAILABLE"
    try:
        server.start()
        deadline = time.monotonic() + 60
        while asyncio.run(rk.ready()):
            assert time.monotonic() < deadline, "the replica did not see the store come up"
            time.sleep(0.5)
        up = asyncio.run(rk.Upsert(ranking_pb2.UpsertRequest(model=ref, records=[_record(card, i) for i in range(5)])))
        assert up.inserted == 5
        q = _record(card, 3)
        ranked = asyncio.run(rk.Rank(ranking_pb2.RankRequest(model=ref, embedding=q.embedding, code=q.code, top_k=1)))
        assert ranked.results[0].case.case_key == f"{3:032x}" and ranked.results[0].hamming_distance == 0
        stats = asyncio.run(rk.Stats(ranking_pb2.StatsRequest(model=ref)))
        assert stats.num_cases == 5 and stats.backend == "milvus"
    finally:
        store = getattr(rk, "_store", None)
        if store is not None:
            store.close()
        server.stop()
