import io

import numpy as np
import pytest
from PIL import Image
from serving_fixtures import make_study

from lungsearch.errors import InvalidRequestError
from lungsearch.serving import pipeline


def _items(models, profile, studies, texts=None):
    model, cfg = models[profile]
    texts = texts or [None] * len(studies)
    return [pipeline.prepare_study(s, t, cfg, model) for s, t in zip(studies, texts)]


def test_prepare_study_shapes(tiny_models):
    model, cfg = tiny_models["cxr-hash"]
    item = pipeline.prepare_study(make_study("cxr"), None, cfg, model)
    assert item.pixels.shape == (1, 1, 64, 64) and item.pixels.dtype == np.float32
    assert item.text is None and item.radiomics is None and (item.modality, item.view) == ("cxr", "PA")
    with pytest.raises(InvalidRequestError):
        pipeline.prepare_study(None, "", cfg, model)
    with pytest.raises(InvalidRequestError):  # cxr-hash has no text encoder
        pipeline.prepare_study(None, "a report", cfg, model)


def test_batched_encoding_equals_one_at_a_time_cxr(tiny_models):
    model, _ = tiny_models["cxr-hash"]
    items = _items(tiny_models, "cxr-hash", [make_study("cxr", seed=i) for i in range(3)])
    batched = pipeline.encode_batch(model, items)
    assert set(batched[0]) >= {"image_pooled", "hash_logits", "logits"}
    assert batched[0]["hash_logits"].shape == (64,)
    for i, item in enumerate(items):
        single = pipeline.encode_batch(model, [item])[0]
        for k in single:
            np.testing.assert_allclose(batched[i][k], single[k], rtol=1e-4, atol=1e-5)
    assert not np.allclose(batched[0]["image_pooled"], batched[1]["image_pooled"])


def test_ct_slices_are_pooled_per_case_and_radiomics_extracted(tiny_models):
    model, _ = tiny_models["ct-ild"]
    studies = [make_study("ct", slices=3, seed=1), make_study("ct", slices=2, seed=2)]
    items = _items(tiny_models, "ct-ild", studies)
    assert items[0].pixels.shape == (3, 1, 64, 64) and items[0].radiomics.shape == (model.radiomics.out_dim,)
    assert np.isfinite(items[0].radiomics).mean() > 0.5  # the lung mask found an ROI
    batched = pipeline.encode_batch(model, items)
    import torch

    with torch.inference_mode():
        per_slice = model.encode(images=torch.from_numpy(items[0].pixels))["image_pooled"].numpy()
    np.testing.assert_allclose(batched[0]["image_pooled"], per_slice.mean(0), rtol=1e-4, atol=1e-5)
    single = pipeline.encode_batch(model, [items[1]])[0]
    np.testing.assert_allclose(batched[1]["radiomics"], single["radiomics"], rtol=1e-5)
    np.testing.assert_allclose(batched[1]["image_pooled"], single["image_pooled"], rtol=1e-4, atol=1e-5)


def test_fuse_embeddings_probabilities_and_mixed_batches(tiny_models):
    model, _ = tiny_models["cxr-clip"]
    items = _items(
        tiny_models,
        "cxr-clip",
        [make_study("cxr", seed=0), None],
        texts=["small nodule right upper lobe", "cardiomegaly"],
    )
    feats = pipeline.encode_batch(model, items)
    assert "image_pooled" in feats[0] and "image_pooled" not in feats[1] and "report_pooled" in feats[1]
    fused = pipeline.fuse_batch(model, feats)  # two kinds of query in one batch: fused group by group
    for f in fused:
        assert abs(np.linalg.norm(f["embedding"]) - 1) < 1e-4
        assert abs(f["probabilities"].sum() - 1) < 1e-4  # cxr-clip is single-label: softmax
    hm, _ = tiny_models["cxr-hash"]
    f2 = pipeline.fuse_batch(hm, pipeline.encode_batch(hm, _items(tiny_models, "cxr-hash", [make_study("cxr")])))[0]
    assert ((f2["probabilities"] > 0) & (f2["probabilities"] < 1)).all() and f2["probabilities"].sum() != pytest.approx(
        1
    )


def test_hash_codes_learned_and_lsh(tiny_models):
    from lungsearch.models.hashing import pack_codes

    hm, _ = tiny_models["cxr-hash"]
    feats = pipeline.encode_batch(hm, _items(tiny_models, "cxr-hash", [make_study("cxr")]))[0]
    fused = pipeline.fuse_batch(hm, [feats])[0]
    from_logits = pipeline.hash_code(hm, hash_logits=feats["hash_logits"])
    assert (
        from_logits == pack_codes(np.where(feats["hash_logits"] >= 0, 1, -1)[None]).tobytes() and len(from_logits) == 8
    )
    assert pipeline.hash_code(hm, embedding=fused["embedding"]) == from_logits  # sign(tanh(bz)) == sign(z)
    with pytest.raises(InvalidRequestError):
        pipeline.hash_code(hm, hash_logits=np.ones(32))

    cm, _ = tiny_models["ct-ild"]
    emb = np.random.default_rng(0).normal(size=cm.embedding_dim).astype(np.float32)
    import torch

    expect = pack_codes(cm.lsh.codes(torch.from_numpy(emb[None]))).tobytes()
    assert pipeline.hash_code(cm, embedding=emb) == expect
    clip, _ = tiny_models["cxr-clip"]
    with pytest.raises(InvalidRequestError):
        pipeline.hash_code(clip, embedding=emb)


def test_explain(tiny_models):
    model, _ = tiny_models["cxr-hash"]
    (item,) = _items(tiny_models, "cxr-hash", [make_study("cxr")])
    heat, label = pipeline.explain_study(model, item, "")
    assert heat.shape == (64, 64) and heat.min() >= 0 and heat.max() <= 1 and label in model.targets
    heat2, label2 = pipeline.explain_study(model, item, "Nodule")
    assert label2 == "Nodule"
    with pytest.raises(InvalidRequestError):
        pipeline.explain_study(model, item, "NotALabel")
    ct, _ = tiny_models["ct-ild"]
    (ct_item,) = _items(tiny_models, "ct-ild", [make_study("ct", slices=3)])
    heat3, label3 = pipeline.explain_study(ct, ct_item, "")
    assert heat3.shape == (64, 64) and label3 == ""  # no classifier: the map explains the embedding


def test_case_key_precedence():
    key = b"k" * 32
    png = make_study("cxr")
    a = pipeline.derive_case_key(key, study=png, source_id="ACC-1", image_bytes=[b"x"])
    assert a == pipeline.derive_case_key(key, study=png, source_id="ACC-1", image_bytes=[b"y"])
    assert len(a) == 32 and "ACC" not in a
    c1 = pipeline.derive_case_key(key, study=png, source_id="", image_bytes=[b"x"])
    assert c1 == pipeline.derive_case_key(key, study=png, source_id="", image_bytes=[b"x"]) != a
    assert c1 != pipeline.derive_case_key(key, study=png, source_id="", image_bytes=[b"y"])
    png.study_key = "s" * 32
    assert pipeline.derive_case_key(key, study=png, source_id="", image_bytes=[b"x"]) != c1
    assert pipeline.derive_case_key(b"other-key-" * 4, study=png, source_id="ACC-1", image_bytes=[]) != a


def test_knn_vote():
    vote = dict(
        pipeline.knn_vote(
            [["Nodule"], ["Nodule", "Effusion"], ["Normal"], ["Nodule"]], ["Normal", "Nodule", "Effusion", "Opacity"]
        )
    )
    assert vote == {"Normal": 0.25, "Nodule": 0.75, "Effusion": 0.25, "Opacity": 0.0}
    assert pipeline.knn_vote([], ["a"]) == [("a", 0.0)]
    assert [lab for lab, _ in pipeline.knn_vote([["x"]], ["a"])] == ["a", "x"]


def test_report_excerpt():
    assert pipeline.report_excerpt("  two\n lines \t here ") == "two lines here"
    long = "word " * 500
    ex = pipeline.report_excerpt(long, max_chars=50)
    assert len(ex) <= 52 and ex.endswith("…") and "\n" not in ex


def test_pngs():
    heat = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    g = Image.open(io.BytesIO(pipeline.heatmap_png(heat)))
    assert g.mode == "L" and g.size == (48, 64)
    assert np.asarray(g)[-1, -1] == 255 and np.asarray(g)[0, 0] == 0
    o = Image.open(io.BytesIO(pipeline.overlay_png(np.zeros((64, 48)), heat)))
    assert o.mode == "RGB" and o.size == (48, 64)
    with pytest.raises(InvalidRequestError):
        pipeline.overlay_png(np.zeros((10, 10)), heat)


def test_fuse_pads_token_sequences_of_different_lengths(tiny_models):
    model, _ = tiny_models["cxr-clip"]
    short = pipeline.StudyInput(pixels=None, text="nodule")
    long = pipeline.StudyInput(pixels=None, text="small nodule in the left lower lobe, no effusion, heart normal")
    fa, fb = pipeline.encode_batch(model, [short]), pipeline.encode_batch(model, [long])
    assert fa[0]["report_tokens"].shape != fb[0]["report_tokens"].shape
    together = pipeline.fuse_batch(model, [fa[0], fb[0]])  # requests from two batches fused as one
    alone = pipeline.fuse_batch(model, fa)[0]
    np.testing.assert_allclose(together[0]["embedding"], alone["embedding"], rtol=1e-4, atol=1e-5)


def test_top_label_prefers_the_head_then_the_neighbours_then_nothing():
    from lungsearch.serving.pipeline import top_label

    vote = [("normal", 0.2), ("ggo", 0.6), ("fibrosis", 0.6)]
    assert top_label([("normal", 0.1), ("ggo", 0.7), ("fibrosis", 0.2)], vote) == "ggo"
    assert top_label([], vote) == "ggo"  # no head: the most shared label, the earlier one on a tie
    assert top_label([], [("normal", 0.0), ("ggo", 0.0)]) == ""  # no neighbour carries a label
    assert top_label([], []) == ""
