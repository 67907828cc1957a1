"""Chance levels: the exact values against a permutation estimate (within 0.01), majority class."""

from __future__ import annotations

import numpy as np
import pytest

from lungsearch import metrics as M
from lungsearch.evaluation.chance import (
    chance_map_at_k,
    chance_ndcg,
    chance_p_at_k,
    majority_class,
    per_query_chance,
    permutation_chance,
)


def _rel_single(seed=0, q=40, n=150, c=5):
    rng = np.random.default_rng(seed)
    return M.label_relevance(rng.integers(0, c, q), rng.integers(0, c, n))


def _rel_multi(seed=1, q=40, n=150, c=6):
    rng = np.random.default_rng(seed)
    mq = (rng.random((q, c)) < 0.25).astype(np.float32)
    mg = (rng.random((n, c)) < 0.25).astype(np.float32)
    return M.label_relevance(mq, mg)


@pytest.mark.parametrize("rel", [_rel_single(), _rel_multi()], ids=["single-label", "multi-label graded"])
def test_exact_chance_matches_permutation(rel):
    for k in (1, 5, 10):
        exact = chance_map_at_k(rel, k)
        est, _ = permutation_chance(rel, lambda r, k=k: M.map_at_k(r, k), n_perm=300, seed=k)
        assert abs(exact - est) < 0.01, (k, exact, est)
    est, _ = permutation_chance(rel, lambda r: M.ndcg_at_k(r, None), n_perm=300)
    assert abs(chance_ndcg(rel) - est) < 0.01
    est, _ = permutation_chance(rel, lambda r: float((r[:, 0] > 0).mean()), n_perm=300)
    assert abs(chance_p_at_k(rel) - est) < 0.01


def test_chance_edge_cases():
    rel = np.zeros((3, 20), dtype=int)
    rel[0, :] = 1  # every gallery case relevant: AP = 1
    pq = per_query_chance(rel, 10)
    assert pq["ap"][0] == pytest.approx(1.0) and pq["ap"][1] == 0.0 and pq["ndcg_all"][0] == pytest.approx(1.0)


def test_majority_class():
    m = majority_class(np.array([0, 0, 0, 1, 2]), np.array([0, 1, 2, 0]), 3)
    assert m["class"] == 0 and m["accuracy"] == 0.5 and m["recall"] == pytest.approx(1 / 3) and m["auc"] == 0.5
