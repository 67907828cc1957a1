"""``LUNGSEARCH_TRAIN_BACKEND=local``: the same worker loop in this process, no Ray (a single-GPU
machine without Ray, such as the paper-scale GPU reproduction's). Trains, checkpoints, resumes."""

from __future__ import annotations

import sys

import pytest

from lungsearch import constants

TINY = [
    "data.phantom.n=24",
    "data.phantom.size=64",
    "data.image_size=32",
    "train.epochs=2",
    "train.batch_size=8",
    "train.torch_threads=1",
]


def test_local_backend_trains_and_resumes_without_ray(tmp_path, monkeypatch):
    from lungsearch.config import load_profile
    from lungsearch.training import progress
    from lungsearch.training.pipeline import load_dataset, make_splits
    from lungsearch.training.trainer import fit

    monkeypatch.setattr(constants, "TRAIN_BACKEND", "local")
    started_ray = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    cfg = load_profile("cxr-cnn", TINY + [f"data.root={tmp_path / 'data'}", f"train.storage_path={tmp_path / 'runs'}"])
    ds = load_dataset(cfg)
    splits = make_splits(cfg, ds)
    lines: list[str] = []
    with progress.reporting(lines.append):
        first = fit(cfg, splits.train, splits.val, run_name="local-test")
    assert [h["epoch"] for h in first.history] == [0.0, 1.0] and first.resumed is False
    assert any("train 2/2" in ln for ln in lines)
    again = fit(cfg, splits.train, splits.val, run_name="local-test")
    assert again.resumed is True and len(again.history) == 2  # nothing trained twice
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert (a == b).all()
    # no Ray was started for any of it
    assert ("ray" in sys.modules and sys.modules["ray"].is_initialized()) == started_ray


def test_local_backend_runs_one_worker(tmp_path, monkeypatch):
    from lungsearch.config import load_profile
    from lungsearch.training.trainer import TrainingError, fit

    monkeypatch.setattr(constants, "TRAIN_BACKEND", "local")
    cfg = load_profile("cxr-cnn", TINY + ["train.num_workers=2", f"train.storage_path={tmp_path}"])
    with pytest.raises(TrainingError, match="one worker"):
        fit(cfg, None, None, run_name="x")
