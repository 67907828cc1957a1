"""`ray_jobs/train.py` as users run it, on phantoms and a local Ray of its own: it writes
checkpoints, a model card and a report; killed mid-run (SIGKILL to its whole process group) and
started again, it resumes from the last checkpoint. Then `ray_jobs/evaluate.py` re-evaluates the
registered model. Small on purpose: 32 phantom cases at 32 px, 4 epochs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lungsearch.jobs import job_summary

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.phantom.n=32",
    "data.phantom.size=64",
    "data.image_size=32",
    "train.epochs=4",
    "train.batch_size=8",
    "train.early_stopping_patience=0",
    "train.torch_threads=1",
]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(
        os.environ,
        LUNGSEARCH_DATA_DIR=str(tmp_path / "data"),
        LUNGSEARCH_ARTIFACTS_DIR=str(tmp_path / "art"),
        LUNGSEARCH_RAY_NUM_CPUS="2",
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("LUNGSEARCH_RAY_ADDRESS", None)
    env.pop("RAY_ADDRESS", None)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.ray
def test_train_job_killed_then_resumed(tmp_path):
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        str(REPO / "ray_jobs" / "train.py"),
        "--config",
        str(REPO / "configs" / "cxr-cnn.yaml"),
        *TINY,
        f"train.storage_path={runs}",
        "--max-failures",
        "0",
    ]
    env = _env(tmp_path)
    log = open(tmp_path / "first.log", "w")
    # Own session: the kill reaches the driver and the Ray processes it started, nothing else.
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            ckpts = [p for p in runs.glob("*/checkpoint_*") if p.is_dir()]
            if ckpts:
                break
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.5)
    finally:
        _kill_group(first)
        log.close()
    n_before = len([p for p in runs.glob("*/checkpoint_*") if p.is_dir()])
    assert 1 <= n_before < 4 or "done" not in (tmp_path / "first.log").read_text()
    assert not list((tmp_path / "art").glob("cxr-cnn/*/model_card.yaml")), "killed before registering"

    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = job_summary(second.stdout)
    assert out["resumed"] is True and out["epochs"] == 4 and out["synthetic_data"] is True
    # The resumed attempt trained only the epochs the killed one had not checkpointed.
    trained_now = second.stderr.count("stage train epoch") + second.stdout.count("stage train epoch")
    assert trained_now <= 4 - n_before + 1
    card_path = next((tmp_path / "art" / "cxr-cnn").glob("*/model_card.yaml"))
    card = yaml.safe_load(card_path.read_text())
    assert card["synthetic_data"] is True and card["extra"]["resumed"] is True and "test_accuracy" in card["metrics"]
    report = Path(out["report_dir"])
    for name in ("metrics.json", "report.md", "roc.png", "confusion.png"):
        assert (report / name).is_file(), name
    assert "PHANTOM (synthetic)" in (report / "report.md").read_text()

    ev = subprocess.run(
        [sys.executable, str(REPO / "ray_jobs" / "evaluate.py"), "--config", "cxr-cnn", "--model", out["model"]],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    again = job_summary(ev.stdout)
    assert again["metrics"]["accuracy"] == pytest.approx(
        out["metrics"]["test_accuracy"], abs=1e-6
    )  # same split, same model
