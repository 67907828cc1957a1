"""The deployment classes called directly (no Ray, no Serve): health with reasons, the stage
results against the library functions, and the Ranking replica's write ordering (a failed store
write leaves the index untouched)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from services_fixtures import PROFILES, build_registry

from lungsearch._proto.v1 import common_pb2, encoding_pb2, hashing_pb2, ranking_pb2
from lungsearch.errors import ModelNotReadyError, StoreUnavailableError
from lungsearch.serving import convert, pipeline


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("dep-registry")
    return root, build_registry(root, {"ct-ild": PROFILES["ct-ild"]})


def _cls(name):
    import services.encoding
    import services.fusion
    import services.hashing
    import services.ranking

    mod = {
        "Encoding": services.encoding,
        "Fusion": services.fusion,
        "Hashing": services.hashing,
        "Ranking": services.ranking,
    }[name]
    return getattr(mod, name).func_or_class


def _study(seed=0):
    from lungsearch.data.types import DecodedImage, ImageMeta, Study

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    imgs = []
    for s in range(3):
        body = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 28**2, 40.0, -1000.0)
        lungs = ((yy - 32) ** 2 + (xx - 20) ** 2 < 90) | ((yy - 32) ** 2 + (xx - 44) ** 2 < 90)
        px = np.where(lungs, -850.0, body) + rng.normal(0, 30, (64, 64))
        imgs.append(
            DecodedImage(
                px.astype(np.float32), ImageMeta(modality="ct", view="AXIAL", slice_position=float(s), hu=True)
            )
        )
    return Study(images=imgs)


def test_missing_model_reports_unhealthy_with_the_reason(tmp_path):
    enc = _cls("Encoding")(["ct-ild"], str(tmp_path), 1)
    with pytest.raises(ModelNotReadyError, match="no trained model for profile 'ct-ild'"):
        enc.check_health()
    assert "ct-ild" in asyncio.run(enc.ready())
    assert "lungsearch_model_load_failures_total" in enc.metrics_text()


def test_stages_match_the_library(registry):
    """The Encoding batch body (``@serve.batch`` itself needs a replica) and the Hashing RPC."""
    from lungsearch.errors import InvalidRequestError

    root, cards = registry
    card = cards["ct-ild"]
    ref = common_pb2.ModelRef(profile="ct-ild", version=card.version)
    enc_d, hsh_d = (_cls(n)(["ct-ild"], str(root), 1) for n in ("Encoding", "Hashing"))
    enc_d.check_health()
    served = enc_d.models.get("ct-ild")
    study = _study()
    # one batch: a good study, a report-only query this profile cannot answer, another study
    out = enc_d._prepare_and_encode(served, [(study, None), (None, "a report"), (_study(1), None)])
    assert isinstance(out[1], InvalidRequestError)  # fails alone
    (item, feats), (_, feats2) = out[0], out[2]
    model = served.model
    alone = pipeline.encode_batch(model, [pipeline.prepare_study(study, None, card.config, model)])[0]
    np.testing.assert_allclose(feats["image_pooled"], alone["image_pooled"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["radiomics"], alone["radiomics"], rtol=1e-5)
    assert item.num_images == 3 and not np.allclose(feats["image_pooled"], feats2["image_pooled"])
    emb = pipeline.fuse_batch(model, [feats])[0]["embedding"]
    code = asyncio.run(hsh_d.Hash(hashing_pb2.HashRequest(model=ref, embedding=convert.tensor_to_proto(emb))))
    assert code.code.packed == pipeline.hash_code(model, embedding=emb) and code.code.bits == 64
    with pytest.raises(InvalidRequestError):  # no input: a handle caller gets the library error
        asyncio.run(hsh_d.Hash(hashing_pb2.HashRequest(model=ref)))


def test_a_lone_encode_runs_at_once_without_the_batch_queue(registry):
    """Nothing else in flight: Encode does not enter ``@serve.batch`` (which would wait
    batch_wait_timeout_s; outside a replica it could not run at all), and its features are the
    library's; it is counted as a batch of one."""
    root, cards = registry
    card = cards["ct-ild"]
    enc_d = _cls("Encoding")(["ct-ild"], str(root), 1)
    enc_d.reconfigure({"batch_wait_timeout_s": 30.0})  # a batch wait would show as a 30 s call
    served = enc_d.models.get("ct-ild")
    study = _study(2)
    req = encoding_pb2.EncodeRequest(model=common_pb2.ModelRef(profile="ct-ild", version=card.version))
    import time as _time

    t0 = _time.perf_counter()
    resp = asyncio.run(enc_d.Encode(req, study=study))
    assert _time.perf_counter() - t0 < 20.0 and enc_d._in_flight == 0
    model = served.model
    alone = pipeline.encode_batch(model, [pipeline.prepare_study(study, None, card.config, model)])[0]
    np.testing.assert_allclose(
        convert.features_from_proto(resp.features)["image_pooled"], alone["image_pooled"], rtol=1e-4, atol=1e-5
    )
    assert 'lungsearch_encoding_batch_size_items_count{profile="ct-ild"} 1.0' in enc_d.metrics_text()


def test_ranking_writes_store_first_and_a_failed_write_changes_nothing(registry, tmp_path):
    root, cards = registry
    card = cards["ct-ild"]
    rk = _cls("Ranking")(["ct-ild"], str(root), str(tmp_path / "r.db"))
    ref = common_pb2.ModelRef(profile="ct-ild", version=card.version)
    rng = np.random.default_rng(0)

    def record(key, label):
        case = common_pb2.Case(case_key=key, modality=common_pb2.MODALITY_CT, labels=[label], model=ref, num_images=3)
        emb = rng.standard_normal(card.embedding_dim).astype(np.float32)
        return ranking_pb2.CaseRecord(
            case=case,
            embedding=convert.tensor_to_proto(emb),
            code=convert.code_to_proto(rng.integers(0, 256, 8, dtype=np.uint8).tobytes(), 64),
        )

    async def go():
        up = await rk.Upsert(
            ranking_pb2.UpsertRequest(model=ref, records=[record("a" * 32, "ggo"), record("b" * 32, "normal")])
        )
        assert (up.inserted, up.updated) == (2, 0)
        real = rk._store.upsert

        def down(*a, **k):
            raise StoreUnavailableError("store down", code="connect_failed")

        rk._store.upsert = down
        with pytest.raises(StoreUnavailableError):
            await rk.Upsert(ranking_pb2.UpsertRequest(model=ref, records=[record("c" * 32, "ggo")]))
        rk._store.upsert = real
        stats = await rk.Stats(ranking_pb2.StatsRequest(model=ref))
        assert stats.num_cases == 2 and stats.backend == "milvus-lite"
        q = ranking_pb2.RankRequest(
            model=ref,
            embedding=convert.tensor_to_proto(np.ones(card.embedding_dim, np.float32)),
            code=convert.code_to_proto(b"\0" * 8, 64),
            top_k=5,
            filter=common_pb2.Filter(labels_any=["ggo"]),
        )
        hits = (await rk.Rank(q)).results
        assert [h.case.case_key for h in hits] == ["a" * 32] and hits[0].hamming_distance >= 0
        assert (await rk.Delete(ranking_pb2.DeleteRequest(model=ref, case_key="a" * 32))).deleted
        assert (await rk.Stats(ranking_pb2.StatsRequest(model=ref))).num_cases == 1
        assert await rk.ready() == ""

    asyncio.run(go())
    rk.__del__()
