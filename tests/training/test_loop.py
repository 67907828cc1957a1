"""The worker loop, run in-process (``run_local``): stages, early stopping, resume, determinism."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from lstrain_helpers import synthetic_table, tiny_cfg

from lungsearch.training.loop import LocalContext, build_optimizer, run_local, validation_metrics
from lungsearch.training.recipes import Stage, stages_for


def _config(cfg, train, **extra):
    return {
        "cfg": cfg.model_dump(mode="json"),
        "stages": [asdict(s) for s in stages_for(cfg)],
        "radiomics_fit": train.radiomics,
        **extra,
    }


def _run(cfg, n_train=16, n_val=8, slices=2, **extra):
    tr, va = synthetic_table(cfg, n_train, 1, slices), synthetic_table(cfg, n_val, 2, slices)
    return run_local(_config(cfg, tr, **extra), {"train": tr.rows(), "val": va.rows()}), tr, va


@pytest.mark.parametrize(
    "profile,stages",
    [
        ("cxr-cnn", ["train"]),
        ("cxr-report", ["train"]),
        pytest.param("ct-ild", ["train"], marks=pytest.mark.slow),
        pytest.param("cxr-hash", ["classifier", "hash"], marks=pytest.mark.slow),
        ("cxr-clip", ["pretrain", "probe"]),
    ],
)
def test_every_profile_trains_through_its_stages(profile, stages):
    torch.set_num_threads(1)
    cfg = tiny_cfg(profile, "train.epochs=1")
    ctx, _, _ = _run(cfg)
    assert [int(r["stage"]) for r in ctx.reports] == list(range(len(stages)))
    assert ctx.reports[-1]["done"] == 1.0
    for r in ctx.reports:
        assert np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) and r["samples"] >= 2
    if profile == "cxr-hash":
        assert "val_map10" in ctx.reports[-1]  # the hash stage's monitor
    if profile in ("cxr-cnn", "cxr-report"):
        assert {"val_accuracy", "val_auc", "val_map10"} <= set(ctx.reports[-1])


def test_learns_and_is_deterministic():
    torch.set_num_threads(1)
    cfg = tiny_cfg("cxr-cnn", "train.epochs=4", "train.lr=0.003", "data.augment=false")
    a, _, _ = _run(cfg, n_train=32, n_val=16)
    b, _, _ = _run(cfg, n_train=32, n_val=16)
    assert [r["val_loss"] for r in a.reports] == [r["val_loss"] for r in b.reports]
    assert a.reports[-1]["train_loss"] < a.reports[0]["train_loss"]


def test_early_stopping_and_best_epoch_restored(tmp_path):
    torch.set_num_threads(1)
    # lr ~ 0: the monitored val_loss cannot improve after the first epoch -> stop after patience.
    cfg = tiny_cfg(
        "cxr-cnn",
        "train.epochs=6",
        "train.lr=1e-12",
        "train.early_stopping_patience=2",
        "train.monitor=val_loss",
        "train.monitor_mode=min",
        "data.augment=false",
    )
    ctx, _, _ = _run(cfg, n_train=12, n_val=6)
    assert len(ctx.reports) == 3 and ctx.reports[-1]["done"] == 1.0


def test_resume_continues_at_next_epoch(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg("cxr-cnn", "train.epochs=3", "data.augment=false")
    tr, va = synthetic_table(cfg, 16, 1), synthetic_table(cfg, 8, 2)
    data = {"train": tr.rows(), "val": va.rows()}
    first = LocalContext(data, str(tmp_path))
    with pytest.raises(RuntimeError, match="injected"):
        run_local(_config(cfg, tr, fail_after_epoch=2), data, context=first)
    assert [int(r["epoch"]) for r in first.reports] == [0, 1]
    second = run_local(_config(cfg, tr), data, str(tmp_path / "b"), resume_from=first.last_checkpoint)
    assert [int(r["epoch"]) for r in second.reports] == [2]
    # Same result as an uninterrupted run: optimizer state and data order are restored.
    straight = run_local(_config(cfg, tr), data)
    assert second.reports[-1]["val_loss"] == pytest.approx(straight.reports[-1]["val_loss"], rel=1e-5)
    # A finished run started again reports its final state once, without training.
    again = run_local(_config(cfg, tr), data, resume_from=second.last_checkpoint)
    assert len(again.reports) == 1 and again.reports[0]["done"] == 1.0


def test_two_stage_resume_across_stage_boundary(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg("cxr-clip", "train.epochs=1")
    tr, va = synthetic_table(cfg, 12, 1), synthetic_table(cfg, 6, 2)
    data = {"train": tr.rows(), "val": va.rows()}
    first = LocalContext(data, str(tmp_path))
    with pytest.raises(RuntimeError):
        run_local(_config(cfg, tr, fail_after_epoch=1), data, context=first)
    second = run_local(_config(cfg, tr), data, resume_from=first.last_checkpoint)
    assert [int(r["stage"]) for r in second.reports] == [1]  # the probe stage only


def test_build_optimizer_lr_multipliers():
    model = torch.nn.ModuleDict(
        {"hasher": torch.nn.ModuleDict({"hash_global": torch.nn.Linear(2, 2)}), "body": torch.nn.Linear(2, 2)}
    )
    cfg = tiny_cfg("cxr-hash", "train.optimizer=sgd")
    stage = stages_for(cfg)[1]
    opt = build_optimizer(model, stage, cfg)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == [pytest.approx(cfg.train.lr), pytest.approx(10 * cfg.train.lr)]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


def test_validation_metrics_leave_one_out():
    cfg = tiny_cfg("cxr-cnn")
    labels = np.array([0, 0, 1, 1])
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    probs = np.eye(4)[[0, 0, 1, 1]]
    m = validation_metrics({"embedding": emb, "probs": probs}, labels, cfg, Stage("train", 1, "val_loss", "min", 1e-3))
    assert (
        m["val_accuracy"] == 1.0 and m["val_map10"] == 1.0 and m["val_top1_f1"] == pytest.approx(0.5)
    )  # 2 of 4 classes present
