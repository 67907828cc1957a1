"""Shared helpers for the benchmarks: timing, provenance, machine facts, JSON and tables.

Every benchmark measures its contenders side by side in one run (interleaved where it can), since
these machines are shared and noisy: absolute times move, ratios hold.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "latency_stats",
    "time_calls",
    "time_interleaved",
    "copy_bandwidth",
    "rss_bytes",
    "provenance",
    "write_json",
    "format_table",
]


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min in milliseconds, and the sample count."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
    }


def time_calls(fn: Callable[[int], Any], n: int, *, warmup: int = 3) -> list[float]:
    """Call ``fn(i)`` for i in range(n) after ``warmup`` untimed calls; per-call seconds."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def time_interleaved(fns: dict[str, Callable[[int], Any]], n: int, *, warmup: int = 3) -> dict[str, list[float]]:
    """Time several contenders on the same inputs, alternating per input (same noise for all)."""
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(n):
        # Rotate the order so no contender always runs right after the same neighbour.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t = time.perf_counter()
            fns[name](i)
            out[name].append(time.perf_counter() - t)
    return out


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Measured single-thread memory copy bandwidth in bytes/s (bytes copied per second, best of
    ``repeats``): the yardstick for "how close to memory speed is a scan"."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(benchmark: str, *, seed: int, argv: Sequence[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Who/what/where of a benchmark run, stored beside its numbers."""
    import lungsearch

    return {
        "benchmark": benchmark,
        "command": " ".join(
            [os.path.basename(sys.executable), "-m", f"benchmarks.{benchmark}", *(argv or sys.argv[1:])]
        ),
        "lungsearch_version": getattr(lungsearch, "__version__", ""),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": seed,
        "synthetic_data": True,
        **extra,
    }


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (creating folders); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")
    return p


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
