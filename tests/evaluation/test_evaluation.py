"""Evaluation: metrics of a model on a test split, profile rankings, probes and the report folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from lstrain_helpers import synthetic_table, tiny_cfg  # noqa: E402

from lungsearch.evaluation import ReportInput, evaluate_model, kfold_summary, label_subset, linear_probe, write_report  # noqa: E402
from lungsearch.evaluation.core import _lsh_rerank, dataset_label, rank_gallery  # noqa: E402
from lungsearch.models import create_model  # noqa: E402
from lungsearch.training.inference import Predictions  # noqa: E402


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    cfg = tiny_cfg("cxr-cnn")
    return cfg, create_model(cfg).eval(), synthetic_table(cfg, 12, 3), synthetic_table(cfg, 20, 4)


def test_evaluate_classifier_profile(cnn):
    cfg, model, test, gallery = cnn
    res = evaluate_model(model, cfg, test, gallery)
    m = res.metrics
    for key in (
        "accuracy",
        "auc",
        "f1",
        "precision",
        "recall",
        "map10",
        "map10_cosine",
        "ndcg_all",
        "p_at_1",
        "top1_f1",
        "silhouette",
        "intra",
        "inter",
        "infer_ms_per_case",
    ):
        assert key in m, key
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["map10"] <= 1 and m["n_test"] == 12
    assert res.predictions.embedding.shape == (12, cfg.model.embedding_dim)
    assert np.allclose(np.linalg.norm(res.predictions.embedding, axis=1), 1, atol=1e-4)


def test_lsh_rerank_with_all_candidates_is_cosine():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(30, 8))
    qc, gc = np.sign(rng.normal(size=(5, 16))), np.sign(rng.normal(size=(30, 16)))
    got = _lsh_rerank(q, qc, g, gc, candidates=30)
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_array_equal(got, np.argsort(-(qn @ gn.T), axis=1, kind="stable"))
    few = _lsh_rerank(q, qc, g, gc, candidates=4)
    assert few.shape == (5, 4)


def test_hash_profile_ranks_by_hamming():
    cfg = tiny_cfg("cxr-hash")
    codes_q = np.array([[1, 1, -1, -1] * 16], dtype=np.float32)
    codes_g = np.array([[-1, -1, 1, 1] * 16, [1, 1, -1, -1] * 16, [1, 1, -1, 1] * 16], dtype=np.float32)
    # Embeddings disagree with the codes: the ranking must follow the codes.
    q = Predictions(embedding=np.array([[1.0, 0]]), probs=None, codes=codes_q, text_embedding=None, seconds=0)
    g = Predictions(
        embedding=np.array([[1.0, 0], [0, 1.0], [0, 1.0]]), probs=None, codes=codes_g, text_embedding=None, seconds=0
    )
    assert rank_gallery(cfg, q, g)[0].tolist() == [1, 2, 0]


def test_probes_subset_and_scores():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    emb = rng.normal(size=(100, 16)) + np.eye(4)[y] @ rng.normal(size=(4, 16)) * 3
    idx = label_subset(y, 0.01, seed=0)
    assert len(idx) == 4 and set(y[idx]) == {0, 1, 2, 3}
    assert len(label_subset(y, 0.1, seed=0)) == 10
    full = linear_probe(emb, y, emb, y, ["a", "b", "c", "d"], fraction=1.0)
    noise = linear_probe(
        rng.normal(size=(100, 16)), y, rng.normal(size=(100, 16)), y, ["a", "b", "c", "d"], fraction=1.0
    )
    assert full["auc"] > 0.95 and full["n_labelled"] == 100 and noise["auc"] < 0.75


def test_kfold_summary():
    s = kfold_summary([{"accuracy": 0.5, "f1": 0.4}, {"accuracy": 0.7, "f1": float("nan")}])
    assert s["accuracy"] == pytest.approx((0.6, 0.1)) and s["f1"] == pytest.approx((0.4, 0.0))


def test_write_report_folder(cnn, tmp_path):
    cfg, model, test, gallery = cnn
    res = evaluate_model(model, cfg, test, gallery)
    prov = {
        "dataset": dataset_label(cfg, 32),
        "model_version": "v1",
        "config_fingerprint": cfg.fingerprint(),
        "seed": {"train": 0},
    }
    rows = {"LDC-Model (ours)": res.metrics, "ResNet18": {**res.metrics, "accuracy": 0.1}}
    tables = {k: "Table 3/5: CNN vs baselines (paper 2)" for k in rows}
    files = write_report(
        tmp_path,
        ReportInput(
            cfg=cfg,
            main=res,
            rows=rows,
            row_tables=tables,
            provenance=prov,
            test_labels=test.labels,
            main_row="LDC-Model (ours)",
            kfold=[res.metrics, res.metrics],
        ),
    )
    for name in ("metrics.json", "report.md", "roc.png", "pr.png", "confusion.png", "retrieval.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["provenance"]["model_version"] == "v1" and doc["metrics"]["accuracy"] == res.metrics["accuracy"]
    assert doc["kfold_summary"]["accuracy"]["std"] == 0.0
    md = (tmp_path / "report.md").read_text()
    assert "PHANTOM (synthetic)" in md and "Table 3 (paper 2)" in md and "| ResNet18 | 0.100 |" in md
    assert "mean ± std" in md and "synthetic phantom data" in md
    # The HTML page: the same tables as real <table>s, every figure embedded beside them, one file.
    page = (tmp_path / "report.html").read_text()
    assert files["html"] == tmp_path / "report.html"
    assert page.count("<table>") == md.count("\n|---") >= 3
    assert "<td>ResNet18</td>" in page and "Synthetic phantom data" in page
    assert all(f'id="fig-{k}"' in page for k in ("roc", "pr", "confusion", "retrieval"))
    assert page.count('src="data:image/png;base64,') == 4 and 'src="roc.png' not in page


def test_report_page_renders_no_markup_from_names(tmp_path):
    """Row names and profile text are data: a '<script>' in them comes out escaped."""
    from lungsearch.evaluation.html import render_report_html

    page = render_report_html(
        "t <b>x</b>", "| method | v |\n| --- | --- |\n| <script>alert(1)</script> | 1 |\n", {}, synthetic=False
    )
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>x</b>" not in page
    assert "Synthetic phantom data" not in page
