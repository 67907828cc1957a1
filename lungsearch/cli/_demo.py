"""`lungsearch demo`: the main job end to end on the embedded default (see lungsearch/demo.py)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from lungsearch.demo import DEMO_PROFILES, SERVED_PROFILES

    p = sub.add_parser(
        "demo",
        help="phantoms -> train -> evaluate -> index -> serve -> example queries (synthetic data)",
        description="Run the main job end to end on phantom data, a local Ray and milvus-lite. "
        "Re-running reuses trained models and a complete index.",
        epilog="examples:\n  lungsearch demo\n  lungsearch demo --profile ct-ild --profile cxr-hash --fresh\n"
        "  lungsearch demo --set data.phantom.n=40 --set train.epochs=1   # a quick smoke run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--profile",
        action="append",
        default=None,
        metavar="NAME",
        help=f"profiles to train (repeatable; default: {' '.join(DEMO_PROFILES)})",
    )
    p.add_argument(
        "--serve",
        action="append",
        default=None,
        metavar="NAME",
        help=f"profiles to index and serve (default: {' '.join(SERVED_PROFILES)})",
    )
    p.add_argument("--workdir", default=None, help="demo outputs (default: $LUNGSEARCH_DATA_DIR/demo)")
    p.add_argument("--registry", default=None, help="model registry (default: $LUNGSEARCH_ARTIFACTS_DIR)")
    p.add_argument("--fresh", action="store_true", help="train and index again even if a matching model exists")
    p.add_argument("--port", type=int, default=0, help="gRPC port of the demo server (default: a free one)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="config override applied to every profile (repeatable), e.g. train.epochs=1",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungsearch import constants
    from lungsearch.demo import DEMO_PROFILES, SERVED_PROFILES, run_demo

    profiles = tuple(args.profile or DEMO_PROFILES)
    served = tuple(args.serve or [p for p in SERVED_PROFILES if p in profiles])
    run_demo(
        profiles,
        served,
        workdir=args.workdir or str(constants.DATA_DIR / "demo"),
        registry_root=args.registry,
        fresh=args.fresh,
        port=args.port,
        overrides=tuple(args.overrides),
    )
    return 0
