"""Chance levels of the reported metrics on the *same* queries, gallery and labels.

Random ranking (every permutation of the gallery equally likely), exactly:

* ``P@k``: ``R / N`` per query (``R`` relevant among ``N`` gallery cases);
* ``mAP@k`` as :func:`lungsearch.metrics.map_at_k` defines AP@k (precision at each hit over the
  hits in the top k, 0 without a hit): the number of hits ``m`` in the top k is hypergeometric
  ``(N, R, k)``; given ``m``, each top-k position holds a hit with probability ``m / k`` and a hit
  at rank ``j`` has ``1 + (j - 1)(m - 1)/(k - 1)`` hits at or above it on average, so
  ``E[AP | m] = (1/k) Σ_j (1/j)(1 + (j - 1)(m - 1)/(k - 1))`` for ``m >= 1``;
* ``NDCG@k``: every rank holds a uniformly drawn gallery case, so ``E[DCG@k] = mean gain ×
  Σ_{j<=k} 1/log2(j + 1)`` and the ideal DCG is fixed per query.

:func:`permutation_chance` estimates the same by shuffling (the tests check the two agree within
0.01). Classification chance: the majority class of the training labels (its accuracy, macro
recall 1/C, macro-F1) and AUC 0.5.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import hypergeom

from lungsearch import metrics as M

__all__ = [
    "chance_map_at_k",
    "chance_ndcg",
    "chance_p_at_k",
    "majority_class",
    "per_query_chance",
    "permutation_chance",
]


def _ap_given_hits(k: int) -> np.ndarray:
    """``E[AP@k | m hits in the top k]`` for m = 0..k."""
    j = np.arange(1, k + 1, dtype=np.float64)
    out = np.zeros(k + 1)
    for m in range(1, k + 1):
        inner = 1.0 + ((j - 1) * (m - 1) / (k - 1) if k > 1 else 0.0)
        out[m] = float((inner / j).sum() / k)
    return out


def per_query_chance(rel: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Per-query expected ``ap`` (AP@k), ``p_at_1``, ``p_at_k`` and ``ndcg_all`` under random ranking.

    ``rel``: graded relevance ``[Q, N]`` of every gallery case to every query (unranked).
    """
    rel = np.asarray(rel, dtype=np.float64)
    n = rel.shape[1]
    k = min(k, n)
    r_cnt = (rel > 0).sum(1)
    ap_m = _ap_given_hits(k)
    ms = np.arange(k + 1)
    ap = np.array([float((hypergeom.pmf(ms, n, int(r), k) * ap_m).sum()) for r in r_cnt])
    disc = 1.0 / np.log2(np.arange(2, n + 2))
    gain = (2.0**rel - 1).mean(1)
    ideal = -np.sort(-rel, axis=1)
    idcg = ((2.0**ideal - 1) * disc).sum(1)
    ndcg = np.where(idcg > 0, gain * disc.sum() / np.maximum(idcg, 1e-12), 0.0)
    return {"ap": ap, "p_at_1": r_cnt / n, "p_at_k": r_cnt / n, "ndcg_all": ndcg}


def chance_map_at_k(rel: np.ndarray, k: int = 10) -> float:
    """Exact expected mAP@k of a random ranking (module doc)."""
    return float(per_query_chance(rel, k)["ap"].mean())


def chance_p_at_k(rel: np.ndarray, k: int = 1) -> float:
    """Exact expected P@k of a random ranking (``R / N`` per query, whatever ``k``)."""
    return float((np.asarray(rel) > 0).mean())


def chance_ndcg(rel: np.ndarray) -> float:
    """Exact expected NDCG@ALL of a random ranking."""
    return float(per_query_chance(rel, 1)["ndcg_all"].mean())


def permutation_chance(
    rel: np.ndarray, metric: Callable[[np.ndarray], float], n_perm: int = 200, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) of ``metric(ranked relevance)`` over ``n_perm`` random rankings per query."""
    rel = np.asarray(rel)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_perm):
        order = np.argsort(rng.random(rel.shape), axis=1)
        vals.append(metric(np.take_along_axis(rel, order, axis=1)))
    return float(np.mean(vals)), float(np.std(vals))


def majority_class(train_labels: np.ndarray, test_labels: np.ndarray, n_classes: int) -> dict[str, float | int]:
    """The majority-class predictor's test numbers (single-label): ``accuracy``, ``recall`` (macro,
    1/C when every class occurs), ``f1`` (macro), ``auc`` 0.5, and the class it predicts."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    cls = int(np.bincount(train_labels, minlength=n_classes).argmax())
    probs = np.zeros((len(test_labels), n_classes))
    probs[:, cls] = 1.0
    cm = M.classification_metrics(test_labels, probs, [str(i) for i in range(n_classes)])
    return {
        "class": cls,
        "accuracy": float(cm["accuracy"]),
        "recall": float(cm["recall_macro"]),
        "f1": float(cm["f1_macro"]),
        "auc": 0.5,
    }
