"""The 2-core budget of the demo configs: wall time of ``python ray_jobs/train.py --config
configs/<profile>.yaml`` (train + evaluate + report + register, a local Ray started by the job,
phantoms already generated) per profile, against the target of 5 minutes.

Each profile runs in a fresh subprocess with its own artifacts folder and a fresh run (``--fresh``),
one after the other; the 1-minute load average before and after is recorded, because on a shared
machine other jobs' load stretches wall time (the figure is only meaningful with it).

    python -m benchmarks.train_budget --out benchmarks/results/train_budget.json
    python -m benchmarks.train_budget --profiles cxr-cnn ct-ild
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lungsearch.jobs import job_summary

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 300.0


def run_profile(profile: str, overrides: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"lungsearch-budget-{profile}-") as art:
        env = dict(os.environ, LUNGSEARCH_ARTIFACTS_DIR=art, PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable,
            str(REPO / "ray_jobs" / "train.py"),
            "--config",
            str(REPO / "configs" / f"{profile}.yaml"),
            *overrides,
            f"train.storage_path={art}/runs",
            "--fresh",
        ]
        # Generate the phantoms first (a one-off cost of the first run on a machine, not training).
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"from lungsearch.config import load_profile; from lungsearch.data import load_records; "
                f"load_records(load_profile('{profile}', {overrides!r}).data)",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        wall = time.perf_counter() - t0
        summary = job_summary(proc.stdout)
    return {
        "profile": profile,
        "command": "python ray_jobs/train.py --config configs/%s.yaml %s" % (profile, " ".join(overrides)),
        "returncode": proc.returncode,
        "wall_s": wall,
        "within_target": proc.returncode == 0 and wall <= TARGET_S,
        "load_avg_1m_before": load0,
        "load_avg_1m_after": os.getloadavg()[0],
        "epochs": summary.get("epochs"),
        "metrics": {
            k: v
            for k, v in (summary.get("metrics") or {}).items()
            if k in ("test_accuracy", "test_auc", "test_map10", "test_top1_f1", "test_silhouette", "val_loss")
        },
        "error_tail": proc.stderr[-1500:] if proc.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", nargs="*", default=["cxr-report", "cxr-cnn", "ct-ild", "cxr-clip", "cxr-hash"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from benchmarks._util import provenance, write_json

    prov = provenance("train_budget", seed=0, argv=argv)  # taken first: the load average at the start
    rows = []
    for profile in args.profiles:
        rows.append(run_profile(profile, args.set, args.timeout))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "train_budget",
        "target_s": TARGET_S,
        "data": "phantoms (synthetic)",
        "rows": rows,
        "provenance": prov,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
