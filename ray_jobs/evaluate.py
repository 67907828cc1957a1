"""Evaluate a registered model on its profile's test split and write the report folder.

    python ray_jobs/evaluate.py --config configs/cxr-cnn.yaml            # the live (else newest) cxr-cnn
    python ray_jobs/evaluate.py --config cxr-cnn --model cxr-cnn@20261124-195301-3f2a1b

The split is recomputed from the model card's config (same seed = same patient-disjoint split).
Output: metrics.json, roc.png, pr.png, confusion.png, retrieval.png, report.md, report.html.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="profile name or YAML path (names the profile)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the card's config (e.g. data.root=...)")
    p.add_argument("--model", default=None, help="registry ref profile[@version] (default: the profile's live model)")
    p.add_argument("--registry", default=None, help="registry root (default LUNGSEARCH_ARTIFACTS_DIR)")
    p.add_argument(
        "--report-dir", default=None, help="output folder (default artifacts/reports/<profile>/<version>-eval)"
    )
    p.add_argument("--address", default=None, help="Ray address (data preparation uses Ray Data)")
    args = p.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lungsearch.config import load_profile
    from lungsearch.runtime import init_ray
    from lungsearch.training.pipeline import evaluate_registered

    cfg = load_profile(args.config)
    init_ray(args.address if args.address is not None else os.environ.get("RAY_ADDRESS", None))
    ev, out_dir = evaluate_registered(
        args.model or cfg.profile, registry_root=args.registry, report_dir=args.report_dir, overrides=args.overrides
    )
    version = json.loads((out_dir / "metrics.json").read_text())["provenance"].get("model_version")
    print(
        json.dumps(
            {
                "profile": cfg.profile,
                "model": f"{cfg.profile}@{version}",
                "version": version,
                "report_dir": str(out_dir),
                "metrics": {k: round(v, 4) for k, v in sorted(ev.metrics.items())},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
