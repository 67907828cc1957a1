"""Fill the search index of a model version: Ray Data batch inference over the profile's dataset (or
a folder of DICOM/PNG/JPEG) into the Milvus store, idempotent by case key, with a final count check.

    python ray_jobs/build_index.py --config cxr-hash                      # live cxr-hash model, its dataset
    python ray_jobs/build_index.py --config cxr-hash --model cxr-hash@<version> --milvus-uri http://milvus:19530
    python ray_jobs/build_index.py --config ct-ild --folder /data/ild-ct

Run it again and it updates the same rows (no duplicates). GPU actors are used when the cluster has GPUs.
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
    p.add_argument("--model", default=None, help="registry ref profile[@version] (default: the profile's live model)")
    p.add_argument("--folder", default=None, help="index this folder instead of the profile's dataset")
    p.add_argument(
        "--milvus-uri", default=None, help="milvus-lite .db path or server URI (default LUNGSEARCH_MILVUS_URI)"
    )
    p.add_argument("--registry", default=None, help="registry root (default LUNGSEARCH_ARTIFACTS_DIR)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto", help="embedding actors on GPUs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--address", default=None, help="Ray address")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from lungsearch import constants
    from lungsearch.config import load_profile
    from lungsearch.runtime import init_ray
    from lungsearch.training.indexing import build_index

    cfg = load_profile(args.config)
    init_ray(args.address if args.address is not None else os.environ.get("RAY_ADDRESS", None))
    rep = build_index(
        args.model or cfg.profile,
        folder=args.folder,
        milvus_uri=args.milvus_uri,
        milvus_token=constants.MILVUS_TOKEN,
        registry_root=args.registry,
        batch_size=args.batch_size,
        use_gpu=None if args.gpu == "auto" else args.gpu == "yes",
        progress=not args.no_progress,
    )
    print(
        json.dumps(
            {
                "profile": rep.profile,
                "version": rep.version,
                "collection": rep.collection,
                "cases": rep.cases,
                "inserted": rep.inserted,
                "updated": rep.updated,
                "count_in_store": rep.count_in_store,
                "seconds": round(rep.seconds, 1),
                "cases_per_s": round(rep.cases_per_s, 1),
                "device": rep.device,
            },
            indent=2,
        )
    )
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
