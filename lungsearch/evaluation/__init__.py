"""Evaluation of trained models: metrics on a test split, linear probes, figures and paper-style
report tables (``ray_jobs/evaluate.py`` and the training job call this).

    >>> res = evaluate_model(model, cfg, splits.test, gallery=splits.gallery)
    >>> write_report("artifacts/reports/cxr-cnn/v1", ReportInput(cfg, res, rows={"ours": res.metrics}))
"""

from lungsearch.evaluation.core import EvalResult, dataset_label, evaluate_model, precision_at_k_curve, rank_gallery
from lungsearch.evaluation.probes import label_subset, linear_probe, probe_table
from lungsearch.evaluation.report import ReportInput, kfold_summary, markdown_table, render_tables, write_report

__all__ = [
    "EvalResult",
    "ReportInput",
    "dataset_label",
    "evaluate_model",
    "kfold_summary",
    "label_subset",
    "linear_probe",
    "markdown_table",
    "precision_at_k_curve",
    "probe_table",
    "rank_gallery",
    "render_tables",
    "write_report",
]
