"""Phantom datasets: determinism, labels from the real reports, DICOM CT round trip, and the
image being imperfect evidence (all numbers here are on synthetic data)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lungsearch.data import lung_mask, phantoms, read_study
from lungsearch.data.phantoms._checks import check_phantoms, simple_image_stats
from lungsearch.data.phantoms._reports import load_reports, parse_mesh
from lungsearch.errors import ConfigError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "phantom.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def cxr_root(tmp_path_factory):
    return phantoms.generate("cxr", 12, tmp_path_factory.mktemp("cxr"), seed=3, size=64)


def test_manifest_and_provenance(cxr_root):
    recs = phantoms.read_manifest(cxr_root)
    assert len(recs) == 12 and all(r.synthetic and r.modality == "cxr" and r.report for r in recs)
    assert all(Path(r.image_paths[0]).is_file() for r in recs)
    prov = json.loads((cxr_root / "phantom.json").read_text())
    assert prov["synthetic"] is True and prov["kind"] == "cxr" and prov["seed"] == 3
    assert set(r.labels[0] for r in recs) <= set(phantoms.CXR_TARGETS)


def test_labels_match_the_source_reports(cxr_root):
    by_uid = {c.uid: c for c in load_reports()}
    for r in phantoms.read_manifest(cxr_root):
        src = by_uid[r.group]
        assert r.labels == src.labels and r.report == src.text
        assert tuple(r.extra["mesh"]) == src.mesh


def test_mesh_parsing_keeps_side_zone_severity():
    f = parse_mesh("Pulmonary Atelectasis/base/left/mild")
    assert (f.label, f.side, f.zone, f.severity) == ("Atelectasis", "left", "lower", 0.65)
    assert parse_mesh("Opacity/mediastinum/posterior/round") is None
    assert parse_mesh("Calcified Granuloma/lung/upper lobe/right").zone == "upper"
    assert parse_mesh("Costophrenic Angle/left/blunted").label == "Effusion"
    assert parse_mesh("Thoracic Vertebrae/degenerative") is None


def test_deterministic_and_seed_sensitive(tmp_path, cxr_root):
    again = phantoms.generate("cxr", 12, tmp_path / "again", seed=3, size=64)
    assert _digest(again) == _digest(cxr_root)
    other = phantoms.generate("cxr", 12, tmp_path / "other", seed=4, size=64)
    assert _digest(other) != _digest(cxr_root)


def test_same_files_with_a_process_pool(tmp_path):
    one = phantoms.generate("cxr4", 8, tmp_path / "one", seed=1, size=48, workers=1)
    two = phantoms.generate("cxr4", 8, tmp_path / "two", seed=1, size=48, workers=2)
    assert _digest(one) == _digest(two)
    labels = [r.labels[0] for r in phantoms.read_manifest(one)]
    assert sorted(labels) == sorted(list(phantoms.CXR4_TARGETS) * 2)  # balanced


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        phantoms.generate("mri", 4, tmp_path)
    with pytest.raises(ConfigError):
        phantoms.generate("cxr", 0, tmp_path)


def test_ct_series_read_back_through_dicom(tmp_path):
    import pydicom

    root = phantoms.generate("ct", 4, tmp_path / "ct", seed=0, size=64, slices=3)
    recs = phantoms.read_manifest(root)
    assert [r.labels[0] for r in recs] and all(r.modality == "ct" and len(r.image_paths) == 3 for r in recs)
    uids = set()
    for r in recs:
        # layout <class>/<case>/*.dcm (the ILD folder layout)
        assert Path(r.image_paths[0]).parent.parent.name == r.labels[0]
        ds = pydicom.dcmread(r.image_paths[0])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.RescaleIntercept == -1024
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        uids.update({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID})
        files = [Path(p).read_bytes() for p in reversed(r.image_paths)]
        study = read_study(files, hmac_key=b"k" * 16)
        vol = study.volume()
        assert vol.shape == (3, 64, 64) and study.images[0].meta.hu
        assert study.images[0].meta.spacing == pytest.approx((360 / 64, 360 / 64))
        with np.load(r.extra["mask_path"]) as z:
            truth = np.unpackbits(z["lung"], axis=-1)[..., :64].astype(bool)
        # read_study sorts by position (feet first); the generator wrote apex first
        truth = truth[::-1]
        assert -950 < vol[truth].mean() < -500 and vol.min() >= -1024 and vol.max() <= 3071
        pred = np.stack([lung_mask(s, modality="ct") for s in vol])
        dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
        assert dice >= 0.9, (r.labels[0], dice)
    assert len(uids) == 12  # unique study, series and instance UIDs per case
    report = check_phantoms(root)
    assert report["synthetic"] and report["dice_min"] >= 0.9


def test_image_alone_is_imperfect_evidence(tmp_path):
    """Logistic regression on simple image statistics: clearly above chance, far from perfect;
    the report text (TF-IDF) carries more. Synthetic data, small sample: loose bounds."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = phantoms.generate("cxr", 400, tmp_path / "lr", seed=7, size=64, workers=1)
    recs = phantoms.read_manifest(root)
    X = np.array([simple_image_stats(r.image_paths[0]) for r in recs])
    y = np.array([r.labels[0] for r in recs])
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced"))
    prob = cross_val_predict(clf, X, y, cv=cv, method="predict_proba")
    classes = np.unique(y)
    auc = roc_auc_score(y, prob, multi_class="ovr", labels=classes)
    bal = balanced_accuracy_score(y, classes[prob.argmax(1)])
    assert 0.57 < auc < 0.9 and 1 / len(classes) + 0.05 < bal < 0.7, (auc, bal)
    text = make_pipeline(TfidfVectorizer(min_df=2), LogisticRegression(max_iter=3000, C=10, class_weight="balanced"))
    tpred = cross_val_predict(text, [r.report for r in recs], y, cv=cv)
    assert balanced_accuracy_score(y, tpred) > bal + 0.15


def test_the_signal_knob_reaches_the_images_through_the_config(tmp_path):
    """data.phantom.signal: a stronger signal gives other images (and another cache folder); the
    default keeps the fingerprint and the folder of configs written before the knob existed."""
    import numpy as np
    import pydicom

    from lungsearch.config import PhantomConfig, load_profile
    from lungsearch.data.datasets.phantom import PhantomAdapter, phantom_dir

    cfg = load_profile("ct-ild", ["data.phantom.n=4", "data.phantom.size=64", "data.phantom.slices=2"])
    strong = cfg.with_overrides(["data.phantom.signal=3"])
    assert (
        cfg.fingerprint()
        == load_profile(
            "ct-ild", ["data.phantom.n=4", "data.phantom.size=64", "data.phantom.slices=2", "data.phantom.signal=1"]
        ).fingerprint()
    )
    assert strong.fingerprint() != cfg.fingerprint()
    pc = cfg.data.phantom
    assert phantom_dir(pc, tmp_path) == phantom_dir(PhantomConfig(**pc.model_dump(exclude={"signal"})), tmp_path)
    assert phantom_dir(strong.data.phantom, tmp_path) != phantom_dir(pc, tmp_path)

    def pixels(c):
        d = c.data.model_copy(update={"root": str(tmp_path)})
        recs = PhantomAdapter().load(d)
        return np.stack([pydicom.dcmread(r.image_paths[0]).pixel_array for r in recs]).astype(np.float32)

    a, b = pixels(cfg), pixels(strong)
    assert a.shape == b.shape and np.abs(a - b).mean() > 1.0  # same cases, other findings' contrast
