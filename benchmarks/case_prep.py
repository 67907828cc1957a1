"""Case preparation (decode + preprocess [+ radiomics]) before training: Ray Data ``map_batches``
across the cluster's CPUs vs a plain in-process loop, on phantom data, cache disabled.

This is the choice ``lungsearch.training.prepare_cases`` makes (Ray Data by default): it pays
Ray Data's start-up to use every core, and the arrays are then cached so later runs skip it.

    python -m benchmarks.case_prep                                   # cxr 300 cases + ct 60 series
    python -m benchmarks.case_prep --out benchmarks/results/case_prep.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["main"]


def _time(cfg, records, use_ray: bool) -> float:
    from lungsearch.training.cases import prepare_cases

    t0 = time.perf_counter()
    prepare_cases(cfg, records, use_ray=use_ray, cache_dir="")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cxr", type=int, default=300, help="CXR phantom cases (cxr-report preprocessing)")
    p.add_argument("--ct", type=int, default=60, help="CT phantom series (ct-ild preprocessing + radiomics)")
    p.add_argument("--data-root", default=None, help="phantom cache folder (default <DATA_DIR>/phantoms)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from benchmarks._util import provenance, write_json

    prov = provenance("case_prep", seed=0, argv=argv)  # taken first: the load average at the start

    from lungsearch.config import load_profile
    from lungsearch.data import load_records
    from lungsearch.runtime import init_ray

    init_ray(address="", num_cpus=2, log_to_driver=False)
    rows = []
    for profile, n in (("cxr-report", args.cxr), ("ct-ild", args.ct)):
        if n <= 0:
            continue
        ov = [f"data.phantom.n={n}"] + ([f"data.root={args.data_root}"] if args.data_root else [])
        cfg = load_profile(profile, ov)
        records = load_records(cfg.data)  # generated once (not timed)
        plain = _time(cfg, records, use_ray=False)
        ray_s = _time(cfg, records, use_ray=True)
        rows.append(
            {
                "profile": profile,
                "cases": len(records),
                "plain_loop_s": plain,
                "ray_data_s": ray_s,
                "speedup_ray_over_plain": plain / ray_s,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "case_prep", "data": "phantoms (synthetic)", "rows": rows, "provenance": prov}
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
