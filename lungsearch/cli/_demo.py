"""`lungsearch demo`: the main job end to end on the embedded default."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="phantoms -> train -> evaluate -> index -> serve -> example queries",
        description="Run the main job end to end on phantom data, a local Ray and milvus-lite.",
        epilog="example: lungsearch demo",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    missing = ["phantom data (issue 3)", "models (issue 4)", "training jobs (issue 5)", "serving (issue 6)", "SDK (issue 7)"]
    print("lungsearch demo: not yet: " + ", ".join(missing))
    return 0
