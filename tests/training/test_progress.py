"""Epoch lines reach the person waiting: the worker appends, the caller's follower formats them."""

from __future__ import annotations

import threading
import time

from lungsearch.training import progress


def test_follow_reports_each_new_epoch_line_once(tmp_path):
    path = tmp_path / "run" / progress.PROGRESS_FILE
    progress.append(path, {"profile": "old", "stage": "train", "epoch": 1, "epochs": 2})  # an earlier attempt
    got: list[str] = []
    stop = threading.Event()
    t = progress.follow(path, got.append, stop, poll_s=0.05)
    progress.append(
        path,
        {
            "profile": "cxr-hash",
            "stage": "hash",
            "epoch": 3,
            "epochs": 6,
            "train_loss": 0.4123,
            "monitor": "val_map10",
            "monitor_value": 0.51,
            "samples_per_s": 41.2,
            "seconds_left": 126,
        },
    )
    with open(path, "a") as fh:
        fh.write('{"profile": "half')  # a line the worker has not finished writing
    time.sleep(0.3)
    stop.set()
    t.join(2)
    assert got == ["cxr-hash  hash 3/6  loss 0.4123  val_map10 0.51  41 samples/s  ~2.1 min left"]


def test_reporting_is_scoped():
    assert progress.current_reporter() is None
    with progress.reporting(print):
        assert progress.current_reporter() is print
    assert progress.current_reporter() is None


def test_format_line_without_optional_numbers():
    assert (
        progress.format_line({"profile": "ct-ild", "stage": "train", "epoch": 1, "epochs": 6, "seconds_left": 20})
        == "ct-ild  train 1/6  ~20 s left"
    )
