"""Ray Train end to end on the shared local cluster: a run that fails mid-way resumes from its last
checkpoint when started again with the same name, and a finished run re-started is a no-op."""

from __future__ import annotations

import numpy as np
import pytest
from lstrain_helpers import synthetic_table, tiny_cfg

from lungsearch.training.trainer import TrainingError, default_run_name, fit, storage_uri


def test_run_names_and_storage(tmp_path):
    cfg = tiny_cfg("cxr-cnn")
    assert default_run_name(cfg) == f"cxr-cnn-{cfg.fingerprint()[:8]}"
    assert default_run_name(cfg, "fold1of4").endswith("-fold1of4")
    assert storage_uri(cfg, "s3://bucket/runs") == "s3://bucket/runs"
    assert storage_uri(cfg, str(tmp_path / "x")) == str((tmp_path / "x").resolve())


@pytest.mark.ray
def test_fit_fails_then_resumes_from_checkpoint(ray_cluster, tmp_path):
    cfg = tiny_cfg("cxr-cnn", "train.epochs=3", "data.augment=false")
    tr, va = synthetic_table(cfg, 16, 1), synthetic_table(cfg, 8, 2)
    with pytest.raises(TrainingError, match="cxr-cnn-resume"):
        fit(cfg, tr, va, run_name="cxr-cnn-resume", storage_path=str(tmp_path), resume=False, fail_after_epoch=2)
    assert (
        len([p for p in (tmp_path / "cxr-cnn-resume").glob("checkpoint_*") if p.is_dir()]) == 2
    )  # epochs 0 and 1 checkpointed

    res = fit(cfg, tr, va, run_name="cxr-cnn-resume", storage_path=str(tmp_path))
    assert res.resumed
    # One history: epochs 0-1 from the first attempt, epoch 2 from the resumed one.
    assert [int(h["epoch"]) for h in res.history] == [0, 1, 2]
    assert res.checkpoint_path.startswith(str(tmp_path))
    assert res.model.training is False
    # The model returned is the last stage's best epoch, restored from the final checkpoint.
    mon = cfg.train.monitor  # the config's monitor (val_f1 since issue 14)
    assert res.final_val_metrics()[mon] == max(h[mon] for h in res.history)


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_ddp_two_stage(ray_cluster, tmp_path):
    """DDP through prepare_model with 2 workers (gloo on CPU), re-wrapped per stage as the frozen
    parts change (cxr-hash: classifier, then hash with the classifier frozen)."""
    profile = "cxr-hash"
    cfg = tiny_cfg(profile, "train.epochs=1", "train.num_workers=2", "train.cpus_per_worker=0.5", "data.augment=false")
    tr, va = synthetic_table(cfg, 16, 1), synthetic_table(cfg, 8, 2)
    res = fit(cfg, tr, va, run_name=f"{profile}-ddp", storage_path=str(tmp_path), resume=False)
    assert [h["stage_name"] for h in res.history] == list(cfg.train.stages)
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    # Each worker trained on its own shard: half the samples per epoch.
    assert all(h["samples"] <= 8 for h in res.history if h["stage_name"] != "probe")


def test_one_process_per_run(tmp_path):
    from lungsearch.training.trainer import _run_lock

    with _run_lock(tmp_path / "runs" / "r1", "r1"):
        with pytest.raises(TrainingError, match="in progress") as err:
            with _run_lock(tmp_path / "runs" / "r1", "r1"):
                pass
        assert err.value.code == "run_in_progress"
        with _run_lock(tmp_path / "runs" / "r2", "r2"):  # another run is independent
            pass
    with _run_lock(tmp_path / "runs" / "r1", "r1"):  # released
        pass
