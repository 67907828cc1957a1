"""Evaluation metrics for classification and retrieval (scikit-learn where it has them).

Conventions:
    * Single-label: ``y_true`` int ``[N]``, ``y_prob`` ``[N, C]`` (softmax).
    * Multi-label: ``y_true`` binary ``[N, C]``, ``y_prob`` ``[N, C]`` (sigmoid), threshold 0.5.
    * Retrieval: ``rel`` ``[Q, R]`` is the relevance of each query's ranked results (row order =
      rank order). With label sets, relevance = size of the label intersection
      (:func:`label_relevance`); binary relevance = intersection > 0.

Not a Prometheus module: this is the model library's evaluation maths.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from lungsearch.errors import InvalidRequestError

__all__ = [
    "classification_metrics",
    "label_relevance",
    "rank_by_cosine",
    "rank_by_hamming",
    "map_at_k",
    "ndcg_at_k",
    "retrieval_prf",
    "silhouette",
    "intra_inter_distance",
    "inference_time_per_sample",
    "dice",
]


def _multihot(y: np.ndarray, c: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:
        return (y > 0).astype(np.int64)
    c = int(c if c is not None else y.max() + 1)
    out = np.zeros((y.shape[0], c), dtype=np.int64)
    out[np.arange(y.shape[0]), y.astype(np.int64)] = 1
    return out


def classification_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, targets: Sequence[str], threshold: float = 0.5
) -> dict:
    """Accuracy, precision, recall (= sensitivity), F1 (macro and per class), ROC-AUC (macro and
    per class, one-vs-rest) and the confusion matrix.

    Returns a dict of floats plus ``per_class`` (``{target: {precision, recall, f1, auc, support}}``)
    and ``confusion_matrix`` (list of lists; for multi-label, one 2×2 matrix per class). AUC of a
    class with only one label value in ``y_true`` is NaN and left out of the macro mean.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    c = len(targets)
    if y_prob.ndim != 2 or y_prob.shape[1] != c:
        raise InvalidRequestError(f"y_prob must be [N, {c}], got {y_prob.shape}")
    multilabel = y_true.ndim == 2
    if multilabel:
        y_pred = (y_prob >= threshold).astype(np.int64)
        y_bin = (y_true > 0).astype(np.int64)
        acc = float(accuracy_score(y_bin, y_pred))  # exact-match (subset) accuracy
        cm = multilabel_confusion_matrix(y_bin, y_pred).tolist()
        labels_for_prf = None
    else:
        y_pred = y_prob.argmax(1)
        y_bin = _multihot(y_true, c)
        acc = float(accuracy_score(y_true, y_pred))
        cm = confusion_matrix(y_true, y_pred, labels=list(range(c))).tolist()
        labels_for_prf = list(range(c))
    p, r, f, s = precision_recall_fscore_support(
        y_bin if multilabel else y_true, y_pred, labels=labels_for_prf, average=None, zero_division=0
    )
    aucs = []
    for k in range(c):
        col = y_bin[:, k]
        aucs.append(float(roc_auc_score(col, y_prob[:, k])) if 0 < col.sum() < len(col) else float("nan"))
    finite = [a for a in aucs if np.isfinite(a)]
    per_class = {
        t: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "auc": aucs[k], "support": int(s[k])}
        for k, t in enumerate(targets)
    }
    return {
        "accuracy": acc,
        "precision_macro": float(np.mean(p)),
        "recall_macro": float(np.mean(r)),
        "sensitivity_macro": float(np.mean(r)),
        "f1_macro": float(np.mean(f)),
        "auc_macro": float(np.mean(finite)) if finite else float("nan"),
        "per_class": per_class,
        "confusion_matrix": cm,
    }


def label_relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Relevance ``[Q, N]`` = size of the label intersection (multi-hot ``[*, C]``) or 1/0
    for equal/different single labels (int ``[*]``)."""
    q, d = np.asarray(query_labels), np.asarray(db_labels)
    if q.ndim == 1 and d.ndim == 1:
        return (q[:, None] == d[None, :]).astype(np.int64)
    return (_multihot(q) @ _multihot(d).T).astype(np.int64)


def rank_by_cosine(queries: np.ndarray, db: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices ``[Q, k]`` of the database rows by decreasing cosine similarity (stable ties)."""
    qn = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    dn = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    order = np.argsort(-(qn @ dn.T), axis=1, kind="stable")
    return order[:, :k] if k else order


def rank_by_hamming(query_packed: np.ndarray, db_packed: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices ``[Q, k]`` of the database codes by increasing Hamming distance (stable ties)."""
    from lungsearch.models.hashing import hamming_distance

    order = np.argsort(hamming_distance(query_packed, db_packed), axis=1, kind="stable")
    return order[:, :k] if k else order


def map_at_k(rel: np.ndarray, k: int) -> float:
    """Mean average precision at ``k`` with binary relevance ``rel > 0`` (label overlap).

    ``AP@k = Σ_{j≤k} P@j · r_j / Σ_{j≤k} r_j`` (0 when nothing relevant is in the top k), the
    definition used by the deep-hashing literature the seed paper follows (HashNet, DPSH).
    """
    r = (np.asarray(rel)[:, :k] > 0).astype(np.float64)
    if r.ndim != 2:
        raise InvalidRequestError("rel must be [queries, ranked results]")
    hits = r.cumsum(1)
    prec = hits / np.arange(1, r.shape[1] + 1)
    n_rel = r.sum(1)
    ap = np.where(n_rel > 0, (prec * r).sum(1) / np.maximum(n_rel, 1), 0.0)
    return float(ap.mean()) if len(ap) else float("nan")


def ndcg_at_k(rel: np.ndarray, k: int | None = None, ideal_rel: np.ndarray | None = None) -> float:
    """Mean NDCG@k with graded relevance (e.g. label-intersection size); ``k=None`` is NDCG@ALL.

    ``DCG@k = Σ_{j≤k} (2^{r_j} - 1) / log2(j + 1)``; the ideal DCG sorts ``ideal_rel`` (the
    relevance of the *whole* database per query, when given) or else ``rel`` itself. Queries
    with no relevant item score 0.
    """
    r = np.asarray(rel, dtype=np.float64)
    k = r.shape[1] if k is None else k
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = ((2.0 ** r[:, :k] - 1) * disc[: min(k, r.shape[1])]).sum(1)
    ideal_src = r if ideal_rel is None else np.asarray(ideal_rel, dtype=np.float64)
    ideal = -np.sort(-ideal_src, axis=1)[:, :k]
    idcg = ((2.0**ideal - 1) * disc[: ideal.shape[1]]).sum(1)
    nd = np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0)
    return float(nd.mean()) if len(nd) else float("nan")


def retrieval_prf(y_true: np.ndarray, top1_labels: np.ndarray, targets: Sequence[str]) -> dict:
    """Precision, recall and F1 of the top-1 retrieved case's label as the diagnosis (paper 3),
    per class (one class positive, the rest negative) and macro-averaged."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(targets)))
    p, r, f, s = precision_recall_fscore_support(
        np.asarray(y_true), np.asarray(top1_labels), labels=labels, average=None, zero_division=0
    )
    return {
        "precision_macro": float(np.mean(p)),
        "recall_macro": float(np.mean(r)),
        "f1_macro": float(np.mean(f)),
        "per_class": {
            t: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, t in enumerate(targets)
        },
    }


def silhouette(emb: np.ndarray, labels: np.ndarray, metric: str = "euclidean") -> float:
    """Mean silhouette coefficient (scikit-learn) of embeddings grouped by label."""
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(silhouette_score(np.asarray(emb), labels, metric=metric))


def intra_inter_distance(emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Paper 3's class-separation measures (Euclidean):

    * ``intra``: mean distance over all same-class pairs (``x ≠ y``);
    * ``inter``: mean over class pairs ``i < j`` of the mean distance between their samples;
    * ``silhouette_paper``: ``(inter - intra) / max(inter, intra)`` (paper 3's global s(x),
      not scikit-learn's per-sample mean: see :func:`silhouette`).
    """
    x = np.asarray(emb, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    intra_sum, intra_n = 0.0, 0
    for c in classes:
        idx = np.flatnonzero(y == c)
        if len(idx) > 1:
            block = d[np.ix_(idx, idx)]
            intra_sum += block.sum()  # diagonal is 0; ordered pairs counted twice, as is n below
            intra_n += len(idx) * (len(idx) - 1)
    inter_vals = []
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            ia, ib = np.flatnonzero(y == classes[a]), np.flatnonzero(y == classes[b])
            inter_vals.append(d[np.ix_(ia, ib)].mean())
    intra = intra_sum / intra_n if intra_n else float("nan")
    inter = float(np.mean(inter_vals)) if inter_vals else float("nan")
    s = (inter - intra) / max(inter, intra) if intra_n and inter_vals and max(inter, intra) > 0 else float("nan")
    return {"intra": float(intra), "inter": inter, "silhouette_paper": float(s)}


def inference_time_per_sample(fn: Callable[[], object], batch_size: int, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` (one batch) divided by ``batch_size``, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / batch_size


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap ``2|A & B| / (|A| + |B|)`` of two boolean masks of the same shape (1.0 when
    both are empty: nothing to find, nothing found).

    Raises:
        InvalidRequestError: the shapes differ.
    """
    a, b = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if a.shape != b.shape:
        raise InvalidRequestError(f"dice needs masks of one shape, got {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total
