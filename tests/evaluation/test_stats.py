"""Verdict logic: paired bootstrap intervals, yes / no / inconclusive, collapse guards."""

from __future__ import annotations

import numpy as np

from lungsearch.evaluation.percase import _auc, _macro, scorer
from lungsearch.evaluation.stats import collapse_reasons, compare, paired_bootstrap, verdict


def _mean_of(x):
    x = np.asarray(x, dtype=float)
    return lambda idx: float(x[idx].mean())


def test_verdict_rule():
    assert verdict(0.01, 0.2) == "yes"
    assert verdict(-0.2, -0.01) == "no"
    assert verdict(-0.05, 0.1) == "inconclusive"
    assert verdict(-0.2, -0.01, direction=-1) == "yes"  # "faster": the paper's direction is a negative difference
    assert verdict(0.01, 0.2, direction=-1) == "no"
    assert verdict(float("nan"), 0.1) == "inconclusive"


def test_straddling_interval_is_inconclusive():
    rng = np.random.default_rng(1)
    a = rng.random(60) < 0.55  # per-case hits of two near-identical classifiers
    b = rng.random(60) < 0.53
    c = compare("a beats b", "accuracy", "A", "B", [_mean_of(a)], [_mean_of(b)], 60)
    assert c.lo < 0 < c.hi
    assert c.verdict == "inconclusive" and c.margin == 0.0


def test_clear_difference_is_yes_and_reversed_is_no():
    rng = np.random.default_rng(2)
    good = (rng.random(200) < 0.9).astype(float)
    bad = (rng.random(200) < 0.3).astype(float)
    yes = compare("good beats bad", "accuracy", "G", "B", [_mean_of(good)] * 3, [_mean_of(bad)] * 3, 200)
    assert yes.verdict == "yes" and yes.lo > 0 and yes.margin == yes.lo
    no = compare("bad beats good", "accuracy", "B", "G", [_mean_of(bad)], [_mean_of(good)], 200)
    assert no.verdict == "no" and no.hi < 0
    assert "95 % CI" in yes.numbers() and "3 seed(s)" in yes.numbers()


def test_bootstrap_is_seeded_and_paired():
    x = np.linspace(0, 1, 50)
    r1 = paired_bootstrap([_mean_of(x + 0.1)], [_mean_of(x)], 50, seed=3)
    r2 = paired_bootstrap([_mean_of(x + 0.1)], [_mean_of(x)], 50, seed=3)
    assert r1 == r2
    # paired: a constant per-case shift gives a zero-width interval at the shift
    assert abs(r1["lo"] - 0.1) < 1e-9 and abs(r1["hi"] - 0.1) < 1e-9


def test_collapsed_variant_makes_its_comparison_inconclusive():
    good = np.ones(100)
    bad = np.zeros(100)
    c = compare("A beats B", "accuracy", "A", "B", [_mean_of(good)], [_mean_of(bad)], 100, collapsed=["B"])
    assert c.lo > 0 and c.verdict == "inconclusive" and "collapsed" in c.note


def test_collapse_reasons():
    probs = np.tile([0.1, 0.7, 0.2], (20, 1))
    assert any("one class" in r for r in collapse_reasons(probs=probs))
    assert collapse_reasons(probs=np.eye(3)[np.arange(20) % 3]) == []
    emb = np.ones((20, 8)) + 1e-5 * np.random.default_rng(0).normal(size=(20, 8))
    assert any("embedding collapsed" in r for r in collapse_reasons(embedding=emb))
    assert collapse_reasons(embedding=np.random.default_rng(0).normal(size=(20, 8))) == []
    assert any("intra 0.003" in r for r in collapse_reasons(metrics={"intra": 0.003, "inter": 0.004}))
    assert collapse_reasons(metrics={"intra": 0.2, "inter": 1.0}) == []
    assert collapse_reasons(codes=np.ones((5, 16))) == ["every binary code identical"]


def test_fast_scorers_match_scikit_learn():
    from sklearn.metrics import f1_score, recall_score, roc_auc_score

    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 80)
    p = np.where(rng.random(80) < 0.6, y, rng.integers(0, 4, 80))
    assert abs(_macro(y, p, 4, "f1") - f1_score(y, p, average="macro", zero_division=0)) < 1e-12
    assert abs(_macro(y, p, 4, "recall") - recall_score(y, p, average="macro", zero_division=0)) < 1e-12
    y3, p3 = y[y < 3], p[y < 3]  # a resample that lost class 3 (and never predicts it): it is not averaged in
    p3 = np.where(p3 == 3, 0, p3)
    assert abs(_macro(y3, p3, 4, "f1") - f1_score(y3, p3, average="macro", zero_division=0)) < 1e-12
    probs = rng.dirichlet(np.ones(4), 80)
    probs[np.arange(80), y] += 0.3
    ref = roc_auc_score(y, probs / probs.sum(1, keepdims=True), multi_class="ovr", average="macro")
    assert abs(_auc(y, probs / probs.sum(1, keepdims=True)) - ref) < 1e-9
    out = {"labels": y, "probs": probs}
    assert abs(scorer(out, "accuracy")(np.arange(80)) - float((probs.argmax(1) == y).mean())) < 1e-12


def test_hash_models_are_judged_by_their_codes():
    rng = np.random.default_rng(5)
    tight = np.ones((30, 16)) + 1e-4 * rng.normal(size=(30, 16))  # float outputs nearly equal ...
    codes = np.where(rng.random((30, 16)) < 0.5, 1, -1)  # ... but the codes differ
    assert collapse_reasons(embedding=tight, codes=codes, metrics={"intra": 0.001, "inter": 0.001}) == []
    near = np.ones((30, 16))
    near[0, 0] = -1
    assert any("nearly identical" in r for r in collapse_reasons(codes=near))
