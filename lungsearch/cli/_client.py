"""Client commands of ``lungsearch``: ingest, search, classify, explain, models, activate, get, delete, health.

They talk to a running server through :mod:`lungsearch.client` (grpcio + protobuf only), print
tables in a terminal and JSON with ``--json``, and exit with a code that says what went wrong
(see ``EXIT_CODES``). The SDK is imported inside the commands, so ``lungsearch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungsearch import constants

__all__ = ["register", "EXIT_CODES"]

EXIT_OK = 0
EXIT_ERROR = 1  # the server failed, or anything not listed below
EXIT_USAGE = 2  # bad command line (argparse uses 2 as well)
EXIT_NOT_FOUND = 3  # unknown case key / model, or a local file that does not exist
EXIT_INVALID = 4  # the server rejected the input (bad image, empty report, PHI)
EXIT_AUTH = 5  # missing/invalid token, or the token's role may not do this
EXIT_UNAVAILABLE = 6  # server unreachable, not serving, or too slow (deadline): try again later
EXIT_LIMIT = 7  # a size limit was exceeded, or the server stayed overloaded
EXIT_REFUSED = 8  # a check refused the change (reindex: the regression gate)

#: Exit code -> meaning, as printed in every client command's --help.
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "server or unexpected error",
    EXIT_USAGE: "usage error",
    EXIT_NOT_FOUND: "not found (case, model or local file)",
    EXIT_INVALID: "input rejected (bad image/report; see the reason)",
    EXIT_AUTH: "authentication or permission denied",
    EXIT_UNAVAILABLE: "server unavailable, not serving, or deadline exceeded",
    EXIT_LIMIT: "size limit exceeded or server overloaded",
    EXIT_REFUSED: "refused by a check (reindex gate)",
}

_EXIT_HELP = "exit codes: " + ", ".join(f"{k} {v}" for k, v in EXIT_CODES.items())


# ---- argument plumbing -----------------------------------------------------------------------


def _connection_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument(
        "--target", default=constants.TARGET, help="gateway host:port (default: $LUNGSEARCH_TARGET or %(default)s)"
    )
    g.add_argument(
        "--token",
        default=None,
        help="bearer token (prefer --token-file or $LUNGSEARCH_TOKEN: arguments show up in `ps`)",
    )
    g.add_argument("--token-file", default=None, metavar="PATH", help="file holding the bearer token")
    g.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    g.add_argument("--ca-file", default=None, metavar="PEM", help="CA bundle to verify the server (implies --tls)")
    g.add_argument("--cert-file", default=None, metavar="PEM", help="client certificate, for mTLS")
    g.add_argument("--key-file", default=None, metavar="PEM", help="client private key, for mTLS")
    g.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="deadline per call, retries included (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")
    return p


def _model_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--model",
        default=None,
        metavar="PROFILE[@VERSION]",
        help="model to use (default: the server's default profile, live version)",
    )
    return p


def _query_parent(*, image_required: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        required=image_required,
        help="query image file (repeat, or give a folder, for a CT series)",
    )
    r = p.add_mutually_exclusive_group()
    r.add_argument("--report", default=None, metavar="TEXT", help="query report text")
    r.add_argument("--report-file", default=None, metavar="PATH", help="read the query report from a file")
    return p


def _add(sub, name: str, *, help: str, description: str, examples: Sequence[str], parents) -> argparse.ArgumentParser:
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + _EXIT_HELP
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the client commands to the ``lungsearch`` parser."""
    conn, model = _connection_parent(), _model_parent()

    p = _add(
        sub,
        "ingest",
        help="store images, folders or DICOM series (with reports and labels)",
        description=(
            "Ingest cases. A PNG/JPEG/DICOM file is one case; in a folder (walked recursively), the DICOM files\n"
            "of each directory form one series (streamed with IngestStream) unless --per-file, and every PNG/JPEG\n"
            "is its own case. A sidecar report is picked up: <image stem>.txt beside an image, report.txt in a\n"
            "series folder. --manifest reads JSON lines with image_paths, report, labels, case_id."
        ),
        examples=[
            "lungsearch ingest cxr/0001.png --report 'Small left effusion.' --labels Effusion",
            "lungsearch ingest studies/ --model ct-ild --workers 4",
            "lungsearch ingest --manifest data/phantoms/ct-1a2b/manifest.jsonl --json > ingested.json",
            "lungsearch ingest --dicomweb http://pacs:8042/dicom-web --study 1.2.840.113619.2.55.3",
        ],
        parents=[conn, model],
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files and/or folders")
    r = p.add_mutually_exclusive_group()
    r.add_argument("--report", default=None, metavar="TEXT", help="report text for every case ingested")
    r.add_argument("--report-file", default=None, metavar="PATH", help="read that report from a file")
    p.add_argument("--labels", default=None, metavar="A,B", help="comma-separated labels for every case ingested")
    p.add_argument(
        "--source-id",
        default=None,
        metavar="ID",
        help="your study identifier (e.g. accession number) for a single PNG/JPEG case; hashed by the server",
    )
    p.add_argument("--manifest", default=None, metavar="JSONL", help="ingest the cases listed in a JSON-lines manifest")
    p.add_argument("--per-file", action="store_true", help="each DICOM file is its own case (no series grouping)")
    p.add_argument("--workers", type=int, default=2, help="concurrent uploads (default: %(default)s)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed case")
    p.add_argument(
        "--dicomweb",
        default=None,
        metavar="URL",
        help="pull --study from this DICOMweb server (QIDO-RS + WADO-RS) and ingest each series",
    )
    p.add_argument("--study", default=None, metavar="UID", help="StudyInstanceUID to pull with --dicomweb")
    p.set_defaults(func=cmd_ingest)

    p = _add(
        sub,
        "search",
        help="find similar cases by image, report text, or both",
        description="The stored cases most similar to a query image, a query report, or both.",
        examples=[
            "lungsearch search --image query.png --top-k 5",
            "lungsearch search --report 'bilateral pleural effusion' --filter modality=cxr",
            "lungsearch search --image ct-0007/ --model ct-ild --filter label!=normal --json",
        ],
        parents=[conn, model, _query_parent(image_required=False)],
    )
    p.add_argument("--top-k", type=int, default=10, help="number of hits (default: %(default)s)")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="modality=ct, view=PA, label=A,B (any of), labels_all=A,B, labels_none=A,B or label!=A; "
        "repeat to combine (AND)",
    )
    p.set_defaults(func=cmd_search)

    p = _add(
        sub,
        "classify",
        help="label probabilities and the kNN vote for an image",
        description="Class probabilities from the profile's head and the label vote of the nearest stored cases.",
        examples=["lungsearch classify --image cxr.png", "lungsearch classify --image ct-0007/ --model ct-ild --json"],
        parents=[conn, model, _query_parent(image_required=True)],
    )
    p.add_argument("--knn-k", type=int, default=10, help="neighbours in the vote (default: %(default)s)")
    p.set_defaults(func=cmd_classify)

    p = _add(
        sub,
        "explain",
        help="Grad-CAM heat map (PNG) for an image",
        description="Write a Grad-CAM heat map for the top (or a named) label as PNG.",
        examples=[
            "lungsearch explain --image cxr.png --out heatmap.png",
            "lungsearch explain --image cxr.png --label Effusion --out effusion.png --overlay overlay.png",
            "lungsearch explain --image cxr.png --match 3f1c... --out query.png --case-out case.png",
        ],
        parents=[conn, model, _query_parent(image_required=True)],
    )
    p.add_argument(
        "--label",
        default=None,
        help="label to explain (default: the top predicted label; with --match: the first label query and case share)",
    )
    p.add_argument(
        "--match",
        default=None,
        metavar="CASE_KEY",
        help="explain why this retrieved case matches the query (ExplainMatch): heat maps on both, "
        "shared labels and report phrases",
    )
    p.add_argument(
        "--case-out",
        default=None,
        metavar="PNG",
        help="with --match: the case's heat map overlay (default: <out>-case.png)",
    )
    p.add_argument("--out", default="heatmap.png", metavar="PNG", help="heat map output (default: %(default)s)")
    p.add_argument("--overlay", default=None, metavar="PNG", help="also write the heat map blended over the input")
    p.set_defaults(func=cmd_explain)

    p = _add(
        sub,
        "models",
        help="list the models the server knows",
        description="List trained models: profile, version, live flag, geometry, cases indexed, metrics.",
        examples=["lungsearch models", "lungsearch models --profile ct-ild --json"],
        parents=[conn],
    )
    p.add_argument("--profile", default=None, help="only this profile")
    p.set_defaults(func=cmd_models)

    p = _add(
        sub,
        "activate",
        help="switch the live version of a profile (admin)",
        description="Make PROFILE@VERSION the live version of its profile.",
        examples=["lungsearch activate cxr-report@20261124-1953-ab12cd --token-file admin.token"],
        parents=[conn],
    )
    p.add_argument("model_ref", metavar="PROFILE@VERSION")
    p.set_defaults(func=cmd_activate)

    p = _add(
        sub,
        "reindex",
        help="build a new version's index, gate it against the live one, switch (admin)",
        description="Gated re-indexing: stage PROFILE@VERSION (gateways write every ingest to it too), ingest "
        "the source cases into its collection, compare mAP@10 and P@10 with the live version on "
        "held-out probe cases (paired bootstrap interval of the difference), and switch only when "
        "the drop is at most --max-drop. The old version stays for rollback. Exits 8 when the gate "
        "refuses. Source and probes: the candidate's data config (train + val cases are built, the "
        "test split is the probe set).",
        examples=[
            "lungsearch reindex ct-ild@20261206-1200-ab12cd --token-file admin.token",
            "lungsearch reindex cxr-hash@20261206-1200-cd34ef --max-drop 0.05 --no-activate --json",
        ],
        parents=[conn],
    )
    p.add_argument("model_ref", metavar="PROFILE@VERSION")
    p.add_argument(
        "--artifacts-dir", default=None, help="the registry the gateways read (default: LUNGSEARCH_ARTIFACTS_DIR)"
    )
    p.add_argument(
        "--max-drop", type=float, default=0.02, help="largest accepted drop of mAP@10 / P@10 (default: %(default)s)"
    )
    p.add_argument("--no-activate", action="store_true", help="build and gate only; do not switch")
    p.set_defaults(func=cmd_reindex)

    p = _add(
        sub,
        "get",
        help="show a stored case by key",
        description="Show one stored (de-identified) case.",
        examples=["lungsearch get 3f1c0a9e5b7d4e21a8c6f0b2d4e6a8c0", "lungsearch get KEY --model ct-ild --json"],
        parents=[conn, model],
    )
    p.add_argument("case_key", metavar="KEY")
    p.set_defaults(func=cmd_get)

    p = _add(
        sub,
        "delete",
        help="delete a stored case by key",
        description="Delete one stored case. Exits 3 when there was nothing to delete, unless --missing-ok.",
        examples=["lungsearch delete 3f1c0a9e5b7d4e21a8c6f0b2d4e6a8c0", "lungsearch delete KEY --missing-ok"],
        parents=[conn, model],
    )
    p.add_argument("case_key", metavar="KEY")
    p.add_argument("--missing-ok", action="store_true", help="exit 0 when the case did not exist")
    p.set_defaults(func=cmd_delete)

    p = _add(
        sub,
        "health",
        help="is the server serving?",
        description="Ask the standard gRPC health service (or the Ray Serve proxy). Exits 0 when serving, 6 otherwise.",
        examples=["lungsearch health", "lungsearch health --target lungsearch.example.org:443 --tls --timeout 5"],
        parents=[conn],
    )
    p.add_argument("--service", default="", help="service to ask about (default: the whole server)")
    p.set_defaults(func=cmd_health)


# ---- helpers ----------------------------------------------------------------------------------


class _Usage(Exception):
    """A bad command line detected after parsing (exit 2)."""


def _token(args: argparse.Namespace) -> str | None:
    if args.token and args.token_file:
        raise _Usage("give --token or --token-file, not both")
    if args.token_file:
        return Path(args.token_file).read_text().strip() or None
    return args.token or constants.TOKEN or None


def _connect(args: argparse.Namespace):
    from lungsearch.client import LungSearchClient

    if not args.timeout > 0:
        raise _Usage("--timeout must be positive")
    return LungSearchClient(
        args.target,
        tls=True if args.tls else None,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        token=_token(args),
        timeout=args.timeout,
    )


def _exit_code(exc: BaseException) -> int:
    from lungsearch.client import (
        DeadlineExceeded,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
    )

    if isinstance(exc, _Usage):
        return EXIT_USAGE
    if isinstance(exc, (NotFound, FileNotFoundError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, InvalidArgument):
        return EXIT_INVALID
    if isinstance(exc, (Unauthenticated, PermissionDenied)):
        return EXIT_AUTH
    if isinstance(exc, (Unavailable, DeadlineExceeded)):
        return EXIT_UNAVAILABLE
    if isinstance(exc, ResourceExhausted):
        return EXIT_LIMIT
    if isinstance(exc, (ValueError, TypeError)):  # a malformed --filter, --model, manifest line…
        return EXIT_USAGE
    return EXIT_ERROR


def _error_dict(exc: BaseException) -> dict[str, Any]:
    if hasattr(exc, "to_dict"):
        return exc.to_dict()
    return {"status": type(exc).__name__, "message": str(exc)}


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    """Report a failure (stderr; plus JSON on stdout with --json) and return its exit code."""
    if getattr(args, "json", False):
        print(json.dumps({"error": _error_dict(exc)}, indent=2))
    msg = str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename:
        msg = f"no such file: {exc.filename}"
    print(f"error: {msg}", file=sys.stderr)
    return _exit_code(exc)


def _guarded(func):
    """Run a command, mapping every expected failure to an exit code (never a traceback)."""

    def run(args: argparse.Namespace) -> int:
        from lungsearch.client import LungSearchError

        try:
            return func(args)
        except (LungSearchError, _Usage, OSError, ValueError, TypeError) as exc:
            return _fail(args, exc)

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, stream=None) -> None:
    """A plain aligned table; the last column is cut to the terminal width."""
    stream = stream or sys.stdout
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    width = shutil.get_terminal_size((120, 20)).columns
    used = sum(widths[:-1]) + 2 * (len(widths) - 1)
    widths[-1] = max(len(headers[-1]), min(widths[-1], width - used)) if rows else widths[-1]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            w = widths[i]
            cell = cell.replace("\n", " ")
            if len(cell) > w:
                cell = cell[: max(w - 1, 0)] + "…"
            out.append(cell.ljust(w) if i < len(cells) - 1 else cell)
        return "  ".join(out).rstrip()

    print(line(headers), file=stream)
    print(line(["-" * w for w in widths]), file=stream)
    for r in rows:
        print(line(r), file=stream)


def _report_arg(args: argparse.Namespace) -> str | None:
    if getattr(args, "report_file", None):
        return Path(args.report_file).read_text(encoding="utf-8")
    return args.report


def _query_images(args: argparse.Namespace) -> list[Any]:
    """--image values: files as they are; a folder stands for the series in it."""
    from lungsearch.client._requests import series_sources

    images: list[Any] = []
    for value in args.image:
        path = Path(value)
        if path.is_dir():
            images.extend(s.path for s in series_sources(path, "query"))
        elif not path.is_file():
            raise FileNotFoundError(2, "no such file", value)
        else:
            images.append(path)
    return images


# ---- ingest -----------------------------------------------------------------------------------


@dataclass
class _Job:
    """One case to ingest."""

    name: str
    files: list[Path]
    series: bool = False
    report: str | None = None
    labels: list[str] = field(default_factory=list)
    source_id: str | None = None


def _sidecar(path: Path) -> str | None:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def _jobs_from_paths(paths: Sequence[str], per_file: bool) -> list[_Job]:
    from lungsearch.client._requests import Source

    jobs: list[_Job] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            jobs.append(_Job(raw, [path], report=_sidecar(path.with_suffix(".txt"))))
            continue
        if not path.is_dir():
            raise FileNotFoundError(2, "no such file or folder", raw)
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(root)
            dicoms, pictures = [], []
            for name in sorted(files):
                f = here / name
                if name.startswith(".") or name.upper() == "DICOMDIR" or not f.is_file():
                    continue
                fmt = Source(path=f).fmt()
                if fmt == "dicom":
                    dicoms.append(f)
                elif fmt in ("png", "jpeg"):
                    pictures.append(f)
            if dicoms and not per_file:
                jobs.append(_Job(str(here), dicoms, series=True, report=_sidecar(here / "report.txt")))
            else:
                jobs.extend(_Job(str(f), [f], report=_sidecar(f.with_suffix(".txt"))) for f in dicoms)
            jobs.extend(_Job(str(f), [f], report=_sidecar(f.with_suffix(".txt"))) for f in pictures)
    return jobs


def _jobs_from_manifest(manifest: str) -> list[_Job]:
    path = Path(manifest)
    base = path.parent
    jobs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                files = [
                    Path(p) if Path(p).is_absolute() else (base / p if (base / p).exists() else Path(p))
                    for p in row["image_paths"]
                ]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path.name} line {lineno}: expected JSON with image_paths ({exc})") from None
            labels = row.get("labels") or []
            jobs.append(
                _Job(
                    str(row.get("case_id") or files[0]),
                    files,
                    series=len(files) > 1,
                    report=row.get("report"),
                    labels=[labels] if isinstance(labels, str) else list(labels),
                    source_id=row.get("source_id") or row.get("case_id"),
                )
            )
    return jobs


def _ingest_one(client, job: _Job, model: str | None) -> dict[str, Any]:
    if job.series:
        res = client.ingest_series(
            job.files, report=job.report, labels=job.labels or None, source_id=job.source_id, model=model
        )
    else:
        res = client.ingest(
            job.files[0], report=job.report, labels=job.labels or None, source_id=job.source_id, model=model
        )
    return res.to_dict()


def _ingest_dicomweb(args: argparse.Namespace) -> int:
    if not (args.dicomweb and args.study) or args.paths or args.manifest:
        raise _Usage("--dicomweb URL and --study UID go together, without PATHs or --manifest")
    from lungsearch.pacs.dicomweb import ingest_study

    profiles = {k: args.model for k in ("ct", "cxr", "mr")} if args.model else None
    with _connect(args) as client:
        out = ingest_study(client, args.dicomweb, args.study, profiles=profiles)
    rows = [
        dict(
            series=o.index,
            modality=o.modality,
            images=o.instances,
            case_key=o.case_key,
            model=o.model,
            skipped=o.skipped,
        )
        for o in out
    ]
    if args.json:
        _print_json(rows)
    else:
        _table(
            ["SERIES", "MODALITY", "IMAGES", "CASE KEY"],
            [(r["series"], r["modality"], r["images"], r["case_key"] or r["skipped"]) for r in rows],
        )
    return EXIT_OK


@_guarded
def cmd_ingest(args: argparse.Namespace) -> int:
    if args.dicomweb or args.study:
        return _ingest_dicomweb(args)
    if not args.paths and not args.manifest:
        raise _Usage("give PATHs to ingest, or --manifest")
    if args.workers < 1:
        raise _Usage("--workers must be >= 1")
    jobs = (_jobs_from_manifest(args.manifest) if args.manifest else []) + _jobs_from_paths(args.paths, args.per_file)
    if not jobs:
        raise _Usage("no PNG, JPEG or DICOM files found in the given paths")
    if args.source_id and len(jobs) != 1:
        raise _Usage("--source-id identifies one case; it cannot be used for several")
    report, labels = _report_arg(args), [x.strip() for x in (args.labels or "").split(",") if x.strip()]
    for job in jobs:  # command-line values apply to every case and win over sidecars/manifest
        job.report = report if report is not None else job.report
        job.labels = labels or job.labels
        job.source_id = args.source_id or job.source_id

    progress = sys.stderr.isatty() and not args.json
    results: list[dict[str, Any]] = []
    first_error: BaseException | None = None
    from lungsearch.client import LungSearchError

    with _connect(args) as client, ThreadPoolExecutor(max_workers=min(args.workers, len(jobs))) as pool:
        futures = [pool.submit(_ingest_one, client, job, args.model) for job in jobs]
        for i, (job, fut) in enumerate(zip(jobs, futures), 1):
            entry: dict[str, Any] = {"path": job.name, "images": len(job.files), "series": job.series}
            try:
                entry.update(ok=True, **fut.result())
            except (LungSearchError, OSError, ValueError, TypeError) as exc:
                entry.update(ok=False, error=_error_dict(exc), exit_code=_exit_code(exc))
                first_error = first_error or exc
                if args.fail_fast:
                    for f in futures[i:]:
                        f.cancel()
            results.append(entry)
            if progress:
                print(f"\r[{i}/{len(jobs)}] {'ok' if entry['ok'] else 'FAILED'}", end="", file=sys.stderr, flush=True)
            if first_error is not None and args.fail_fast:
                break
    if progress:
        print(file=sys.stderr)

    ok = sum(r["ok"] for r in results)
    if args.json:
        _print_json(results)
    else:
        _table(
            ["STATUS", "CASE KEY", "IMAGES", "PATH"],
            [
                (
                    ("created" if r.get("created") else "updated") if r["ok"] else "FAILED",
                    r.get("case_key", r.get("error", {}).get("reason", "")),
                    r["images"],
                    r["path"],
                )
                for r in results
            ],
        )
        print(f"\n{ok}/{len(jobs)} ingested" + (f", {len(results) - ok} failed" if ok < len(results) else ""))
    for r in results:
        if not r["ok"]:
            print(f"error: {r['path']}: {r['error'].get('message', '')}", file=sys.stderr)
    return EXIT_OK if first_error is None else _exit_code(first_error)


# ---- queries ----------------------------------------------------------------------------------


def _print_roi(roi) -> None:
    """The whole-thorax radiomics flag (docs/masks.md), on stderr so the table stays parseable."""
    if roi is not None:
        print(f"note: {roi.message or 'radiomics read the whole thorax: lung mask ' + roi.reason}", file=sys.stderr)


@_guarded
def cmd_search(args: argparse.Namespace) -> int:
    from lungsearch.client import Filter

    images, report = _query_images(args), _report_arg(args)
    if not images and not report:
        raise _Usage("give --image and/or --report")
    if args.top_k < 1:
        raise _Usage("--top-k must be >= 1")
    flt = Filter.parse(args.filter) if args.filter else None
    with _connect(args) as client:
        result = client.search(images=images or None, report=report, top_k=args.top_k, filters=flt, model=args.model)
    if args.json:
        _print_json(result.to_dict())
        return EXIT_OK
    print(f"model: {result.model or '(default)'}   hits: {len(result)}")
    _print_roi(result.radiomics_roi)
    with_codes = any(h.hamming_distance is not None for h in result)
    headers = (
        ["RANK", "SCORE"] + (["HAMMING"] if with_codes else []) + ["CASE KEY", "MODALITY", "VIEW", "LABELS", "REPORT"]
    )
    _table(
        headers,
        [
            [h.rank, f"{h.score:.4f}"]
            + ([h.hamming_distance] if with_codes else [])
            + [h.case.case_key, h.case.modality, h.case.view, ",".join(h.case.labels), h.case.report_excerpt]
            for h in result
        ],
    )
    return EXIT_OK


@_guarded
def cmd_classify(args: argparse.Namespace) -> int:
    images = _query_images(args)
    if args.knn_k < 1:
        raise _Usage("--knn-k must be >= 1")
    with _connect(args) as client:
        c = client.classify(images=images, report=_report_arg(args), knn_k=args.knn_k, model=args.model)
    if args.json:
        _print_json(c.to_dict())
        return EXIT_OK
    print(f"model: {c.model or '(default)'}   top label: {c.top_label} ({c.top_score:.3f})")
    _print_roi(c.radiomics_roi)
    labels = list(c.probabilities) + [k for k in c.knn_vote if k not in c.probabilities]
    _table(
        ["", "LABEL", "PROBABILITY", "KNN VOTE"],
        [
            [
                "*" if lab == c.top_label else "",
                lab,
                f"{c.probabilities[lab]:.4f}" if lab in c.probabilities else "",
                f"{c.knn_vote[lab]:.2f}" if lab in c.knn_vote else "",
            ]
            for lab in labels
        ],
    )
    return EXIT_OK


def _explain_match(args: argparse.Namespace, images: list[Any]) -> int:
    with _connect(args) as client:
        m = client.explain_match(
            args.match, images=images, report=_report_arg(args), label=args.label, model=args.model
        )
    out = Path(args.out)
    written = {}
    if m.query_overlay_png:
        out.write_bytes(m.query_overlay_png)
        written["query_overlay"] = str(out)
    case_out = Path(args.case_out) if args.case_out else out.with_name(out.stem + "-case.png")
    if m.case_overlay_png:
        case_out.write_bytes(m.case_overlay_png)
        written["case_overlay"] = str(case_out)
    if args.json:
        doc = {k: v for k, v in m.to_dict().items() if not k.endswith("_png")}
        _print_json({**doc, "files": written})
        return EXIT_OK
    print(f"case {m.case.case_key} by {m.model or '(default)'}: heat maps for {m.label or '(the embedding)'}")
    print(f"  shared labels:  {', '.join(m.shared_labels) or '-'}")
    print(f"  shared phrases: {', '.join(p.phrase for p in m.shared_phrases) or '-'}")
    for k, v in written.items():
        print(f"  {k.replace('_', ' ')} -> {v}")
    if not m.case_image_available:
        print("  (the server keeps no image of this case: no heat map on it)")
    return EXIT_OK


@_guarded
def cmd_explain(args: argparse.Namespace) -> int:
    images = _query_images(args)
    if args.match:
        return _explain_match(args, images)
    with _connect(args) as client:
        e = client.explain(images=images, report=_report_arg(args), label=args.label, model=args.model)
    out = e.save(args.out)
    overlay = e.save(args.overlay, overlay=True) if args.overlay else None
    if args.json:
        _print_json(
            {
                "model": e.model.to_dict(),
                "label": e.label,
                "score": e.score,
                "heatmap": str(out),
                "overlay": str(overlay) if overlay else None,
                "heatmap_bytes": len(e.heatmap_png),
            }
        )
    else:
        print(
            f"{e.label} ({e.score:.3f}) by {e.model or '(default)'}: heat map -> {out}"
            + (f", overlay -> {overlay}" if overlay else "")
        )
    return EXIT_OK


# ---- cases and models ---------------------------------------------------------------------------


@_guarded
def cmd_models(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        models = client.models(profile=args.profile)
    if args.json:
        _print_json([m.to_dict() for m in models])
        return EXIT_OK
    if not models:
        print("no models")
        return EXIT_OK
    _table(
        ["PROFILE", "VERSION", "LIVE", "MODALITY", "DIM", "BITS", "CASES", "DATA", "METRICS"],
        [
            [
                m.model.profile,
                m.model.version,
                "yes" if m.live else "",
                m.modality,
                m.embedding_dim,
                m.code_bits or "",
                m.num_cases,
                "phantom" if m.synthetic_data else "real",
                " ".join(f"{k}={v:.3g}" for k, v in list(m.metrics.items())[:4]),
            ]
            for m in models
        ],
    )
    if any(m.synthetic_data for m in models):
        print("\nphantom: trained and evaluated on synthetic data; its metrics say nothing about real images")
    return EXIT_OK


@_guarded
def cmd_activate(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        res = client.activate_model(args.model_ref)
    if args.json:
        _print_json(res.to_dict())
    else:
        print(f"live: {res.live} (was {res.previous or 'none'})")
    return EXIT_OK


@_guarded
def cmd_reindex(args: argparse.Namespace) -> int:
    from lungsearch import constants, registry
    from lungsearch.data import load_records, split_records
    from lungsearch.errors import InvalidRequestError
    from lungsearch.reindex import reindex

    profile, version = registry.parse_ref(args.model_ref)
    if not version:
        raise InvalidRequestError("reindex needs PROFILE@VERSION", code="no_version", field="model_ref")
    root = args.artifacts_dir or constants.ARTIFACTS_DIR
    cfg = registry.resolve(profile, version, root=root).config
    records = load_records(cfg.data)
    splits = split_records(records, cfg.data.split, seed=cfg.data.seed)
    echo = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    with _connect(args) as client:
        rep = reindex(
            client,
            profile,
            version,
            records=[*splits["train"], *splits["val"]],
            probes=splits["test"],
            registry_root=root,
            max_drop=args.max_drop,
            activate=not args.no_activate,
            echo=echo,
        )
    if args.json:
        _print_json(rep.as_dict())
    return EXIT_OK if rep.gate is not None and rep.gate.passed else EXIT_REFUSED


@_guarded
def cmd_get(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        case = client.get_case(args.case_key, model=args.model)
    if args.json:
        _print_json(case.to_dict())
        return EXIT_OK
    _table(
        ["FIELD", "VALUE"],
        [
            ("case_key", case.case_key),
            ("modality", case.modality),
            ("view", case.view),
            ("labels", ", ".join(case.labels)),
            ("num_images", case.num_images),
            ("model", str(case.model)),
            ("ingested_at", case.ingested_at.isoformat() if case.ingested_at else ""),
            ("report_excerpt", case.report_excerpt),
        ],
    )
    return EXIT_OK


@_guarded
def cmd_delete(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        deleted = client.delete_case(args.case_key, model=args.model)
    if args.json:
        _print_json({"case_key": args.case_key, "deleted": deleted})
    else:
        print("deleted" if deleted else "not found: nothing deleted")
    return EXIT_OK if deleted or args.missing_ok else EXIT_NOT_FOUND


@_guarded
def cmd_health(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        status = client.health(args.service)
    if args.json:
        _print_json(dict(status.to_dict(), serving=status.serving))
    else:
        print(f"{status.status} ({status.source})" + (f": {status.message}" if status.message else ""))
    return EXIT_OK if status.serving else EXIT_UNAVAILABLE
