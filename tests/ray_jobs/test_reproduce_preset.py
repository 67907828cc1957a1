"""The harness's paper-2 and preset parts on made-up per-case outcomes: Table 3 read on the
validation split (queries = validation, gallery = training cases), LDC-Model against every
baseline trained, paper 4's per-dataset probe claims, and --preset's argument checks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lungsearch.evaluation.percase import to_json
from ray_jobs.reproduce import _claims, _downstream_claims, _EvalView, _page, main

N = 150


def _clf(p_right: float, seed: int, n_cls: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    y = np.arange(N) % n_cls
    right = rng.random(N) < p_right
    pred = np.where(right, y, (y + 1 + rng.integers(0, n_cls - 1, N)) % n_cls)
    probs = np.full((N, n_cls), 0.05)
    probs[np.arange(N), pred] = 0.85
    return {"labels": y, "probs": probs / probs.sum(1, keepdims=True)}


def _chance() -> dict:
    y = np.arange(N) % 4
    probs = np.full((N, 4), 1e-9)
    probs[:, 0] = 1.0
    return {"chance (random ranking, exact; majority class; AUC 0.5)": {"labels": y, "probs": probs}}


def test_eval_view_reads_the_validation_split_against_the_training_cases():
    s = SimpleNamespace(train=["t1", "t2", "t3"], val=["v1", "v2"], test=["q1"], gallery=["t1", "t2", "t3", "v1", "v2"])
    val = _EvalView(s, "val")
    assert val.test == ["v1", "v2"] and val.gallery == ["t1", "t2", "t3"] and val.train is s.train and val.val is s.val
    test = _EvalView(s, "test")
    assert test.test == ["q1"] and test.gallery == s.gallery
    with pytest.raises(ValueError):
        _EvalView(s, "train")


def test_cnn_claims_compare_ldc_with_every_trained_baseline():
    runs = {
        "LDC-Model (ours)": [{"outcome": _clf(0.9, s)} for s in range(3)],
        "VGG16 (from scratch)": [{"outcome": _clf(0.4, 10 + s)} for s in range(3)],
        "MobileNetV2 (ImageNet weights)": [{"outcome": _clf(0.9, 20 + s)} for s in range(3)],
    }
    got = {c["claim"]: c for c in _claims("cxr-cnn", runs, _chance(), {}, N, 300, [], main="LDC-Model (ours)")}
    assert got["paper 2 Table 3: LDC-Model beats VGG16 (from scratch) on accuracy"]["verdict"] == "yes"
    assert (
        got["paper 2 Table 3: LDC-Model beats MobileNetV2 (ImageNet weights) on accuracy"]["verdict"] == "inconclusive"
    )
    assert not any("ResNet18" in c for c in got)


def test_page_says_validation_split_and_matches_published_rows_by_name():
    runs = {"LDC-Model (ours)": [to_json(_clf(0.9, 1))], "VGG16 (from scratch)": [to_json(_clf(0.5, 2))]}
    sec = {
        "profile": "cxr-cnn",
        "paper": 2,
        "data_kind": "REAL",
        "n_test": N,
        "n_gallery": 450,
        "eval_split": "val",
        "dataset": "real data: source=covid19-radiography",
        "command": "c",
        "seconds": 1.0,
        "config": "configs/paper/2.yaml",
        "overrides": ["data.root=/d"],
        "outcomes": runs,
        "references": {k: to_json(v) for k, v in _chance().items()},
        "collapsed": {},
        "claims": [],
        "notes": [],
        "complete": True,
    }
    page = _page(
        [sec], {"written": "now", "command": "c", "run_dir": "r", "seeds": 1, "machine": "m", "status": "s"}, 50
    )
    assert (
        "Validation split (the paper's Table 3 reading; it also drove "
        f"early stopping) {N} cases (queries), gallery 450 (train)" in page
    )
    row = next(line for line in page.splitlines() if line.startswith("| VGG16 (from scratch) |"))
    assert "acc 0.702" in row  # the paper's (ImageNet) VGG16 number beside ours


def test_downstream_probe_claims_per_dataset():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    good = np.stack([1 - (0.2 + 0.6 * y), 0.2 + 0.6 * y], 1)
    noise = rng.random((N, 1))
    bad = np.concatenate([1 - noise, noise], 1)
    outs = {
        f"probe pretrained {f}": [to_json({"labels": y, "probs": good, "n_labelled": 5})] for f in ("1%", "10%", "100%")
    }
    outs.update(
        {
            f"probe random init {f}": [to_json({"labels": y, "probs": bad, "n_labelled": 5})]
            for f in ("1%", "10%", "100%")
        }
    )
    sec = {"downstream": {"rsna": {"n_test": N, "source": "rsna-pneumonia", "metric": "auc", "outcomes": outs}}}
    claims = _downstream_claims(sec, 300)
    assert len(claims) == 3 and all(c["verdict"] == "yes" for c in claims)
    assert claims[0]["claim"].startswith(
        "paper 4 Table 1 (rsna): the pretrained encoder's probe beats a random-init one's at 1%"
    )


def test_preset_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--preset", "paper/2-covid19-radiography"])
    assert e.value.code == 2 and "data.root=<" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--preset", "paper/2-covid19-radiography", "--quick", "data.root=/"])
    assert e.value.code == 2 and "does not combine" in capsys.readouterr().err


@pytest.mark.slow
def test_preset_runs_end_to_end_with_probe_datasets(tmp_path, monkeypatch):
    """``reproduce --preset paper/4-mimic-cxr`` on fixture trees (MIMIC-CXR, RSNA, COVIDx), tiny
    parts and one epoch, in this process (local backend): the run folder has the in-domain table,
    one probe table per probe dataset given, the claims per dataset, and says the missing one."""
    import json

    from lungsearch import constants
    from tests.data.conftest import make_dicom
    from tests.data.test_presets import _covidx_tree, _mimic_tree, _rsna_tree

    _mimic_tree(tmp_path / "mimic", n=40)
    _rsna_tree(tmp_path / "rsna", make_dicom)
    _covidx_tree(tmp_path / "covidx")
    monkeypatch.setattr(constants, "TRAIN_BACKEND", "local")
    monkeypatch.setattr(constants, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(constants, "ARTIFACTS_DIR", tmp_path / "art")
    run = tmp_path / "run"
    rc = main(
        [
            "--preset",
            "paper/4-mimic-cxr",
            f"data.root={tmp_path / 'mimic'}",
            f"preset.probes.rsna.root={tmp_path / 'rsna'}",
            f"preset.probes.covidx.root={tmp_path / 'covidx'}",
            "data.image_size=32",
            "model.image_encoder={name: vit, params: {patch: 16, layers: 1, heads: 2, hidden: 32, mlp: 64}}",
            "model.text_encoder={name: hashed, params: {dim: 32}}",
            "train.epochs=1",
            "train.use_gpu=false",
            "train.gpus_per_worker=0",
            "train.cpus_per_worker=1",
            "train.batch_size=16",
            "--seeds",
            "1",
            "--boot",
            "50",
            "--run-dir",
            str(run),
        ]
    )
    assert rc == 0
    sec = json.loads((run / "cxr-clip.outcomes.json").read_text())
    assert set(sec["downstream"]) == {"rsna", "covidx"} and sec["downstream"]["covidx"]["metric"] == "accuracy"
    assert set(sec["downstream"]["rsna"]["outcomes"]) == {
        f"probe {e} {f}" for e in ("pretrained", "random init") for f in ("1%", "10%", "100%")
    }
    claims = [c["claim"] for c in sec["claims"]]
    assert sum(c.startswith("paper 4 Table 1 (rsna)") for c in claims) == 3
    page = (run / "results.md").read_text()
    assert "Linear probes on rsna (rsna-pneumonia" in page and "Linear probes on covidx (covidx" in page
    assert "probe chexpert not run (no preset.probes.chexpert.root)" in page and "Data: REAL" in page
