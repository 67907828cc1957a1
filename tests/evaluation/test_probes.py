"""Linear probes over several labelled-subset draws (paper 4, Table 1's 1 % column; issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

from lungsearch.evaluation.probes import (
    DRAWS,
    draw_seed,
    label_subset,
    linear_probe,
    over_draws,
    probe_draws,
    probe_table,
)

TARGETS = ["a", "b", "c", "d"]


def _data(n=400, seed=0, signal=1.5):
    """(train x, train y, test x, test y): one class structure, two samples."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 16))
    y, yt = rng.integers(0, 4, n), rng.integers(0, 4, n)
    return centres[y] * signal + rng.normal(size=(n, 16)), y, centres[yt] * signal + rng.normal(size=(n, 16)), yt


def test_draws_are_distinct_subsets_and_draw_0_is_the_single_draw():
    _, y, _, _ = _data()
    subsets = [tuple(label_subset(y, 0.05, draw_seed(3, k))) for k in range(DRAWS)]
    assert DRAWS >= 5 and len(set(subsets)) == DRAWS
    assert subsets[0] == tuple(label_subset(y, 0.05, 3))
    # another training seed draws other subsets (no shared stream)
    assert not set(subsets) & {tuple(label_subset(y, 0.05, draw_seed(4, k))) for k in range(DRAWS)}


def test_probe_draws_one_per_draw_below_100_percent_and_one_at_100():
    x, y, xt, yt = _data()
    runs = probe_draws(x, y, xt, yt, TARGETS, fraction=0.02, seed=0)
    assert [r["draw"] for r in runs] == list(range(DRAWS))
    assert all(r["probs"].shape == (len(yt), 4) and r["n_labelled"] == 8 for r in runs)
    assert len({round(r["auc"], 6) for r in runs}) > 1  # the subset matters at 2 %
    assert len(probe_draws(x, y, xt, yt, TARGETS, fraction=1.0, seed=0, draws=7)) == 1


def test_over_draws_is_a_student_t_interval_of_the_mean():
    from scipy import stats

    v = [0.70, 0.74, 0.69, 0.80, 0.72]
    d = over_draws(v)
    half = stats.t.ppf(0.975, 4) * np.std(v, ddof=1) / np.sqrt(5)
    assert d["mean"] == pytest.approx(np.mean(v)) and d["n"] == 5
    assert d["lo"] == pytest.approx(np.mean(v) - half) and d["hi"] == pytest.approx(np.mean(v) + half)
    assert over_draws([0.7])["lo"] == over_draws([0.7])["hi"] == 0.7
    assert over_draws([0.7, float("nan"), 0.9])["n"] == 2  # an undefined score is left out


def test_linear_probe_reports_mean_and_interval_over_draws():
    x, y, xt, yt = _data()
    many = linear_probe(x, y, xt, yt, TARGETS, fraction=0.02, seed=0, draws=5)
    runs = probe_draws(x, y, xt, yt, TARGETS, fraction=0.02, seed=0, draws=5)
    assert many["draws"] == 5 and many["auc"] == pytest.approx(np.mean([r["auc"] for r in runs]))
    assert many["auc_lo"] < many["auc"] < many["auc_hi"]
    one = linear_probe(x, y, xt, yt, TARGETS, fraction=0.02, seed=0)
    assert "auc_lo" not in one and one["auc"] == pytest.approx(runs[0]["auc"])
    table = probe_table({"enc": (x, xt)}, y, yt, TARGETS, fractions=(0.02, 1.0))
    assert table["enc"]["2%"]["draws"] == DRAWS and "draws" not in table["enc"]["100%"]
    # a signal-free encoder's interval sits around chance, the informative one's above it
    noise = linear_probe(
        np.random.default_rng(5).normal(size=x.shape), y, xt, yt, TARGETS, fraction=0.02, seed=0, draws=5
    )
    assert noise["auc_lo"] < 0.6 < many["auc_lo"]
