"""lungsearch.evaluation.percase: per-query outcomes, including a ranking over only the candidates
(an LSH profile re-ranks its top candidates, so the ranking is shorter than the gallery)."""

from __future__ import annotations

import numpy as np

from lungsearch.evaluation.percase import outcome_from_ranking


def test_a_ranking_shorter_than_the_gallery_scores_like_the_full_one_on_its_positions():
    rng = np.random.default_rng(0)
    q, n, r = 6, 40, 25  # 25 candidates out of 40 gallery cases
    rel = (rng.random((q, n)) < 0.3).astype(np.float64)
    full = np.argsort(-rel - 0.01 * rng.random((q, n)), axis=1)  # near-ideal full ranking
    short = full[:, :r]
    a, b = outcome_from_ranking(full, rel), outcome_from_ranking(short, rel)
    assert np.allclose(a["ap10"], b["ap10"]) and np.allclose(a["p_at_1"], b["p_at_1"])
    # NDCG over the R ranked positions against the ideal's first R: a perfect short list scores 1
    assert np.allclose(b["ndcg_all"], 1.0) and np.all(a["ndcg_all"] <= 1.0 + 1e-12)
    worst = np.argsort(rel, axis=1, kind="stable")[:, :r]  # irrelevant cases first
    assert np.all(outcome_from_ranking(worst, rel)["ndcg_all"] < b["ndcg_all"])
