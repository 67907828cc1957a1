"""`lungsearch data ...`: generate phantom datasets, list dataset sources, inspect an image file."""

from __future__ import annotations

import argparse
import json
import time

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "data",
        help="phantom datasets, dataset sources, image inspection",
        description="Data-layer tools. Phantom data is synthetic: say so wherever a number comes from it.",
    )
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = dsub.add_parser(
        "phantoms",
        help="generate a synthetic dataset (cxr + real reports, cxr4, ct DICOM)",
        description="Generate phantom cases: PNGs or DICOM series plus manifest.jsonl and phantom.json.",
        epilog="example: lungsearch data phantoms --kind cxr --n 2000 --out data/phantoms/cxr --seed 0",
    )
    p.add_argument("--kind", required=True, choices=["cxr", "cxr4", "ct"])
    p.add_argument("--n", type=int, required=True, help="number of cases")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--slices", type=int, default=8, help="slices per CT series (ct only)")
    p.add_argument(
        "--signal", type=float, default=1.0, help="finding strength (1 = calibrated default; docs/phantoms.md)"
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_phantoms)

    s = dsub.add_parser(
        "sources", help="list the dataset adapters (data.source names)", epilog="example: lungsearch data sources"
    )
    s.set_defaults(func=_sources)

    c = dsub.add_parser(
        "check-phantoms",
        help="quality numbers of a phantom folder (image-stats baseline, CT mask Dice)",
        epilog="example: lungsearch data check-phantoms data/phantoms/cxr",
    )
    c.add_argument("root")
    c.set_defaults(func=_check)

    i = dsub.add_parser(
        "inspect",
        help="decode image files and print PHI-free facts (or the typed error)",
        epilog="example: lungsearch data inspect scan.dcm chest.png",
    )
    i.add_argument("files", nargs="+")
    i.set_defaults(func=_inspect)
    d.set_defaults(func=lambda a: (d.print_help(), 2)[1])


def _phantoms(args: argparse.Namespace) -> int:
    from lungsearch.data import phantoms

    t0 = time.perf_counter()
    out = phantoms.generate(
        args.kind,
        args.n,
        args.out,
        seed=args.seed,
        size=args.size,
        slices=args.slices,
        signal=args.signal,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(
        json.dumps(
            {
                "out": str(out),
                "kind": args.kind,
                "n": args.n,
                "seed": args.seed,
                "signal": args.signal,
                "synthetic": True,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from lungsearch.data.phantoms._checks import check_phantoms

    print(json.dumps(check_phantoms(args.root), indent=2))
    return 0


def _sources(args: argparse.Namespace) -> int:
    from lungsearch.data.datasets import get_adapter, list_adapters

    for name in list_adapters():
        print(f"{name:22s} {get_adapter(name).description}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from lungsearch.data import read_image_frames
    from lungsearch.errors import LungsearchError

    rc = 0
    for f in args.files:
        try:
            frames = read_image_frames(Path(f).read_bytes())
        except LungsearchError as exc:
            print(json.dumps({"file": f, "error": type(exc).__name__, "code": exc.code, "message": exc.message}))
            rc = 1
            continue
        except OSError as exc:
            print(json.dumps({"file": f, "error": "OSError", "message": exc.strerror or str(exc)}))
            rc = 1
            continue
        im = frames[len(frames) // 2]
        px = im.pixels
        print(
            json.dumps(
                {
                    "file": f,
                    "frames": len(frames),
                    "shape": list(px.shape),
                    "modality": im.meta.modality,
                    "view": im.meta.view,
                    "format": im.meta.source_format,
                    "hu": im.meta.hu,
                    "spacing": im.meta.spacing,
                    "min": float(np.min(px)),
                    "max": float(np.max(px)),
                }
            )
        )
    return rc
