"""Evaluate a trained model on a test split: classification and retrieval numbers.

Retrieval follows how the product searches: the *gallery* is what ``build_index`` would index
(the training and validation cases), the *queries* are the held-out test cases, and a result is
relevant when it shares a label with the query (graded by the number of shared labels for NDCG).
The ranking is the profile's own:

* ``hamming`` index (cxr-hash): Hamming distance of the learned codes ``sign(z)`` (paper 5, eq. 11);
* ``lsh`` index (ct-ild): the ``index.candidates`` nearest LSH codes re-ranked by cosine (paper 3,
  eq. 7-9);
* ``float`` (others): cosine similarity of the embeddings.

Cosine ranking is always reported too (``map10_cosine``) so codes can be compared with floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lungsearch import metrics as M
from lungsearch.training.inference import Predictions, predict

if TYPE_CHECKING:
    from lungsearch.config import ProfileConfig
    from lungsearch.models.base import LungModel
    from lungsearch.training.cases import CaseTable

__all__ = ["EvalResult", "evaluate_model", "rank_gallery", "precision_at_k_curve", "dataset_label"]


@dataclass
class EvalResult:
    """Scalar metrics (flat, JSON-ready) plus the detail behind the figures."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    predictions: Predictions | None = None


def dataset_label(cfg: "ProfileConfig", n_cases: int | None = None) -> str:
    """How a table names its data: phantom (synthetic) or a real dataset, plus the seeds."""
    d = cfg.data
    if d.source == "phantom" and d.phantom is not None:
        n = n_cases if n_cases is not None else d.phantom.n
        return (
            f"PHANTOM (synthetic) data: kind={d.phantom.kind}, {n} cases, generator seed {d.phantom.seed}, "
            f"split seed {d.seed}, training seed {cfg.train.seed}"
        )
    return f"real data: source={d.source}, split seed {d.seed}, training seed {cfg.train.seed}"


def _lsh_rerank(q_emb, q_codes, g_emb, g_codes, candidates: int) -> np.ndarray:
    from lungsearch.models.hashing import hamming_distance, pack_codes

    ham = hamming_distance(pack_codes(q_codes), pack_codes(g_codes))
    c = min(candidates, g_emb.shape[0])
    cand = np.argsort(ham, axis=1, kind="stable")[:, :c]
    qn = q_emb / np.maximum(np.linalg.norm(q_emb, axis=1, keepdims=True), 1e-12)
    gn = g_emb / np.maximum(np.linalg.norm(g_emb, axis=1, keepdims=True), 1e-12)
    sims = np.einsum("qd,qcd->qc", qn, gn[cand])
    return np.take_along_axis(cand, np.argsort(-sims, axis=1, kind="stable"), axis=1)


def rank_gallery(cfg: "ProfileConfig", q: Predictions, g: Predictions, kind: str | None = None) -> np.ndarray:
    """Gallery indices ``[Q, R]`` per query in the profile's ranking order (see module doc)."""
    kind = kind or (cfg.index.kind if cfg.index is not None else "float")
    if kind == "hamming" and q.codes is not None:
        from lungsearch.evaluation.ties import rank_by_hamming  # equal distances in a seeded random order
        from lungsearch.models.hashing import pack_codes

        return rank_by_hamming(pack_codes(q.codes), pack_codes(g.codes))
    if kind == "lsh" and q.codes is not None:
        return _lsh_rerank(q.embedding, q.codes, g.embedding, g.codes, cfg.index.candidates if cfg.index else 100)
    return M.rank_by_cosine(q.embedding, g.embedding)


def precision_at_k_curve(ranked_rel: np.ndarray, k: int = 20) -> np.ndarray:
    r = (np.asarray(ranked_rel)[:, :k] > 0).astype(np.float64)
    return (r.cumsum(1) / np.arange(1, r.shape[1] + 1)).mean(0)


def _labels_for_relevance(table: "CaseTable") -> np.ndarray:
    return table.multi_hot if table.multilabel else table.labels


def evaluate_model(
    model: "LungModel",
    cfg: "ProfileConfig",
    test: "CaseTable",
    gallery: "CaseTable | None" = None,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    gallery_predictions: Predictions | None = None,
) -> EvalResult:
    """Classification and retrieval metrics of ``model`` on ``test`` (queries) against ``gallery``.

    Returns metric names without a split prefix: ``accuracy``, ``auc``, ``f1``, ``precision``,
    ``recall`` (classification, when the model has a classifier); ``map10`` (profile ranking),
    ``map10_cosine``, ``ndcg_all``, ``p_at_1``, ``top1_precision/recall/f1`` (single-label),
    ``silhouette`` (scikit-learn, test embeddings), ``silhouette_paper``, ``intra``, ``inter``
    (paper 3), ``text2image_r1``/``r10`` (CLIP), ``infer_ms_per_case``, ``kept_steps`` /
    ``kept_units`` (the SG-Bi-LSTM's sparse gate over the test cases).
    """
    if hasattr(model, "reset_gate_stats"):
        model.reset_gate_stats()
    pred = predict(model, test, batch_size=batch_size, device=device)
    out: dict[str, float] = {"n_test": float(len(test)), "infer_ms_per_case": 1000.0 * pred.seconds / max(len(test), 1)}
    # paper 1: fractions of the test cases' steps and of the units the sparse gate keeps
    out.update(model.gate_stats() if hasattr(model, "gate_stats") else {})
    details: dict[str, Any] = {}
    targets = list(cfg.data.targets)
    if pred.probs is not None and not (cfg.model.pretraining is not None and "probe" not in cfg.train.stages):
        cm = M.classification_metrics(test.labels, pred.probs, targets)
        out.update(
            accuracy=cm["accuracy"],
            auc=cm["auc_macro"],
            f1=cm["f1_macro"],
            precision=cm["precision_macro"],
            recall=cm["recall_macro"],
        )
        details["classification"] = cm
    if gallery is not None and len(gallery) > 0:
        gp = gallery_predictions or predict(model, gallery, batch_size=batch_size, device=device)
        details["gallery_predictions"] = gp
        rel_all = M.label_relevance(_labels_for_relevance(test), _labels_for_relevance(gallery))
        order = rank_gallery(cfg, pred, gp)
        ranked = np.take_along_axis(rel_all, order, axis=1)
        k = min(10, ranked.shape[1])
        out["map10"] = M.map_at_k(ranked, k)
        out["ndcg_all"] = M.ndcg_at_k(ranked, None, ideal_rel=rel_all)
        out["p_at_1"] = float((ranked[:, 0] > 0).mean())
        curves = {"profile ranking": precision_at_k_curve(ranked)}
        cos_order = M.rank_by_cosine(pred.embedding, gp.embedding)
        cos_ranked = np.take_along_axis(rel_all, cos_order, axis=1)
        out["map10_cosine"] = M.map_at_k(cos_ranked, k)
        out["ndcg_all_cosine"] = M.ndcg_at_k(cos_ranked, None, ideal_rel=rel_all)
        curves["cosine"] = precision_at_k_curve(cos_ranked)
        if pred.codes is not None:
            from lungsearch.evaluation.ties import rank_by_hamming  # equal distances in a seeded random order
            from lungsearch.models.hashing import pack_codes

            ham_order = rank_by_hamming(pack_codes(pred.codes), pack_codes(gp.codes))
            ham_ranked = np.take_along_axis(rel_all, ham_order, axis=1)
            out["map10_hamming"] = M.map_at_k(ham_ranked, k)
            out["ndcg_all_hamming"] = M.ndcg_at_k(ham_ranked, None, ideal_rel=rel_all)
            curves["hamming (codes only)"] = precision_at_k_curve(ham_ranked)
        details["retrieval_curves"] = curves
        if not test.multilabel:
            prf = M.retrieval_prf(test.labels, gallery.labels[order[:, 0]], targets)
            out.update(top1_precision=prf["precision_macro"], top1_recall=prf["recall_macro"], top1_f1=prf["f1_macro"])
            details["top1_retrieval"] = prf
    single = test.labels if not test.multilabel else None
    # silhouette needs 2 <= classes <= cases - 1 (tiny test splits can have one case per class)
    if single is not None and 1 < len(np.unique(single)) < len(test):
        out["silhouette"] = M.silhouette(pred.embedding, single)
        out.update(M.intra_inter_distance(pred.embedding, single))
    if pred.text_embedding is not None:
        sims = (
            pred.text_embedding
            @ (pred.embedding / np.maximum(np.linalg.norm(pred.embedding, axis=1, keepdims=True), 1e-12)).T
        )
        rank_of_own = (sims > np.diag(sims)[:, None]).sum(1)  # reports -> their own image among the test images
        out["text2image_r1"] = float((rank_of_own < 1).mean())
        out["text2image_r10"] = float((rank_of_own < 10).mean())
    return EvalResult(
        metrics={k: float(v) for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))},
        details=details,
        predictions=pred,
    )
