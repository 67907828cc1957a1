"""One case, one vector: a case's stored embedding, code and excerpt are a function of the case and
the model version alone, whichever path computed them (``lungsearch.inference``).

Paths compared, on a CXR profile (cxr-hash: Grad-CAM + Otsu local branch, learned codes) and on
ct-ild (several slices per case, so padding and pooling are exercised; radiomics; LSH codes):

* the reference: :func:`lungsearch.inference.embed_cases`, one case per call;
* the evaluation: ``training.inference.predict`` over the training case table;
* ``build_index`` with batch 1, batch 5 and the default, and with two embedding actors;
* the serving stages in-process, as the Encoding -> Fusion -> Hashing deployments run them
  (``serving.pipeline.prepare_study`` / ``encode_batch`` / ``fuse_batch`` / ``hash_code``), one
  study at a time and several in one batch, as the deployments' ``@serve.batch`` forms them.

Embeddings agree to float32 tolerance (1e-5), codes bit for bit. Phantom data (synthetic).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungsearch import registry
from lungsearch.config import load_profile
from lungsearch.models import create_model

KEY = b"k" * 32
ATOL = 1e-5

PROFILES = {
    "cxr-hash": ["data.phantom.n=12", "data.phantom.size=64", "data.image_size=32"],  # a 1x1 CAM: flat heat maps
    # several slices per case: pooled per case; a batch of unequal series is padded (test below)
    "ct-ild": ["data.phantom.n=8", "data.phantom.size=48", "data.image_size=48", "data.phantom.slices=4"],
}


def _profile(name, tmp_path):
    from lungsearch.data import load_records

    cfg = load_profile(name, PROFILES[name] + [f"data.root={tmp_path / 'data'}"])
    torch.manual_seed(0)
    card = registry.save_model(
        create_model(cfg).eval(), cfg, metrics={}, data_fingerprint="test", synthetic_data=True, root=tmp_path / "art"
    )
    model, _ = registry.load_model(card.ref, root=tmp_path / "art")
    return cfg, card, model, load_records(cfg.data)


def _reference(cfg, model, records):
    """embed_cases one case at a time: the definition every path must meet."""
    from lungsearch.data import load_study
    from lungsearch.inference import embed_cases, prepare_case
    from lungsearch.training.cases import radiomics_extractor

    ex = radiomics_extractor(cfg)
    out = []
    for rec in records:
        case = prepare_case(load_study(rec, hmac_key=KEY), cfg, extractor=ex)
        out.append(embed_cases(model, [case], texts=[rec.report or ""])[0])
    return out


def _assert_same(ref, emb, code, what):
    np.testing.assert_allclose(emb, ref.embedding, atol=ATOL, err_msg=what)
    assert code == ref.code, f"{what}: codes differ"


@pytest.fixture(scope="module", params=sorted(PROFILES))
def case_set(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    cfg, card, model, records = _profile(request.param, tmp)
    return dict(
        profile=request.param,
        cfg=cfg,
        card=card,
        model=model,
        records=records,
        tmp=tmp,
        ref=_reference(cfg, model, records),
    )


def test_the_reference_is_batch_independent(case_set):
    """embed_cases over all cases at once (padded to the longest series) == one by one."""
    from lungsearch.data import load_study
    from lungsearch.inference import embed_cases, prepare_case
    from lungsearch.training.cases import radiomics_extractor

    cfg, model, records = case_set["cfg"], case_set["model"], case_set["records"]
    ex = radiomics_extractor(cfg)
    cases = [prepare_case(load_study(r, hmac_key=KEY), cfg, extractor=ex) for r in records]
    batched = embed_cases(model, cases, texts=[r.report or "" for r in records])
    for r, b in zip(case_set["ref"], batched):
        _assert_same(r, b.embedding, b.code, "batched embed_cases")
    assert all(len(r.code) == case_set["card"].code_bits // 8 for r in case_set["ref"])


def test_padding_never_reaches_a_number(tmp_path):
    """CT series of 4, 2 and 3 slices in one batch (zero-padded to 4): each as if alone."""
    from lungsearch.data import load_study
    from lungsearch.inference import PreparedCase, embed_cases, prepare_case
    from lungsearch.training.cases import radiomics_extractor

    cfg, _, model, records = _profile("ct-ild", tmp_path)
    ex = radiomics_extractor(cfg)
    full = [prepare_case(load_study(r, hmac_key=KEY), cfg, extractor=ex) for r in records[:3]]
    cases = [PreparedCase(c.pixels[:s], c.radiomics) for c, s in zip(full, (4, 2, 3))]
    assert [c.num_slices for c in cases] == [4, 2, 3]
    together = embed_cases(model, cases)
    for c, t in zip(cases, together):
        alone = embed_cases(model, [c])[0]
        _assert_same(alone, t.embedding, t.code, f"{c.num_slices}-slice series in a padded batch")
    assert not np.allclose(together[0].embedding, together[1].embedding)  # the slices count: pooling is per case


def test_the_evaluation_path_agrees(case_set):
    from lungsearch.models.hashing import pack_codes
    from lungsearch.training.cases import prepare_cases
    from lungsearch.training.inference import predict

    cfg, model, records = case_set["cfg"], case_set["model"], case_set["records"]
    table = prepare_cases(cfg, records, use_ray=False, cache_dir="", hmac_key=KEY)
    assert table.case_ids == [r.case_id for r in records]
    pred = predict(model, table, batch_size=5)
    for k, r in enumerate(case_set["ref"]):
        np.testing.assert_allclose(pred.embedding[k], r.embedding, atol=ATOL)
        if pred.codes is not None:
            assert bytes(pack_codes(pred.codes[k : k + 1])[0]) == r.code


def test_the_serving_stages_agree(case_set):
    """Encoding -> Fusion -> Hashing as the deployments run them, one study alone and in a batch."""
    from lungsearch.data import load_study
    from lungsearch.serving import pipeline

    cfg, model, records = case_set["cfg"], case_set["model"], case_set["records"]
    items = [pipeline.prepare_study(load_study(r, hmac_key=KEY), r.report or None, cfg, model) for r in records]

    def run(batch):
        feats = pipeline.encode_batch(model, batch)
        fused = pipeline.fuse_batch(model, feats)
        codes = [
            pipeline.hash_code(model, hash_logits=f["hash_logits"])
            if "hash_logits" in feats[k]
            else pipeline.hash_code(model, embedding=f["embedding"])
            for k, f in enumerate(fused)
        ]
        return [f["embedding"] for f in fused], codes

    for k, item in enumerate(items):
        (emb,), (code,) = run([item])
        _assert_same(case_set["ref"][k], emb, code, f"serving, case {k} alone")
    embs, codes = run(items[:5])
    for k in range(5):
        _assert_same(case_set["ref"][k], embs[k], codes[k], f"serving, case {k} in a batch of 5")


def test_one_excerpt_rule():
    from lungsearch import inference
    from lungsearch.serving import pipeline
    from lungsearch.training import indexing

    text = "word " * 400
    assert pipeline.report_excerpt(text) == inference.report_excerpt(text)
    assert pipeline.EXCERPT_CHARS == indexing.EXCERPT_CHARS == inference.EXCERPT_CHARS
    assert len(inference.report_excerpt(text)) <= inference.EXCERPT_CHARS + 2


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("batch_size,actors", [(1, 1), (5, 2), (None, None)])
def test_build_index_stores_the_reference(case_set, ray_cluster, batch_size, actors):
    from lungsearch.data import load_study
    from lungsearch.inference import deidentify_report, report_excerpt
    from lungsearch.store import MilvusStore
    from lungsearch.training.indexing import build_index, record_case_key

    tmp, card, records = case_set["tmp"], case_set["card"], case_set["records"]
    uri = str(tmp / f"index-{batch_size}-{actors}.db")
    kw = {} if batch_size is None else {"batch_size": batch_size, "actors": actors}
    thumbs = tmp / f"thumbs-{batch_size}-{actors}.sqlite"
    rep = build_index(
        card.ref, registry_root=tmp / "art", milvus_uri=uri, hmac_key=KEY, progress=False, thumbnails=thumbs, **kw
    )
    assert rep.ok and rep.cases == len(records)
    from lungsearch.web.thumbs import ThumbnailStore

    assert ThumbnailStore(thumbs).count(card.profile) == len(records)  # the page can draw every indexed case
    store = MilvusStore(uri)
    try:
        for k, rec in enumerate(records):
            row = store.get(card.profile, card.version, record_case_key(KEY, rec, load_study(rec, hmac_key=KEY)))
            _assert_same(
                case_set["ref"][k], row.embedding, row.code, f"build_index batch={batch_size} actors={actors}, case {k}"
            )
            assert row.report_excerpt == report_excerpt(deidentify_report(rec.report or "").text)
    finally:
        store.close()
