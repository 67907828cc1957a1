"""`lungsearch train | evaluate | index`: the training, evaluation and index-building jobs on a local
(or attached, LUNGSEARCH_RAY_ADDRESS) Ray. For a remote cluster use `lungsearch jobs submit`."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train a profile (Ray Train), evaluate it, register it",
        description="Train on Ray Train, evaluate on the test split, write the report, register the model. "
        "Re-running the same command resumes from the last checkpoint.",
        epilog="example: lungsearch train --config configs/cxr-cnn.yaml train.epochs=2 --folds 4",
    )
    t.add_argument("--config", required=True, help="profile name or YAML path")
    t.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    t.add_argument("--folds", type=int, default=None, help="K-fold cross-validation")
    t.add_argument("--run-name", default=None)
    t.add_argument("--storage-path", default=None)
    t.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    t.add_argument("--no-register", action="store_true")
    t.add_argument("--set-live", action="store_true", help="make the new version live")
    t.add_argument("--reproduce", action="store_true", help="also train the paper's comparison variants (all tables)")
    t.set_defaults(func=_train)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a registered model on its test split (report folder)",
        epilog="example: lungsearch evaluate --model cxr-cnn",
    )
    e.add_argument("--model", required=True, help="profile or profile@version")
    e.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the card's config")
    e.add_argument("--report-dir", default=None)
    e.set_defaults(func=_evaluate)

    i = sub.add_parser(
        "index",
        help="embed a dataset or folder with a registered model into the Milvus store",
        epilog="example: lungsearch index --model cxr-hash --milvus-uri data/lungsearch.db",
    )
    i.add_argument("--model", required=True, help="profile or profile@version")
    i.add_argument("--folder", default=None, help="a folder of DICOM/PNG/JPEG (default: the profile's dataset)")
    i.add_argument("--milvus-uri", default=None)
    i.add_argument("--batch-size", type=int, default=32)
    i.add_argument("--no-progress", action="store_true")
    i.set_defaults(func=_index)


def _parse(args: argparse.Namespace):
    from lungsearch.config import load_profile

    return load_profile(args.config, args.overrides)


def _train(args: argparse.Namespace) -> int:
    import sys

    from lungsearch.training.progress import reporting

    # One line per epoch on a terminal (stderr: stdout stays the JSON result); quiet otherwise.
    tty = sys.stderr.isatty()
    with reporting((lambda line: print(line, file=sys.stderr, flush=True)) if tty else None):
        return _train_quietly_or_not(args)


def _train_quietly_or_not(args: argparse.Namespace) -> int:
    from lungsearch.registry import set_live
    from lungsearch.training.pipeline import reproduce_profile, run_kfold, train_and_evaluate

    cfg = _parse(args)
    folds = args.folds if args.folds is not None else cfg.data.folds
    if args.reproduce:
        res = reproduce_profile(cfg, storage_path=args.storage_path, resume=not args.fresh)
        print(
            json.dumps(
                {"report_dir": str(res["report_dir"]), "rows": res["rows"], "probes": res["probes"]},
                indent=2,
                default=str,
            )
        )
        return 0
    if folds and folds > 1:
        out = run_kfold(cfg, folds, storage_path=args.storage_path, resume=not args.fresh)
        print(
            json.dumps(
                {
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
    )
    if out.card is not None and args.set_live:
        set_live(cfg.profile, out.card.version)
    print(
        json.dumps(
            {
                "model": out.card.ref if out.card else None,
                "report_dir": str(out.report_dir),
                "metrics": {k: round(v, 4) for k, v in sorted(out.metrics.items())},
            },
            indent=2,
        )
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from lungsearch.training.pipeline import evaluate_registered

    ev, out_dir = evaluate_registered(args.model, report_dir=args.report_dir, overrides=args.overrides)
    print(
        json.dumps(
            {"report_dir": str(out_dir), "metrics": {k: round(v, 4) for k, v in sorted(ev.metrics.items())}}, indent=2
        )
    )
    return 0


def _index(args: argparse.Namespace) -> int:
    from lungsearch import constants
    from lungsearch.training.indexing import build_index

    rep = build_index(
        args.model,
        folder=args.folder,
        milvus_uri=args.milvus_uri,
        milvus_token=constants.MILVUS_TOKEN,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print(
        json.dumps(
            {
                "collection": rep.collection,
                "cases": rep.cases,
                "inserted": rep.inserted,
                "updated": rep.updated,
                "count_in_store": rep.count_in_store,
                "seconds": round(rep.seconds, 1),
            },
            indent=2,
        )
    )
    return 0 if rep.ok else 1
