"""Linear probes on frozen embeddings (paper 4, Table 1: classification with 1 %, 10 % and 100 % of the
training labels), and the same probe on a randomly initialised encoder as the baseline.

The probe is multinomial logistic regression (scikit-learn, L2, lbfgs) on L2-normalised
embeddings: the standard linear-evaluation protocol, deterministic given the subset. The labelled
subset is drawn per fraction with a fixed seed, stratified, and never smaller than one case per
class present in the training split (1 % of a few hundred phantom cases would otherwise be fewer
cases than classes); the number actually used is reported next to each score.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lungsearch import metrics as M

__all__ = ["label_subset", "linear_probe", "probe_table"]


def label_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a stratified ``fraction`` of ``labels`` (int ``[N]``), at least one per class."""
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


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def linear_probe(train_emb: np.ndarray, train_y: np.ndarray, test_emb: np.ndarray, test_y: np.ndarray,
                 targets: Sequence[str], *, fraction: float = 1.0, seed: int = 0, c: float = 1.0) -> dict[str, float]:
    """Fit a logistic-regression probe on ``fraction`` of the training labels; score the test set.

    Returns ``auc`` (macro one-vs-rest), ``accuracy``, ``f1`` and ``n_labelled``.
    """
    from sklearn.linear_model import LogisticRegression

    idx = label_subset(train_y, fraction, seed)
    x, y = _norm(train_emb[idx]), np.asarray(train_y)[idx]
    n_cls = len(targets)
    probs = np.zeros((len(test_emb), n_cls))
    if len(np.unique(y)) == 1:
        probs[:, int(y[0])] = 1.0  # one class seen: the probe can only predict it
    else:
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(x, y)
        probs[:, clf.classes_.astype(int)] = clf.predict_proba(_norm(test_emb))
    cm = M.classification_metrics(np.asarray(test_y), probs, list(targets))
    return {"auc": cm["auc_macro"], "accuracy": cm["accuracy"], "f1": cm["f1_macro"], "n_labelled": float(len(idx))}


def probe_table(encoders: dict[str, tuple[np.ndarray, np.ndarray]], train_y: np.ndarray, test_y: np.ndarray,
                targets: Sequence[str], fractions: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """``{encoder name: {"1%": probe metrics, ...}}`` for several encoders' (train, test) embeddings."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, (tr, te) in encoders.items():
        out[name] = {f"{round(f * 100):g}%": linear_probe(tr, train_y, te, test_y, targets, fraction=f, seed=seed) for f in fractions}
    return out
