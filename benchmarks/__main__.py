"""``python -m benchmarks [--quick] [NAME ...]`` (``make bench``): run benchmarks one after another,
each in its own process (each starts and stops its own Ray, and one that fails does not stop the
rest), and say which finished. With no NAME: every benchmark that runs on this machine's CPUs
(``gpu_sizing`` needs a GPU and is run by name). ``--quick`` passes ``--quick`` to those that have it
(small sizes, no result file); without it each writes its JSON under ``benchmarks/results/``.

Full runs take from minutes (serve_latency, load) to more than an hour (ranking at 1M cases): pick
names for a partial run, e.g. ``make bench BENCH="serve_latency load"``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

#: In the order a full run goes: the cheap serving ones first, the hour-long scale runs last.
CPU_BENCHMARKS = (
    "serve_latency",
    "load",
    "encode_throughput",
    "ingest",
    "dicom_receive",
    "masks",
    "report_deid",
    "case_prep",
    "sparse_gate",
    "train_overhead",
    "train_budget",
    "ranking",
)
ALL_BENCHMARKS = (*CPU_BENCHMARKS, "gpu_sizing")


def _has_quick(name: str) -> bool:
    return '"--quick"' in (Path(__file__).resolve().parent / f"{name}.py").read_text()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: {' '.join(CPU_BENCHMARKS)})")
    ap.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks that have it")
    args = ap.parse_args(argv)
    names = args.names or list(CPU_BENCHMARKS)
    unknown = [n for n in names if n not in ALL_BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(ALL_BENCHMARKS)}")
    outcome: list[tuple[str, int, float]] = []
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if args.quick and _has_quick(name) else [])
        print(f"== {' '.join(cmd[1:])} (load average {os.getloadavg()[0]:.2f})", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        outcome.append((name, rc, time.perf_counter() - t))
    print("\nbenchmark            exit  seconds")
    for name, rc, secs in outcome:
        print(f"{name:<20} {rc:>4}  {secs:7.0f}")
    return 0 if all(rc == 0 for _, rc, _ in outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
