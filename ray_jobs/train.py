"""Train a profile on Ray Train, evaluate it on the test split, write the report, register it.

    python ray_jobs/train.py --config configs/cxr-cnn.yaml [dotted.key=value ...] [--folds K]

Re-running the same command resumes the run from its last checkpoint (same config = same run
name under ``train.storage_path``). Submit it to a cluster with ``lungsearch jobs submit train``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout or a job's working_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="profile name or YAML path")
    p.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    p.add_argument(
        "--folds", type=int, default=None, help="K-fold cross-validation (default: data.folds; 1 = one split)"
    )
    p.add_argument(
        "--run-name", default=None, help="Ray Train run name (default <profile>-<config hash>); same name resumes"
    )
    p.add_argument(
        "--storage-path", default=None, help="checkpoint root (local path or s3://, gs://); default train.storage_path"
    )
    p.add_argument("--fresh", action="store_true", help="discard an existing run of that name instead of resuming")
    p.add_argument("--no-register", action="store_true", help="do not add the model to the registry")
    p.add_argument("--registry", default=None, help="registry root (default LUNGSEARCH_ARTIFACTS_DIR)")
    p.add_argument("--report-dir", default=None, help="report folder (default artifacts/reports/<profile>/<version>)")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures to recover from the last checkpoint")
    p.add_argument("--set-live", action="store_true", help="make the new version the live one")
    p.add_argument(
        "--address", default=None, help="Ray address (default: LUNGSEARCH_RAY_ADDRESS, or the job's cluster)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lungsearch.config import load_profile
    from lungsearch.registry import set_live
    from lungsearch.runtime import init_ray
    from lungsearch.training.pipeline import run_kfold, train_and_evaluate

    cfg = load_profile(args.config, args.overrides)
    # Inside `ray job submit` RAY_ADDRESS points at the cluster; locally a Ray is started.
    init_ray(args.address if args.address is not None else os.environ.get("RAY_ADDRESS", None))
    folds = args.folds if args.folds is not None else cfg.data.folds
    if folds and folds > 1:
        out = run_kfold(
            cfg,
            folds,
            storage_path=args.storage_path,
            resume=not args.fresh,
            report_dir=args.report_dir,
            max_failures=args.max_failures,
        )
        print(
            json.dumps(
                {
                    "profile": cfg.profile,
                    "folds": folds,
                    "report_dir": str(out.report_dir),
                    "summary": {k: {"mean": m, "std": s} for k, (m, s) in out.summary.items()},
                },
                indent=2,
            )
        )
        return 0
    out = train_and_evaluate(
        cfg,
        run_name=args.run_name,
        storage_path=args.storage_path,
        resume=not args.fresh,
        register=not args.no_register,
        registry_root=args.registry,
        report_dir=args.report_dir,
        max_failures=args.max_failures,
    )
    if out.card is not None and args.set_live:
        set_live(cfg.profile, out.card.version, root=args.registry)
    print(
        json.dumps(
            {
                "profile": cfg.profile,
                "model": out.card.ref if out.card else None,
                "report_dir": str(out.report_dir),
                "run_name": out.fit.run_name,
                "resumed": out.fit.resumed,
                "epochs": len(out.fit.history),
                "seconds": round(out.seconds, 1),
                "synthetic_data": out.splits.train.synthetic,
                "metrics": {k: round(v, 4) for k, v in sorted(out.metrics.items())},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
