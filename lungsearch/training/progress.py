"""Training progress a person can watch: one line per epoch (stage, epoch, loss, the monitored metric,
samples/s, time left), from the Ray Train worker to whoever started the run.

Why a file: the worker runs in another process (on a cluster, another machine), and the demo starts
Ray with ``log_to_driver=False`` to keep its own output readable, so the worker's log lines never
reached the terminal: a fresh ``make demo`` printed nothing for up to 8.5 minutes. Rank 0 appends a
JSON line per epoch to ``<run folder>/progress.jsonl`` (:func:`append`); the process that called
``trainer.fit`` follows the file while it waits (:func:`follow`) and hands each line to the reporter
set with :func:`reporting` (default: none, so library use and ``--json`` stay quiet).

    with reporting(print):
        train_and_evaluate(cfg)   # prints "cxr-hash  hash 3/6  loss 0.412  val_map10 0.51  41 samples/s  ~2.1 min left"
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["PROGRESS_FILE", "append", "follow", "format_line", "reporting", "current_reporter"]

PROGRESS_FILE = "progress.jsonl"

_reporter: list[Callable[[str], None] | None] = [None]


@contextlib.contextmanager
def reporting(callback: Callable[[str], None] | None) -> Iterator[None]:
    """Send formatted epoch lines of every run trained in this block to ``callback``."""
    before = _reporter[0]
    _reporter[0] = callback
    try:
        yield
    finally:
        _reporter[0] = before


def current_reporter() -> Callable[[str], None] | None:
    return _reporter[0]


def append(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one epoch record (numbers and short names only: no case data)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=float) + "\n")


def format_line(rec: dict[str, Any]) -> str:
    """``profile  stage e/E  loss x  <monitor> y  n samples/s  ~t min left``."""
    parts = [
        f"{rec.get('profile', '')}",
        f"{rec.get('stage', '')} {int(rec.get('epoch', 0))}/{int(rec.get('epochs', 0))}",
    ]
    if rec.get("train_loss") is not None:
        parts.append(f"loss {rec['train_loss']:.4g}")
    if rec.get("monitor") and rec.get("monitor_value") is not None:
        parts.append(f"{rec['monitor']} {rec['monitor_value']:.4g}")
    if rec.get("samples_per_s"):
        parts.append(f"{rec['samples_per_s']:.0f} samples/s")
    left = rec.get("seconds_left")
    if left is not None:
        parts.append(f"~{left / 60:.1f} min left" if left >= 60 else f"~{left:.0f} s left")
    return "  ".join(p for p in parts if p)


def follow(
    path: str | os.PathLike, callback: Callable[[str], None], stop: threading.Event, poll_s: float = 1.0
) -> threading.Thread:
    """Start a daemon thread calling ``callback(format_line(record))`` for each line appended to
    ``path`` from now on (lines already there belong to an earlier attempt), until ``stop`` is set."""
    p = Path(path)
    start = p.stat().st_size if p.exists() else 0

    def run() -> None:
        pos = start
        while True:
            done = stop.wait(poll_s)
            try:
                with open(p, encoding="utf-8") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
            except FileNotFoundError:
                chunk = ""
            # only whole lines: the worker may be half-way through writing one
            whole, _, _ = chunk.rpartition("\n")
            if whole:
                pos += len(whole.encode("utf-8")) + 1
                for line in whole.splitlines():
                    try:
                        callback(format_line(json.loads(line)))
                    except (ValueError, TypeError):
                        continue
            if done:
                return

    t = threading.Thread(target=run, name="training-progress", daemon=True)
    t.start()
    return t
