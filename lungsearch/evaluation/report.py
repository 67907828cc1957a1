"""The evaluation report folder: ``metrics.json``, figures, ``report.md`` with tables laid out
like the seed papers' tables and ``report.html`` (the same tables with the figures beside them).
Every table states the dataset it ran on (phantom or real) and the seeds; every file carries
provenance (lungsearch version, profile, model version, config hash).

=========== =====================================================================================
profile     tables
=========== =====================================================================================
cxr-report  paper 1 Table 2 (single modality vs fused: accuracy, recall, AUC) and Table 3 (the
            CMA / SG ablation with inference time per case)
cxr-cnn     paper 2 Table 3 (the CNN vs baselines: accuracy, precision, recall, F1) and Table 5
            (K-fold: per fold and mean ± std)
ct-ild      paper 3 Table 2 (top-1 retrieval precision / recall / F1 per method) and Table 3
            (intra-class / inter-class distance, silhouette per method)
cxr-hash    paper 5 Table 2 (mAP@10 at 16/32/48/64 bits), Table 3 (NDCG@ALL) and Table 4
            (with / without the attention branch)
cxr-clip    paper 4 Table 1 (linear probe AUC at 1 / 10 / 100 % labels vs a random-init encoder)
=========== =====================================================================================
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lungsearch.evaluation import plots

if TYPE_CHECKING:
    from lungsearch.config import ProfileConfig
    from lungsearch.evaluation.core import EvalResult

__all__ = ["ReportInput", "write_report", "kfold_summary", "render_tables", "markdown_table"]


@dataclass
class ReportInput:
    """Everything a report is made of.

    Attributes:
        cfg: the main model's profile config.
        main: evaluation of the main model on the test split (figures are drawn from it).
        rows: metrics per method/variant name (the main model's row included), for the tables.
        row_tables: which paper table each row belongs to (``recipes.Variant.table``).
        probes: CLIP linear-probe results ``{encoder: {"1%": {...}}}``.
        kfold: per-fold metrics (K-fold runs).
        provenance: version, profile, model version, config fingerprint, seeds, dataset label.
        test_labels: the test split's labels (int or multi-hot), for the ROC / PR figures.
        main_row: the name of the main model's row in ``rows``.
    """

    cfg: "ProfileConfig"
    main: "EvalResult | None"
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    row_tables: dict[str, str] = field(default_factory=dict)
    probes: dict[str, dict[str, dict[str, float]]] | None = None
    kfold: list[dict[str, float]] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    test_labels: np.ndarray | None = None
    main_row: str | None = None


def _f(v: float | None, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * v:.2f}" if pct else f"{v:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def kfold_summary(
    folds: Sequence[dict[str, float]], keys: Sequence[str] | None = None
) -> dict[str, tuple[float, float]]:
    """``{metric: (mean, std)}`` over folds (population std, as a spread across the K folds)."""
    keys = keys or sorted({k for f in folds for k, v in f.items() if isinstance(v, (int, float))})
    out = {}
    for k in keys:
        vals = [float(f[k]) for f in folds if k in f and math.isfinite(float(f[k]))]
        if vals:
            out[k] = (float(np.mean(vals)), float(np.std(vals)))
    return out


def _rows_for(inp: ReportInput, table_prefix: str) -> list[tuple[str, dict[str, float]]]:
    names = [n for n in inp.rows if inp.row_tables.get(n, "").startswith(table_prefix)]
    return [(n, inp.rows[n]) for n in names]


def render_tables(inp: ReportInput) -> str:
    """The paper-style tables of the profile, as markdown."""
    cfg = inp.cfg
    p = cfg.profile
    data = inp.provenance.get("dataset", "")
    caption = f"*{data}.*" if data else ""
    parts: list[str] = []

    def section(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], note: str = "") -> None:
        if rows:
            parts.append(
                f"### {title}\n\n{caption}\n\n{markdown_table(header, rows)}\n" + (f"\n{note}\n" if note else "")
            )

    if p == "cxr-report":
        section(
            "Table 2 (paper 1): single modality vs fused",
            ["Model", "Accuracy/%", "Recall/%", "AUC"],
            [
                [n, _f(m.get("accuracy"), True), _f(m.get("recall"), True), _f(m.get("auc"), digits=4)]
                for n, m in _rows_for(inp, "Table 2")
            ],
        )
        abl = _rows_for(inp, "Table 3")
        main = [(n, m) for n, m in _rows_for(inp, "Table 2") if "ours" in n]
        section(
            "Table 3 (paper 1): ablation",
            ["Model", "Accuracy/%", "Recall/%", "AUC", "T_infer/ms per case"],
            [
                [
                    n,
                    _f(m.get("accuracy"), True),
                    _f(m.get("recall"), True),
                    _f(m.get("auc"), digits=4),
                    _f(m.get("infer_ms_per_case"), digits=2),
                ]
                for n, m in abl + main
            ],
            "T_infer: the whole model's wall time per test case (text features included), the variants "
            "timed interleaved on the same cases, median of 3 rounds, this machine's CPU, batch 32.",
        )
    elif p == "cxr-cnn":
        section(
            "Table 3 (paper 2): the CNN vs baselines (test split)",
            ["Model", "Accuracy", "Precision", "Recall", "F1"],
            [
                [n, _f(m.get("accuracy")), _f(m.get("precision")), _f(m.get("recall")), _f(m.get("f1"))]
                for n, m in _rows_for(inp, "Table 3")
            ],
        )
    elif p == "ct-ild":
        rows = _rows_for(inp, "Tables 2-3")
        section(
            "Table 2 (paper 3): top-1 retrieval diagnosis",
            ["Method", "Precision", "Recall", "F1", "mAP@10"],
            [
                [n, _f(m.get("top1_precision")), _f(m.get("top1_recall")), _f(m.get("top1_f1")), _f(m.get("map10"))]
                for n, m in rows
            ],
            "Ranking: LSH candidates re-ranked by cosine (eq. 7-9); gallery = train+val cases, queries = test cases.",
        )
        section(
            "Table 3 (paper 3): feature separation on the test cases",
            [
                "Method",
                "Intra-class distance",
                "Inter-class distance",
                "Silhouette (paper, global)",
                "Silhouette (sklearn)",
            ],
            [
                [n, _f(m.get("intra")), _f(m.get("inter")), _f(m.get("silhouette_paper")), _f(m.get("silhouette"))]
                for n, m in rows
            ],
        )
    elif p == "cxr-hash":
        bits_rows = _rows_for(inp, "Table 2")
        if bits_rows:
            header = ["Method"] + [n.split(", ")[-1] for n, _ in bits_rows]
            section(
                "Table 2 (paper 5): mAP@10 vs code length (Hamming ranking)",
                header,
                [["ours"] + [_f(m.get("map10")) for _, m in bits_rows]],
            )
        abl = _rows_for(inp, "Tables 3-4")
        main = [(n, m) for n, m in bits_rows if n == inp.main_row]
        section(
            "Tables 3-4 (paper 5): NDCG@ALL and the attention ablation",
            ["Method", "mAP@10", "NDCG@ALL"],
            [[n, _f(m.get("map10")), _f(m.get("ndcg_all"))] for n, m in main + abl],
        )
    elif p == "cxr-clip" and inp.probes:
        fr = list(next(iter(inp.probes.values())).keys())
        section(
            "Table 1 (paper 4): linear probe, macro AUC on the test split",
            ["Image encoder"] + [f"{f} labels" for f in fr],
            [
                [name] + [f"{_f(res[f]['auc'])} (n={int(res[f]['n_labelled'])})" for f in fr]
                for name, res in inp.probes.items()
            ],
            "n = labelled training cases the probe saw (at least one per class).",
        )
    if inp.kfold:
        keys = [
            k
            for k in ("accuracy", "precision", "recall", "f1", "auc", "map10", "top1_f1", "silhouette")
            if any(k in f for f in inp.kfold)
        ]
        rows = [[str(i + 1)] + [_f(f.get(k)) for k in keys] for i, f in enumerate(inp.kfold)]
        summ = kfold_summary(inp.kfold, keys)
        rows.append(["mean ± std"] + [f"{summ[k][0]:.3f} ± {summ[k][1]:.3f}" if k in summ else "–" for k in keys])
        section(
            f"K-fold cross-validation ({len(inp.kfold)} folds, patient-disjoint; paper 2 Table 5 / paper 3)",
            ["Fold"] + keys,
            rows,
        )
    return "\n".join(parts)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_report(out_dir: str | Path, inp: ReportInput) -> dict[str, Path]:
    """Write ``metrics.json``, the PNG figures, ``report.md`` and ``report.html`` into ``out_dir``;
    returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = inp.cfg
    files: dict[str, Path] = {}
    data = inp.provenance.get("dataset", "")
    tag = "PHANTOM" if cfg.data.source == "phantom" else cfg.data.source
    main = inp.main
    if main is not None:
        cls = main.details.get("classification")
        pred = main.predictions
        if cls is not None and pred is not None and pred.probs is not None:
            test_y = inp.test_labels
            if test_y is not None:
                files["roc"] = plots.plot_roc(
                    test_y, pred.probs, cfg.data.targets, out / "roc.png", f"{cfg.profile} ROC ({tag})"
                )
                files["pr"] = plots.plot_pr(
                    test_y, pred.probs, cfg.data.targets, out / "pr.png", f"{cfg.profile} precision-recall ({tag})"
                )
            if not cfg.data.multilabel:
                files["confusion"] = plots.plot_confusion(
                    np.asarray(cls["confusion_matrix"]),
                    cfg.data.targets,
                    out / "confusion.png",
                    f"{cfg.profile} confusion ({tag})",
                )
        curves = main.details.get("retrieval_curves")
        if curves:
            files["retrieval"] = plots.plot_retrieval_curves(
                curves, out / "retrieval.png", f"{cfg.profile} retrieval precision@k ({tag})"
            )
    prov = dict(inp.provenance)
    doc = {
        "provenance": prov,
        "metrics": main.metrics if main is not None else {},
        "classification": _jsonable(main.details.get("classification")) if main is not None else None,
        "rows": inp.rows,
        "row_tables": inp.row_tables,
        "probes": inp.probes,
        "kfold": inp.kfold,
        "kfold_summary": {k: {"mean": m, "std": s} for k, (m, s) in kfold_summary(inp.kfold).items()}
        if inp.kfold
        else None,
        "figures": {k: v.name for k, v in files.items()},
    }
    files["metrics"] = out / "metrics.json"
    _atomic_write(files["metrics"], json.dumps(_jsonable(doc), indent=2, sort_keys=False) + "\n")

    title = f"Evaluation report: {cfg.profile}"
    lines = [f"- **Dataset**: {data}" if data else "- **Dataset**: (unknown)"]
    for key in ("model_version", "config_fingerprint", "code_version", "seed", "split_sizes", "run_name", "created_at"):
        if key in prov:
            lines.append(f"- **{key.replace('_', ' ')}**: {prov[key]}")
    lines.append("")
    if main is not None and main.metrics:
        lines += [
            "## Test metrics (main model)",
            "",
            markdown_table(["metric", "value"], [[k, _f(v, digits=4)] for k, v in sorted(main.metrics.items())]),
            "",
        ]
    tables = render_tables(inp)
    if tables:
        lines += ["## Tables laid out like the paper's", "", tables]
    synthetic = cfg.data.source == "phantom"
    note = (
        [
            "> All numbers above come from **synthetic phantom data**, not patients: they show the method works",
            "> end to end and how variants compare on the phantoms, not clinical performance.",
            "",
        ]
        if synthetic
        else []
    )
    figures = {k: v for k, v in files.items() if v.suffix == ".png"}
    md = [f"# {title}", "", *lines]
    if figures:
        md += ["## Figures", ""] + [f"![{k}]({v.name})" for k, v in figures.items()] + [""]
    files["report"] = out / "report.md"
    _atomic_write(files["report"], "\n".join(md + note))
    # The same tables as one HTML page with the figures beside them (what a reader would rather open).
    from lungsearch.evaluation.html import render_report_html

    files["html"] = out / "report.html"
    _atomic_write(files["html"], render_report_html(title, "\n".join(lines + note), figures, synthetic=synthetic))
    return files


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x
