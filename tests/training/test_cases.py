"""Case tables: labels, the decode/preprocess cache, augmentation equivalence, radiomics."""

from __future__ import annotations

import numpy as np
import pytest
from lstrain_helpers import synthetic_table, tiny_cfg

import lungsearch.data as data
from lungsearch.config import load_profile
from lungsearch.data.types import CaseRecord, DecodedImage, ImageMeta, Study
from lungsearch.errors import ConfigError, InvalidRequestError
from lungsearch.training.cases import CaseTable, augment_images, data_fingerprint, encode_labels, prepare_cases


def _rec(i, labels, modality="cxr", report="r"):
    return CaseRecord(
        case_id=f"c{i}",
        image_paths=(f"/x/c{i}.png",),
        labels=tuple(labels),
        group=f"g{i // 2}",
        report=report,
        modality=modality,
        synthetic=True,
    )


def test_encode_labels_single_and_multi():
    recs = [_rec(0, ["Opacity", "Nodule"]), _rec(1, ["Unknown"]), _rec(2, ["Normal"])]
    targets = ["Normal", "Opacity", "Nodule"]
    lab, hot, kept = encode_labels(recs, targets, multilabel=False)
    assert kept == [0, 2] and lab.tolist() == [1, 0] and hot.tolist() == [[0, 1, 0], [1, 0, 0]]
    lab, hot, kept = encode_labels(recs, targets, multilabel=True)
    assert kept == [0, 1, 2] and lab.tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    with pytest.raises(ConfigError):
        encode_labels([_rec(0, ["x"])], targets, multilabel=False)


def test_fingerprint_is_order_free_and_label_sensitive():
    a = [_rec(0, ["Normal"]), _rec(1, ["Opacity"])]
    assert data_fingerprint(a) == data_fingerprint(a[::-1])
    assert data_fingerprint(a) != data_fingerprint([_rec(0, ["Opacity"]), _rec(1, ["Opacity"])])


def _study(rng, modality, slices=1, size=40):
    if modality == "ct":
        imgs = [
            DecodedImage(
                pixels=rng.uniform(-1000, 200, (size, size)).astype(np.float32),
                meta=ImageMeta(modality="ct", view="AXIAL", hu=True, slice_position=float(k)),
            )
            for k in range(slices)
        ]
    else:
        imgs = [
            DecodedImage(
                pixels=rng.uniform(0, 1, (size, size)).astype(np.float32),
                meta=ImageMeta(modality="cxr", view="PA", source_format="png"),
            )
        ]
    return Study(images=imgs)


@pytest.mark.parametrize("modality,profile", [("cxr", "cxr-cnn"), ("ct", "ct-ild")])
def test_augment_equals_preprocess_train(modality, profile):
    """Augmenting the cached (non-augmented) input == preprocess_study(train=True) with the same draw."""
    cfg = load_profile(profile, ["data.image_size=32", "data.augment=true"])
    study = _study(np.random.default_rng(0), modality, slices=3 if modality == "ct" else 1)
    base = data.preprocess_study(study, cfg.data, train=False)
    want = data.preprocess_study(study, cfg.data, train=True, rng=np.random.default_rng(7))
    got = augment_images(base[None], np.array([base.shape[0]]), modality, np.random.default_rng(7))[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_prepare_cases_caches_and_computes_radiomics(tmp_path, monkeypatch):
    cfg = load_profile("ct-ild", ["data.image_size=32"])
    rng = np.random.default_rng(0)
    recs = [_rec(i, [cfg.data.targets[i % 4]], modality="ct", report=None) for i in range(6)]
    studies = {r.case_id: _study(rng, "ct", slices=2 + (i % 2)) for i, r in enumerate(recs)}
    calls = []

    def fake_load(record, *, hmac_key=None):
        calls.append(record.case_id)
        return studies[record.case_id]

    monkeypatch.setitem(vars(data), "load_study", fake_load)  # no lazy import of the real one
    t = prepare_cases(cfg, recs, use_ray=False, cache_dir=tmp_path)
    assert t.images.shape == (6, 3, 1, 32, 32) and t.n_slices.tolist() == [2, 3, 2, 3, 2, 3]
    assert not t.images[0, 2].any()  # padding slice stays zero
    assert t.radiomics.shape == (6, 42) and t.synthetic and t.reports == [""] * 6
    assert len(calls) == 6
    again = prepare_cases(cfg, recs, use_ray=False, cache_dir=tmp_path)
    assert len(calls) == 6  # served from the cache
    np.testing.assert_array_equal(again.images, t.images)
    np.testing.assert_array_equal(np.isnan(again.radiomics), np.isnan(t.radiomics))


def test_table_subset_concat_select():
    cfg = tiny_cfg("cxr-cnn")
    t = synthetic_table(cfg, 10)
    a, b = t.subset(range(4)), t.subset(range(4, 10))
    both = CaseTable.concat([a, b])
    np.testing.assert_array_equal(both.images, t.images)
    assert both.case_ids == t.case_ids
    sel = t.select(["c003", "c001"])
    assert sel.case_ids == ["c003", "c001"] and sel.labels.tolist() == [t.labels[3], t.labels[1]]
    with pytest.raises(InvalidRequestError):
        t.select(["nope"])
    rows = t.rows()
    assert rows[2]["index"] == 2 and rows[2]["image"].shape == (1, 1, 32, 32)
