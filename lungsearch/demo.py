"""`make demo`: the main job end to end on the embedded default.

phantom data -> train + evaluate every profile on a local Ray -> register -> build the milvus-lite
index -> start Serve with gRPC -> example queries through the SDK (an image, a report text, a DICOM
series, a bad file) -> a summary whose every number is read from files this run wrote or reused.

Re-running reuses what is already built: a registered model whose config fingerprint equals the
profile's is not trained again, and an index already holding every case is not rebuilt.

All numbers come from **synthetic phantom data** and say so.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from lungsearch import constants

__all__ = ["DEMO_PROFILES", "SERVED_PROFILES", "DemoResult", "run_demo"]

log = logging.getLogger(__name__)

#: Every profile is trained and evaluated; these are also indexed and served.
DEMO_PROFILES = ("cxr-cnn", "cxr-report", "ct-ild", "cxr-hash", "cxr-clip")
SERVED_PROFILES = ("cxr-report", "ct-ild", "cxr-hash", "cxr-clip")


@dataclass
class DemoResult:
    """What the demo did; ``to_dict()`` is also written to ``<workdir>/summary.json``."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    index: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    synthetic_data: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "synthetic_data": self.synthetic_data,
            "models": self.models,
            "index": self.index,
            "queries": self.queries,
            "seconds": self.seconds,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reusable_card(cfg, registry_root: str | None):
    """The newest registered model trained from exactly this config (same fingerprint), if any."""
    from lungsearch.registry import list_cards

    cards = [c for c in list_cards(registry_root, cfg.profile) if c.config.fingerprint() == cfg.fingerprint()]
    return cards[-1] if cards else None


def _report_metrics(card) -> tuple[dict[str, float], str]:
    """Test metrics as written by the evaluation (``metrics.json`` in the report folder)."""
    report_dir = Path(card.extra.get("report_dir") or "")
    path = report_dir / "metrics.json"
    if path.is_file():
        doc = json.loads(path.read_text())
        metrics = doc.get("metrics", doc)
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, str(report_dir)
    return {k.removeprefix("test_"): v for k, v in card.metrics.items() if k.startswith("test_")}, str(report_dir)


def run_demo(
    profiles: tuple[str, ...] = DEMO_PROFILES,
    served: tuple[str, ...] = SERVED_PROFILES,
    *,
    workdir: str | os.PathLike = "data/demo",
    registry_root: str | None = None,
    fresh: bool = False,
    port: int = 0,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo; returns what it measured (also written to ``<workdir>/summary.json``).

    Args:
        profiles: profiles to train and evaluate (names of ``configs/*.yaml``).
        served: the subset to index and serve.
        workdir: demo outputs: the milvus-lite file, query outputs, ``summary.json``.
        registry_root: model registry (default ``LUNGSEARCH_ARTIFACTS_DIR``).
        fresh: train and index again even when a matching model/index exists.
        port: gRPC port of the demo server (0 = a free one).
        overrides: ``dotted.key=value`` config overrides applied to every profile (e.g. a tiny
            ``data.phantom.n=24 train.epochs=1`` smoke run; the cache key is the resulting config).

    Ray: attaches to a running one (or ``LUNGSEARCH_RAY_ADDRESS``) or starts a local one; it shuts
    down only what it started (on an attached cluster: just its Serve application).
    """
    import ray

    from lungsearch.config import load_profile
    from lungsearch.data import load_records, split_records
    from lungsearch.registry import set_live
    from lungsearch.runtime import init_ray, shutdown_ray

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    milvus_uri = str((work / "lungsearch.db").resolve())
    res = DemoResult()
    t_all = time.perf_counter()
    served = tuple(p for p in served if p in profiles)

    # 1. Phantom data (generated once, cached by its settings under data/phantoms/).
    t0 = time.perf_counter()
    cfgs = {p: load_profile(p, list(overrides)) for p in profiles}
    records = {}
    for p, cfg in cfgs.items():
        records[p] = load_records(cfg.data)
        echo(
            f"[data]  {p:<11} {len(records[p]):>5} phantom cases "
            f"({cfg.data.phantom.kind if cfg.data.phantom else cfg.data.source})"
        )
    res.seconds["data"] = round(time.perf_counter() - t0, 1)

    owns_ray = not ray.is_initialized()
    init_ray(num_cpus=constants.RAY_NUM_CPUS or None, log_to_driver=False)
    try:
        # 2. Train + evaluate + register (reused when this exact config was trained before).
        t0 = time.perf_counter()
        from lungsearch.training import train_and_evaluate

        for p, cfg in cfgs.items():
            card = None if fresh else _reusable_card(cfg, registry_root)
            t1 = time.perf_counter()
            if card is None:
                echo(f"[train] {p:<11} training ({cfg.train.epochs} epochs max) ...")
                from lungsearch.training.progress import reporting

                with reporting(lambda line: echo(f"[train]   {line}")):  # one line per epoch, with time left
                    out = train_and_evaluate(cfg, registry_root=registry_root, resume=not fresh)
                card = out.card
                reused = False
            else:
                reused = True
            set_live(p, card.version, root=registry_root)
            metrics, report_dir = _report_metrics(card)
            res.models[p] = {
                "model": card.ref,
                "reused": reused,
                "seconds": round(time.perf_counter() - t1, 1),
                "metrics": metrics,
                "report_dir": report_dir,
                "synthetic_data": card.synthetic_data,
            }
            echo(f"[train] {p:<11} {'reused' if reused else 'trained'} {card.ref}  ({res.models[p]['seconds']} s)")
        res.seconds["train"] = round(time.perf_counter() - t0, 1)

        # 3. Index the served profiles into the milvus-lite file (skipped when already complete).
        t0 = time.perf_counter()
        from lungsearch.store import MilvusStore, collection_name
        from lungsearch.training.indexing import build_index

        for p in served:
            card_ref = res.models[p]["model"]
            version = card_ref.split("@", 1)[1]
            with MilvusStore(milvus_uri) as store:
                have = store.count(p, version) if store.has_collection(p, version) else 0
            if have >= len(records[p]) and not fresh:
                res.index[p] = {"cases": have, "reused": True}
            else:
                rep = build_index(
                    card_ref, records=records[p], milvus_uri=milvus_uri, registry_root=registry_root, progress=False
                )
                res.index[p] = {"cases": rep.count_in_store, "reused": False, "cases_per_s": round(rep.cases_per_s, 1)}
            echo(
                f"[index] {p:<11} {res.index[p]['cases']} cases in {collection_name(p, version)}"
                f"{' (reused)' if res.index[p]['reused'] else ''}"
            )
        res.seconds["index"] = round(time.perf_counter() - t0, 1)

        # 4. Serve (the same config `lungsearch serve` deploys), 5. query through the SDK.
        t0 = time.perf_counter()
        from lungsearch.cli import build_parser
        from lungsearch.cli._serve import build_config, deploy, wait_running

        port = port or _free_port()
        # The server must key cases with the HMAC key build_index just used (one case per study).
        argv = [
            "serve",
            "--insecure-local",
            "--grpc-port",
            str(port),
            "--milvus-uri",
            milvus_uri,
            "--metrics-port",
            "0",
            "--hmac-key-file",
            str(Path(constants.HMAC_KEY_FILE).resolve()),
        ]
        argv += [a for p in served for a in ("--profile", p)]
        if registry_root:
            argv += ["--artifacts-dir", registry_root]
        doc = build_config(build_parser().parse_args(argv))
        deploy(doc)
        wait_running()
        res.seconds["serve_start"] = round(time.perf_counter() - t0, 1)
        echo(f"[serve] gRPC on 127.0.0.1:{port} ({', '.join(served)}) in {res.seconds['serve_start']} s")
        http = doc.get("http_options") or {}
        echo(
            f"[serve] web page on http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}/lungsearch/ "
            "(while the demo runs; `lungsearch serve` keeps it up)"
        )
        t0 = time.perf_counter()
        splits = {p: split_records(records[p], cfgs[p].data.split, seed=cfgs[p].data.seed) for p in served}
        res.queries = _queries(f"127.0.0.1:{port}", splits, work, echo)
        res.seconds["queries"] = round(time.perf_counter() - t0, 1)
    finally:
        if owns_ray:
            shutdown_ray()
        else:
            _shutdown_serve()
    res.seconds["total"] = round(time.perf_counter() - t_all, 1)
    (work / "summary.json").write_text(json.dumps(res.to_dict(), indent=2, default=str))
    _print_summary(res, work, echo, registry_root)
    return res


def _shutdown_serve() -> None:
    """Take the demo's Serve down on a Ray the caller owns (the cluster itself stays up)."""
    from ray import serve

    try:
        serve.shutdown()
    except Exception:  # noqa: BLE001 - cleanup must not mask the demo's own error
        log.warning("serve.shutdown failed", exc_info=True)


def _queries(target: str, splits, work: Path, echo) -> dict[str, Any]:
    """The example queries a radiologist's tool would make, through the public SDK."""
    from lungsearch.client import InvalidArgument, LungSearchClient

    out: dict[str, Any] = {}
    with LungSearchClient(target, timeout=120) as client:
        if "cxr-hash" in splits:
            # The index holds every phantom case, the query's own among them: it should come back first.
            rec = splits["cxr-hash"]["test"][0]
            hits = client.search(image=rec.image_paths[0], top_k=6, model="cxr-hash")
            out["image_query"] = _hits_summary("cxr-hash", rec, hits)
            echo(_fmt_hits("image query (cxr-hash, Hamming)", rec, hits))
        if "cxr-report" in splits:
            rec = splits["cxr-report"]["test"][0]
            hits = client.search(image=rec.image_paths[0], report=rec.report or "", top_k=6, model="cxr-report")
            out["image_report_query"] = _hits_summary("cxr-report", rec, hits)
            echo(_fmt_hits("image + report query (cxr-report, fused)", rec, hits))
            cls = client.classify(image=rec.image_paths[0], report=rec.report or "", model="cxr-report")
            out["classify"] = {
                "truth": list(rec.labels),
                "top_label": cls.top_label,
                "probabilities": {k: round(v, 3) for k, v in cls.probabilities.items()},
                "knn_vote": {k: round(v, 3) for k, v in cls.knn_vote.items()},
            }
            echo(f"  classify: truth={list(rec.labels)} predicted={cls.top_label} knn={out['classify']['knn_vote']}")
            ex = client.explain(image=rec.image_paths[0], report=rec.report or "", model="cxr-report")
            heat = work / "explain_heatmap.png"
            heat.write_bytes(ex.overlay_png or ex.heatmap_png)
            out["explain"] = {"label": ex.label, "png": str(heat), "bytes": heat.stat().st_size}
            echo(f"  explain: Grad-CAM for {ex.label!r} -> {heat}")
        if "cxr-clip" in splits:
            rec = splits["cxr-clip"]["test"][1]
            hits = client.search(report=rec.report or "", top_k=6, model="cxr-clip")
            out["report_query"] = _hits_summary("cxr-clip", rec, hits)
            echo(_fmt_hits("report-text query (cxr-clip, text -> image)", rec, hits))
        if "ct-ild" in splits:
            rec = splits["ct-ild"]["test"][0]
            folder = Path(rec.image_paths[0]).parent
            ing = client.ingest_series(folder, labels=list(rec.labels), model="ct-ild")
            # build_index already stored this study under the same key (keyed DICOM identifiers): the
            # ingest updates that row instead of adding a second copy of the case.
            echo(
                f"[ingest] DICOM series ({len(rec.image_paths)} slices, streamed) -> "
                f"{'new case' if ing.created else 'already indexed: same study, same case, updated'}"
            )
            hits = client.search(images=[Path(p) for p in rec.image_paths], top_k=6, model="ct-ild")
            top1 = next((h for h in hits.hits if h.case.case_key != ing.case_key), None)
            out["ct_series"] = {
                "ingested_key_created": ing.created,
                "truth": list(rec.labels),
                "top1_label_diagnosis": list(top1.case.labels) if top1 else [],
                **_hits_summary("ct-ild", rec, hits),
            }
            echo(_fmt_hits("DICOM series query (ct-ild, LSH + cosine)", rec, hits))
            echo(f"  top-1 label as diagnosis: {out['ct_series']['top1_label_diagnosis']} (truth {list(rec.labels)})")
        # A bad file: rejected with INVALID_ARGUMENT, nothing stored.
        served0 = next(iter(splits))
        before = {m.model.profile: m.num_cases for m in client.models()}
        try:
            client.ingest(b"\x00not an image\xff" * 64, labels=["Normal"], source_id="demo-bad-file", model=served0)
            out["bad_file"] = {"rejected": False}
        except InvalidArgument as exc:
            after = {m.model.profile: m.num_cases for m in client.models()}
            out["bad_file"] = {
                "rejected": True,
                "status": "INVALID_ARGUMENT",
                "reason": exc.reason,
                "store_unchanged": before.get(served0) == after.get(served0),
            }
        echo(f"[bad]   garbage bytes -> {out['bad_file']}")
    return out


def _hits_summary(profile: str, rec, hits) -> dict[str, Any]:
    truth = set(rec.labels)
    top = [
        {"labels": list(h.case.labels), "score": round(h.score, 4), "hamming": h.hamming_distance} for h in hits.hits
    ]
    overlap = sum(bool(truth & set(h["labels"])) for h in top) / max(1, len(top))
    return {"profile": profile, "truth": sorted(truth), "hits": top, "label_overlap_share": round(overlap, 3)}


def _fmt_hits(title: str, rec, hits) -> str:
    lines = [f"[query] {title}: truth {list(rec.labels)}"]
    for h in hits.hits:
        ham = f" hamming={h.hamming_distance}" if h.hamming_distance is not None and h.hamming_distance >= 0 else ""
        lines.append(
            f"  #{h.rank:<2} score={h.score:.3f}{ham} labels={list(h.case.labels)} "
            f"report: {h.case.report_excerpt[:60]!r}"
        )
    return "\n".join(lines)


# The headline metric of each profile (paper's table), as written by its evaluation.
_HEADLINE = {
    "cxr-cnn": ("accuracy", "f1"),
    "cxr-report": ("accuracy", "auc"),
    "ct-ild": ("top1_f1", "silhouette"),
    "cxr-hash": ("map10_hamming", "ndcg_all_hamming"),
    "cxr-clip": ("map10", "ndcg_all"),
}


def serve_command(
    work: str | os.PathLike, served: Sequence[str] = SERVED_PROFILES, registry_root: str | os.PathLike | None = None
) -> list[str]:
    """The ``lungsearch serve`` command that serves what this demo built: its profiles, its
    milvus-lite file (not the platform's default store, which the demo leaves alone), and its
    registry and HMAC key where they are not the defaults. Printed at the end and in the README."""
    argv = [
        "lungsearch",
        "serve",
        *[a for p in served for a in ("--profile", p)],
        "--insecure-local",
        "--milvus-uri",
        str(Path(work) / "lungsearch.db"),
    ]
    if registry_root and Path(registry_root).resolve() != Path(constants.ARTIFACTS_DIR).resolve():
        argv += ["--artifacts-dir", str(registry_root)]
    # what `lungsearch serve` reads by itself: $LUNGSEARCH_HMAC_KEY_FILE, else <data dir>/hmac.key
    serve_default = Path(os.environ.get("LUNGSEARCH_HMAC_KEY_FILE") or Path(constants.DATA_DIR) / "hmac.key")
    if Path(constants.HMAC_KEY_FILE).resolve() != serve_default.resolve():
        argv += ["--hmac-key-file", str(constants.HMAC_KEY_FILE)]
    return argv


def _print_summary(res: DemoResult, work: Path, echo, registry_root: str | None = None) -> None:
    echo("")
    echo(
        "== lungsearch demo summary (SYNTHETIC phantom data: these numbers show the pipeline works; "
        "they are not clinical results) =="
    )
    echo(f"{'profile':<11} {'model':<38} {'metric 1':<24} {'metric 2':<24} report (open report.html in it)")
    for p, m in res.models.items():
        cells = []
        for name in _HEADLINE.get(p, ()):
            v = m["metrics"].get(name)
            cells.append(f"{name}={v:.3f}" if isinstance(v, float) else f"{name}=n/a")
        cells += [""] * (2 - len(cells))
        echo(f"{p:<11} {m['model']:<38} {cells[0]:<24} {cells[1]:<24} {m['report_dir']}")
    echo("index: " + ", ".join(f"{p}={v['cases']}" for p, v in res.index.items()))
    echo("time (s): " + ", ".join(f"{k}={v}" for k, v in res.seconds.items()))
    echo(f"summary: {work / 'summary.json'}")
    echo("serve it again: " + " ".join(shlex.quote(a) for a in serve_command(work, tuple(res.index), registry_root)))
