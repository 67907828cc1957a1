"""Per-case outcomes of one evaluated model (or reference row), and score functions over case
subsets, so that :mod:`lungsearch.evaluation.stats` can bootstrap any reported metric.

An *outcome* is a dict of arrays over the test cases (JSON-able through :func:`to_json`):

* ``labels`` (single-label int) and ``probs`` ``[N, C]`` when the model classifies;
* ``ap10``, ``ndcg_all``, ``p_at_1`` per query (the profile's own ranking against the gallery),
  ``top1`` the label of the first retrieved gallery case (single-label);
* ``embedding`` ``[N, D]`` for the silhouette, ``codes`` for the collapse check.

``scorer(outcome, "accuracy")`` returns ``f(idx) -> float`` over a (resampled) index array.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from lungsearch import metrics as M

__all__ = ["METRICS", "outcome_from_ranking", "outcome_from_predictions", "scorer", "to_json", "from_json"]

#: Metrics a score function exists for (``scorer``), with what they need in the outcome.
METRICS = {
    "accuracy": "probs",
    "f1": "probs",
    "recall": "probs",
    "auc": "probs",
    "map10": "ap10",
    "ndcg_all": "ndcg_all",
    "p_at_1": "p_at_1",
    "top1_f1": "top1",
    "silhouette": "embedding",
}


def outcome_from_ranking(
    order: np.ndarray,
    rel_all: np.ndarray,
    *,
    k: int = 10,
    labels: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-query retrieval outcome of a ranking ``order`` ``[Q, R]`` (indices into the gallery of
    ``rel_all``'s ``N`` columns; ``R <= N``: an LSH profile ranks only its candidates, so NDCG is
    over those R positions, against the ideal ordering's first R)."""
    ranked = np.take_along_axis(rel_all, order, axis=1)
    k = min(k, ranked.shape[1])
    r = (ranked[:, :k] > 0).astype(np.float64)
    prec = r.cumsum(1) / np.arange(1, k + 1)
    n_rel = r.sum(1)
    ap = np.where(n_rel > 0, (prec * r).sum(1) / np.maximum(n_rel, 1), 0.0)
    g = ranked.astype(np.float64)
    disc = 1.0 / np.log2(np.arange(2, g.shape[1] + 2))
    dcg = ((2.0**g - 1) * disc).sum(1)
    ideal = -np.sort(-rel_all.astype(np.float64), axis=1)[:, : g.shape[1]]
    idcg = ((2.0**ideal - 1) * disc).sum(1)
    out = {
        "ap10": ap,
        "ndcg_all": np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0),
        "p_at_1": (ranked[:, 0] > 0).astype(np.float64),
    }
    if labels is not None and gallery_labels is not None and np.asarray(labels).ndim == 1:
        out["top1"] = np.asarray(gallery_labels)[order[:, 0]]
    return out


def outcome_from_predictions(cfg, test, gallery, pred, gpred) -> dict[str, np.ndarray]:
    """Outcome of a trained model: its ``Predictions`` on the test split (and on the gallery)."""
    from lungsearch.evaluation.core import rank_gallery

    out: dict[str, np.ndarray] = {}
    single = not test.multilabel
    if single:
        out["labels"] = np.asarray(test.labels)
    if (
        pred.probs is not None
        and single
        and not (cfg.model.pretraining is not None and "probe" not in cfg.train.stages)
    ):
        out["probs"] = np.asarray(pred.probs, dtype=np.float64)
    if gallery is not None and gpred is not None:
        rel = M.label_relevance(
            test.multi_hot if test.multilabel else test.labels,
            gallery.multi_hot if gallery.multilabel else gallery.labels,
        )
        out.update(
            outcome_from_ranking(
                rank_gallery(cfg, pred, gpred),
                rel,
                labels=test.labels if single else None,
                gallery_labels=gallery.labels if single else None,
            )
        )
    if pred.embedding is not None:
        out["embedding"] = np.asarray(pred.embedding, dtype=np.float32)
    if pred.codes is not None:
        out["codes"] = (np.asarray(pred.codes) > 0).astype(np.int8)
    return out


def _macro(y: np.ndarray, p: np.ndarray, n_cls: int, what: str) -> float:
    """Macro F1 or recall over the classes that occur in ``y`` or ``p`` (scikit-learn's default
    label set, ``zero_division=0``), from one bincount: fast enough to bootstrap. (Averaging over
    every class would score a resample that lost a rare class as if that class were missed.)"""
    cm = np.bincount(
        np.asarray(y, dtype=np.int64) * n_cls + np.asarray(p, dtype=np.int64), minlength=n_cls * n_cls
    ).reshape(n_cls, n_cls)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    seen = (support > 0) | (predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n_cls), where=support > 0)
    if what == "recall":
        return float(recall[seen].mean())
    precision = np.divide(tp, predicted, out=np.zeros(n_cls), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n_cls), where=denom > 0)
    return float(f1[seen].mean())


def _auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest AUC over the classes present in this (re)sample (Mann-Whitney ranks; ties 1/2)."""
    from scipy.stats import rankdata

    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    vals = []
    for c in present:
        pos = y == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        r = rankdata(probs[:, c])
        vals.append((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(vals))


def scorer(outcome: dict[str, Any], metric: str) -> Callable[[np.ndarray], float]:
    """``f(idx)``: ``metric`` on the test cases ``idx`` (repeats allowed) of ``outcome``."""
    need = METRICS.get(metric)
    if need is None or need not in outcome:
        raise KeyError(f"outcome has no {metric!r}")
    if metric in ("map10", "ndcg_all", "p_at_1"):
        arr = np.asarray(outcome[need], dtype=np.float64)
        return lambda idx: float(arr[idx].mean())
    y = np.asarray(outcome["labels"])
    if metric == "top1_f1":
        top = np.asarray(outcome["top1"])
        n_cls = int(max(y.max(), top.max()) + 1)
        return lambda idx: _macro(y[idx], top[idx], n_cls, "f1")
    if metric == "silhouette":
        emb = np.asarray(outcome["embedding"], dtype=np.float64)

        def sil(idx: np.ndarray) -> float:
            yy = y[idx]
            if not 1 < len(np.unique(yy)) < len(idx):
                return float("nan")
            return float(M.silhouette(emb[idx], yy))

        return sil
    probs = np.asarray(outcome["probs"], dtype=np.float64)
    n_cls = probs.shape[1]
    pred = probs.argmax(1)
    if metric == "accuracy":
        hit = (pred == y).astype(np.float64)
        return lambda idx: float(hit[idx].mean())
    if metric in ("f1", "recall"):
        return lambda idx: _macro(y[idx], pred[idx], n_cls, metric)
    return lambda idx: _auc(y[idx], probs[idx])


def to_json(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in outcome.items()}


def from_json(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in d.items()}
