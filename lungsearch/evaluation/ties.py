"""Ranking with ties: Hamming distances are small integers, so many gallery codes sit at the same
distance from a query (all of them, when the codes collapse). A stable sort then ranks tied codes in
gallery order, and mAP@k measures how the gallery happens to be ordered (by label, by patient, by
generation seed) instead of the codes. Two stated tie policies:

* ``random`` (the default): equal distances are ranked in a seeded random order
  (:func:`rank_with_ties`); reproducible for a seed, unbiased over seeds.
* ``average``: the metric is averaged over ``draws`` seeded random tie orders
  (:func:`tie_averaged`), the Monte Carlo estimate of its expectation over all tie orders. P@k has
  an exact tie-averaged form (:func:`tie_averaged_precision_at_k`, McSherry & Najork, ECIR 2008:
  a tie group cut by position k contributes its relevant fraction).

    >>> order = rank_by_hamming(q_packed, g_packed, seed=0)
    >>> lungsearch.metrics.map_at_k(np.take_along_axis(rel, order, 1), 10)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lungsearch.errors import InvalidRequestError

__all__ = ["TIE_POLICIES", "rank_with_ties", "rank_by_hamming", "tie_averaged", "tie_averaged_precision_at_k"]

TIE_POLICIES = ("random", "average")


def rank_with_ties(dist: np.ndarray, *, seed: int = 0, k: int | None = None) -> np.ndarray:
    """Indices ``[Q, k]`` by increasing ``dist`` ``[Q, N]``, equal distances in a random order drawn
    from ``seed`` (one independent draw per query row)."""
    d = np.asarray(dist)
    if d.ndim != 2:
        raise InvalidRequestError(f"distances must be [queries, gallery], got shape {d.shape}")
    key = np.random.default_rng(seed).random(d.shape)
    order = np.lexsort((key, d), axis=1)  # last key is primary: distance, then the random key
    return order[:, :k] if k else order


def rank_by_hamming(
    query_packed: np.ndarray, db_packed: np.ndarray, k: int | None = None, *, seed: int = 0
) -> np.ndarray:
    """:func:`lungsearch.metrics.rank_by_hamming` with the ``random`` tie policy."""
    from lungsearch.models.hashing import hamming_distance

    return rank_with_ties(hamming_distance(query_packed, db_packed), seed=seed, k=k)


def tie_averaged(
    dist: np.ndarray, rel: np.ndarray, metric: Callable[[np.ndarray], float], *, draws: int = 32, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) of ``metric(ranked relevance)`` over ``draws`` seeded random tie orders.

    Args:
        dist: distances ``[Q, N]`` (smaller = closer).
        rel: relevance ``[Q, N]`` of each gallery item to each query (same columns as ``dist``).
        metric: e.g. ``lambda r: lungsearch.metrics.map_at_k(r, 10)``.
    """
    rel = np.asarray(rel)
    if rel.shape != np.asarray(dist).shape:
        raise InvalidRequestError(f"rel {rel.shape} and dist {np.asarray(dist).shape} differ")
    vals = [metric(np.take_along_axis(rel, rank_with_ties(dist, seed=seed + i), axis=1)) for i in range(draws)]
    return float(np.mean(vals)), float(np.std(vals))


def tie_averaged_precision_at_k(dist: np.ndarray, rel: np.ndarray, k: int) -> float:
    """Exact expected P@k over all orders of tied distances (binary relevance ``rel > 0``).

    Items strictly closer than the k-th distance count fully; the tie group at the k-th distance
    fills the remaining ``m`` places, so it contributes ``m x`` (its relevant fraction)."""
    d, r = np.asarray(dist), np.asarray(rel) > 0
    n = d.shape[1]
    if not 1 <= k <= n:
        raise InvalidRequestError(f"k must be in [1, {n}], got {k}")
    kth = np.sort(d, axis=1)[:, k - 1 : k]
    closer, tied = d < kth, d == kth
    places = k - closer.sum(1)
    hits = (closer & r).sum(1) + places * (tied & r).sum(1) / tied.sum(1)
    return float((hits / k).mean())
