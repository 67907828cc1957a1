"""Phantom side of the verdict harness: the signal-strength knob, a dying or stalled generator
worker failing the run (never blocking it), and the reference rows (oracle > chance) on phantoms."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from lungsearch.data import phantoms
from lungsearch.errors import LungsearchError


def _img(root, rec):
    return np.asarray(Image.open(rec.image_paths[0]), dtype=np.float32)


def test_signal_knob_scales_findings_only(tmp_path):
    a = phantoms.generate("cxr4", 8, tmp_path / "a", seed=5, size=48, workers=1)
    z = phantoms.generate("cxr4", 8, tmp_path / "z", seed=5, size=48, workers=1, signal=0.0)
    d = phantoms.generate("cxr4", 8, tmp_path / "d", seed=5, size=48, workers=1, signal=1.0)
    ra, rz, rd = (phantoms.read_manifest(p) for p in (a, z, d))
    for x, y, w in zip(ra, rz, rd):
        assert np.array_equal(_img(a, x), _img(d, w))  # signal=1 is the default phantom, byte for byte
        diff = np.abs(_img(a, x) - _img(z, y)).mean()
        if x.labels[0] == "Normal":
            assert diff == 0.0  # no finding to scale: nuisance is never touched
        else:
            assert diff > 0.0
    assert '"signal": 0.0' in (z / "phantom.json").read_text()
    with pytest.raises(Exception, match="signal"):
        phantoms.generate("cxr4", 2, tmp_path / "bad", size=48, signal=-1)


def test_dead_worker_fails_the_run(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(LungsearchError) as exc:
        phantoms.generate("cxr4", 8, tmp_path / "dead", size=32, workers=2, _faults={3: "exit"})
    assert exc.value.code == "phantom_worker_died"
    assert time.monotonic() - t0 < 120
    assert not (tmp_path / "dead" / "manifest.jsonl").exists()


def test_stalled_worker_fails_the_run(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(LungsearchError) as exc:
        phantoms.generate("cxr4", 8, tmp_path / "stuck", size=32, workers=2, stall_timeout_s=12, _faults={2: "hang"})
    assert exc.value.code == "phantom_worker_stalled"
    assert time.monotonic() - t0 < 120


def _table(kind: str, profile: str, tmp_path, n: int):
    from lungsearch.config import load_profile
    from lungsearch.training.cases import prepare_cases

    root = phantoms.generate(kind, n, tmp_path / kind, seed=0, size=64, workers=1)
    cfg = load_profile(profile, ["data.image_size=32"])
    recs = phantoms.read_manifest(root)
    from lungsearch.data.datasets._base import map_labels

    recs = [r for r in recs if map_labels(r.labels, cfg.data.targets) is not None]
    table = prepare_cases(cfg, recs, use_ray=False, cache_dir=tmp_path / "cache")
    ids = list(table.case_ids)
    cut1, cut2 = int(0.6 * len(ids)), int(0.8 * len(ids))
    return table.select(ids[:cut1]), table.select(ids[cut2:]), table.select(ids[:cut2])


@pytest.mark.parametrize("kind,profile", [("cxr4", "cxr-cnn"), ("cxr", "cxr-report")])
def test_oracle_and_references_on_phantoms(kind, profile, tmp_path):
    from lungsearch import metrics as M
    from lungsearch.evaluation.baselines import reference_rows
    from lungsearch.evaluation.chance import per_query_chance
    from lungsearch.evaluation.percase import scorer
    from lungsearch.evaluation.stats import compare

    train, test, gallery = _table(kind, profile, tmp_path, 60)
    refs = reference_rows(train, test, gallery)
    assert "oracle (generator ground truth)" in refs and "kNN on 16x16 pixels" in refs
    assert ("TF-IDF + logistic regression (report text)" in refs) == (kind == "cxr")
    rel = M.label_relevance(test.labels, gallery.labels)
    chance = {"ap10": per_query_chance(rel, 10)["ap"]}
    oracle = refs["oracle (generator ground truth)"]
    c = compare(
        "oracle beats chance",
        "map10",
        "oracle",
        "chance",
        [scorer(oracle, "map10")],
        [scorer(chance, "map10")],
        len(test),
    )
    assert c.verdict == "yes", c.numbers()
    acc = scorer(oracle, "accuracy")(np.arange(len(test)))
    majority = np.bincount(train.labels).max() / len(train)
    assert acc > majority
