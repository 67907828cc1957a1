"""Tie policy of Hamming rankings (lungsearch.evaluation.ties): equal distances must not be ranked
in gallery order, which would let the order of the gallery decide mAP@k."""

import numpy as np
import pytest

from lungsearch.evaluation.chance import chance_map_at_k, chance_p_at_k
from lungsearch.evaluation.ties import rank_by_hamming, rank_with_ties, tie_averaged, tie_averaged_precision_at_k
from lungsearch.metrics import map_at_k
from lungsearch.models.hashing import hamming_distance, pack_codes


def _sorted_gallery(n=60, c=3):
    labels = np.repeat(np.arange(c), n // c)  # gallery sorted by label, as a generator might write it
    rel = (labels[:1, None] == labels[None, :]).astype(int)  # one query of class 0
    return labels, rel


def test_collapsed_codes_score_chance_not_the_gallery_order():
    labels, rel = _sorted_gallery()
    dist = np.zeros_like(rel)  # every code identical: all distances tie
    stable = np.argsort(dist, axis=1, kind="stable")
    assert map_at_k(np.take_along_axis(rel, stable, 1), 10) == 1.0  # what a stable sort reports
    mean, _ = tie_averaged(dist, rel, lambda r: map_at_k(r, 10), draws=400)
    assert mean == pytest.approx(chance_map_at_k(rel, 10), abs=0.03)
    assert tie_averaged_precision_at_k(dist, rel, 10) == pytest.approx(chance_p_at_k(rel), abs=1e-12)


def test_random_ties_are_seeded_and_respect_distance():
    rng = np.random.default_rng(0)
    codes = np.where(rng.standard_normal((40, 16)) >= 0, 1, -1)
    q, g = pack_codes(codes[:5]), pack_codes(codes)
    a, b = rank_by_hamming(q, g, seed=3), rank_by_hamming(q, g, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, rank_by_hamming(q, g, seed=4))  # ties broken differently
    d = hamming_distance(q, g)
    assert (np.diff(np.take_along_axis(d, a, 1), axis=1) >= 0).all()  # still sorted by distance


def test_tie_averaged_precision_is_exact():
    # distances [0, 1, 1, 1, 2]: top-2 = item 0 plus one of three tied items (2 of 3 relevant)
    dist = np.array([[0, 1, 1, 1, 2]])
    rel = np.array([[1, 1, 1, 0, 1]])
    assert tie_averaged_precision_at_k(dist, rel, 2) == pytest.approx((1 + 2 / 3) / 2)
    draws = [np.take_along_axis(rel, rank_with_ties(dist, seed=s), 1)[0, :2].mean() for s in range(3000)]
    assert np.mean(draws) == pytest.approx((1 + 2 / 3) / 2, abs=0.02)
