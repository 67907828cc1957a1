"""Evaluation figures (matplotlib, headless Agg backend): ROC, precision-recall, confusion matrix and
retrieval precision@k curves. Every figure's title carries the dataset label (phantom or real) so
a PNG lifted out of its report still says where its numbers come from."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["plot_roc", "plot_pr", "plot_confusion", "plot_retrieval_curves"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _one_vs_rest(y_true: np.ndarray, n_classes: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2:
        return (y > 0).astype(int)
    return np.eye(n_classes, dtype=int)[y.astype(int)]


def plot_roc(y_true: np.ndarray, y_prob: np.ndarray, targets: Sequence[str], path: Path, title: str) -> Path:
    """One-vs-rest ROC curve per class with its AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    y = _one_vs_rest(y_true, len(targets))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for k, name in enumerate(targets):
        if 0 < y[:, k].sum() < len(y):
            fpr, tpr, _ = roc_curve(y[:, k], y_prob[:, k])
            ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(y[:, k], y_prob[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path, plt)


def plot_pr(y_true: np.ndarray, y_prob: np.ndarray, targets: Sequence[str], path: Path, title: str) -> Path:
    """One-vs-rest precision-recall curve per class with its average precision."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _plt()
    y = _one_vs_rest(y_true, len(targets))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for k, name in enumerate(targets):
        if y[:, k].sum() > 0:
            p, r, _ = precision_recall_curve(y[:, k], y_prob[:, k])
            ax.plot(r, p, lw=1.5, label=f"{name} (AP {average_precision_score(y[:, k], y_prob[:, k]):.3f})")
    ax.set(xlabel="Recall", ylabel="Precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path, plt)


def plot_confusion(matrix: np.ndarray, targets: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows = truth) with counts in the cells."""
    plt = _plt()
    m = np.asarray(matrix, dtype=np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(targets), 1.0 + 0.8 * len(targets)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(targets)), targets, fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path, plt)


def plot_retrieval_curves(curves: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Precision@k against k for one or more rankings (e.g. cosine vs Hamming)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, prec in curves.items():
        ax.plot(np.arange(1, len(prec) + 1), prec, marker="o", ms=3, lw=1.5, label=name)
    ax.set(xlabel="k (retrieved cases)", ylabel="precision@k (shares a label)", title=title, ylim=(0, 1.01))
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
