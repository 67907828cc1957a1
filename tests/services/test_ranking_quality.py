"""The Ranking replica feeds the retrieval-quality monitor (called directly, no Ray, no Serve)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from services_fixtures import PROFILES, build_registry

from lungsearch._proto.v1 import common_pb2, ranking_pb2
from lungsearch.serving import convert


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality-registry")
    return root, build_registry(root, {"ct-ild": PROFILES["ct-ild"]})


def test_rank_records_similarity_and_drift_against_the_live_gallery(registry, tmp_path):
    import services.ranking

    root, cards = registry
    card = cards["ct-ild"]
    rk = services.ranking.Ranking.func_or_class(["ct-ild"], str(root), str(tmp_path / "q.db"))
    ref = common_pb2.ModelRef(profile="ct-ild", version=card.version)
    rng = np.random.default_rng(0)
    mean = rng.standard_normal(card.embedding_dim).astype(np.float32)

    def record(i):
        case = common_pb2.Case(
            case_key=f"{i:032x}", modality=common_pb2.MODALITY_CT, labels=["ggo"], model=ref, num_images=1
        )
        emb = (mean + 0.3 * rng.standard_normal(card.embedding_dim)).astype(np.float32)
        return ranking_pb2.CaseRecord(
            case=case,
            embedding=convert.tensor_to_proto(emb),
            code=convert.code_to_proto(rng.integers(0, 256, 8, dtype=np.uint8).tobytes(), 64),
        )

    async def go():
        await rk.Upsert(ranking_pb2.UpsertRequest(model=ref, records=[record(i) for i in range(40)]))
        assert rk.quality.reference("ct-ild").size == 40
        for _ in range(25):
            q = (-mean + 0.3 * rng.standard_normal(card.embedding_dim)).astype(np.float32)  # far from the gallery
            req = ranking_pb2.RankRequest(
                model=ref,
                embedding=convert.tensor_to_proto(q),
                code=convert.code_to_proto(rng.integers(0, 256, 8, dtype=np.uint8).tobytes(), 64),
                top_k=3,
            )
            assert len((await rk.Rank(req)).results) == 3

    asyncio.run(go())
    text = rk.metrics_text()
    rk.__del__()
    assert 'lungsearch_quality_best_similarity_cosine_count{profile="ct-ild",site="unspecified"} 25.0' in text
    assert 'lungsearch_quality_low_similarity_queries_total{profile="ct-ild",site="unspecified"} 25.0' in text
    drift = [ln for ln in text.splitlines() if ln.startswith("lungsearch_quality_embedding_drift_cosine{")]
    assert drift and float(drift[0].rsplit(" ", 1)[1]) > 1.0
    assert any(ln.startswith("lungsearch_quality_code_bits_psi{") for ln in text.splitlines())
