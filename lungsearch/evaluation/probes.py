"""Linear probes on frozen embeddings (paper 4, Table 1: classification with 1 %, 10 % and 100 % of the
training labels), and the same probe on a randomly initialised encoder as the baseline.

The probe is multinomial logistic regression (scikit-learn, L2, lbfgs) on L2-normalised
embeddings: the standard linear-evaluation protocol, deterministic given the subset. The labelled
subset is drawn per fraction, stratified, and never smaller than one case per class present in the
training split (1 % of a few hundred phantom cases would otherwise be fewer cases than classes);
the number actually used is reported next to each score.

Which few cases are labelled decides much of a 1 % score, so a fraction below 100 % is probed over
``draws`` subsets (default 5; draw 0 is ``label_subset(..., seed)``, draw k > 0 uses the seed
sequence ``[seed, k]``) and reported as the mean over draws with a Student-t 95 % interval of that
mean (:func:`over_draws`). At 100 % every draw is the whole training split, so one fit is made.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lungsearch import metrics as M

__all__ = ["DRAWS", "draw_seed", "label_subset", "linear_probe", "over_draws", "probe_draws", "probe_table"]

#: Labelled-subset draws per fraction below 100 % (issue 15: at least 5).
DRAWS = 5


def label_subset(labels: np.ndarray, fraction: float, seed: int | Sequence[int] = 0) -> np.ndarray:
    """Indices of a stratified ``fraction`` of ``labels`` (int ``[N]``), at least one per class.

    ``seed`` is anything ``numpy.random.default_rng`` takes (an int, or a sequence of ints)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = len(labels)
    want = max(int(round(fraction * n)), len(np.unique(labels)))
    if want >= n:
        return np.arange(n)
    picked: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picked.append(int(rng.choice(idx)))
    rest = np.setdiff1d(np.arange(n), picked)
    extra = rng.choice(rest, size=want - len(picked), replace=False) if want > len(picked) else []
    return np.sort(np.concatenate([np.asarray(picked, dtype=np.int64), np.asarray(extra, dtype=np.int64)]))


def draw_seed(seed: int, draw: int) -> int | list[int]:
    """The subset seed of draw ``draw``: ``seed`` itself for draw 0 (the single-draw subset),
    ``[seed, draw]`` after (independent streams: seeds 0 and 1 share no draw)."""
    return seed if draw == 0 else [int(seed), int(draw)]


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _fit_predict(x: np.ndarray, y: np.ndarray, test_x: np.ndarray, n_cls: int, c: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    probs = np.zeros((len(test_x), n_cls))
    if len(np.unique(y)) == 1:
        probs[:, int(y[0])] = 1.0  # one class seen: the probe can only predict it
    else:
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(x, y)
        probs[:, clf.classes_.astype(int)] = clf.predict_proba(test_x)
    return probs


def probe_draws(
    train_emb: np.ndarray,
    train_y: np.ndarray,
    test_emb: np.ndarray,
    test_y: np.ndarray,
    targets: Sequence[str],
    *,
    fraction: float = 1.0,
    seed: int = 0,
    draws: int = DRAWS,
    c: float = 1.0,
) -> list[dict[str, Any]]:
    """One probe per labelled-subset draw (one draw at 100 %).

    Returns per draw: ``draw``, ``n_labelled``, ``probs`` (``[N_test, C]``, for per-case
    statistics), ``auc`` (macro one-vs-rest), ``accuracy``, ``f1``.
    """
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    x_all, test_x = _norm(np.asarray(train_emb)), _norm(np.asarray(test_emb))
    n = 1 if fraction >= 1.0 else max(1, int(draws))
    out = []
    for k in range(n):
        idx = label_subset(train_y, fraction, draw_seed(seed, k))
        probs = _fit_predict(x_all[idx], train_y[idx], test_x, len(targets), c)
        cm = M.classification_metrics(test_y, probs, list(targets))
        out.append(
            {
                "draw": k,
                "n_labelled": int(len(idx)),
                "probs": probs,
                "auc": cm["auc_macro"],
                "accuracy": cm["accuracy"],
                "f1": cm["f1_macro"],
            }
        )
    return out


def over_draws(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of per-draw scores and the Student-t ``level`` interval of that mean (``lo = hi =
    mean`` for one draw); ``sd`` is the spread over draws, ``n`` their number. NaN scores (a
    metric undefined on a draw) are left out."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "sd": float("nan"), "n": 0.0}
    mean = float(v.mean())
    if len(v) == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "sd": float("nan"), "n": 1.0}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * sd / np.sqrt(len(v))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": float(len(v))}


def linear_probe(
    train_emb: np.ndarray,
    train_y: np.ndarray,
    test_emb: np.ndarray,
    test_y: np.ndarray,
    targets: Sequence[str],
    *,
    fraction: float = 1.0,
    seed: int = 0,
    c: float = 1.0,
    draws: int = 1,
) -> dict[str, float]:
    """Fit a logistic-regression probe on ``fraction`` of the training labels; score the test set.

    Returns ``auc`` (macro one-vs-rest), ``accuracy``, ``f1`` and ``n_labelled``; with ``draws > 1``
    (and ``fraction < 1``) these are means over the draws, with ``auc_lo`` / ``auc_hi`` (the 95 %
    interval of the mean AUC over draws, :func:`over_draws`), ``auc_sd`` and ``draws``.
    """
    runs = probe_draws(train_emb, train_y, test_emb, test_y, targets, fraction=fraction, seed=seed, draws=draws, c=c)
    out = {k: float(np.mean([r[k] for r in runs])) for k in ("auc", "accuracy", "f1", "n_labelled")}
    if len(runs) > 1:
        auc = over_draws([r["auc"] for r in runs])
        out.update(auc_lo=auc["lo"], auc_hi=auc["hi"], auc_sd=auc["sd"], auc=auc["mean"], draws=float(len(runs)))
    return out


def probe_table(
    encoders: dict[str, tuple[np.ndarray, np.ndarray]],
    train_y: np.ndarray,
    test_y: np.ndarray,
    targets: Sequence[str],
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seed: int = 0,
    draws: int = DRAWS,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{encoder name: {"1%": probe metrics, ...}}`` for several encoders' (train, test) embeddings
    (fractions below 100 % over ``draws`` labelled subsets, see :func:`linear_probe`)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, (tr, te) in encoders.items():
        out[name] = {
            f"{round(f * 100):g}%": linear_probe(tr, train_y, te, test_y, targets, fraction=f, seed=seed, draws=draws)
            for f in fractions
        }
    return out
