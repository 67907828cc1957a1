"""Quality checks of a generated phantom folder (the numbers docs/phantoms.md reports):

* cxr / cxr4: a logistic regression on simple image statistics (global mean, std, 5 percentiles,
  4×4 block means and stds: 39 features), patient-grouped 5-fold CV, against chance; for cxr
  also the report text alone (TF-IDF + logistic regression): the report should carry more.
* ct: every series read back through the DICOM path (read_study), HU of the generator's lung
  mask, and Dice of :func:`lungsearch.data.lung_mask` against the generator's own mask.

All of it is on synthetic data; the output says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["check_phantoms", "simple_image_stats"]


def simple_image_stats(path: str) -> list[float]:
    """39 simple statistics of an 8-bit image file."""
    from PIL import Image

    a = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    h, w = (a.shape[0] // 4) * 4, (a.shape[1] // 4) * 4
    b = a[:h, :w].reshape(4, h // 4, 4, w // 4)
    return [
        float(a.mean()),
        float(a.std()),
        *np.percentile(a, [5, 25, 50, 75, 95]).tolist(),
        *b.mean(axis=(1, 3)).ravel().tolist(),
        *b.std(axis=(1, 3)).ravel().tolist(),
    ]


def _cv_metrics(X, y, groups, make) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict

    cv = GroupKFold(5)
    prob = cross_val_predict(make(), X, y, groups=groups, cv=cv, method="predict_proba")
    classes = np.unique(y)
    pred = classes[prob.argmax(1)]
    return {
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4),
        "macro_auc_ovr": round(float(roc_auc_score(y, prob, multi_class="ovr", labels=classes)), 4),
    }


def check_phantoms(root: str | Path) -> dict:
    """Run the checks on a phantom folder; returns a JSON-able dict (``synthetic: true``)."""
    from lungsearch.data.phantoms import read_manifest

    root = Path(root)
    prov = json.loads((root / "phantom.json").read_text())
    recs = read_manifest(root)
    out: dict = {
        "synthetic": True,
        "kind": prov["kind"],
        "n": len(recs),
        "size": prov["size"],
        "seed": prov["seed"],
        "generation_seconds": prov.get("seconds"),
        "workers": prov.get("workers"),
    }
    if prov["kind"] == "ct":
        out.update(_check_ct(recs))
        return out
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.array([r.labels[0] for r in recs])
    groups = [r.group for r in recs]
    classes, counts = np.unique(y, return_counts=True)
    out["class_counts"] = {str(c): int(n) for c, n in zip(classes, counts)}
    out["chance"] = {
        "majority_accuracy": round(float(counts.max() / counts.sum()), 4),
        "balanced_accuracy": round(1.0 / len(classes), 4),
        "macro_auc_ovr": 0.5,
    }
    X = np.array([simple_image_stats(r.image_paths[0]) for r in recs])
    out["image_stats_logreg"] = _cv_metrics(
        X,
        y,
        groups,
        lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced")),
    )
    if all(r.report for r in recs):
        from sklearn.feature_extraction.text import TfidfVectorizer

        out["report_tfidf_logreg"] = _cv_metrics(
            np.array([r.report for r in recs], dtype=object),
            y,
            groups,
            lambda: make_pipeline(
                TfidfVectorizer(min_df=2), LogisticRegression(max_iter=3000, C=10, class_weight="balanced")
            ),
        )
    return out


def _check_ct(recs) -> dict:
    from lungsearch.data import lung_mask, read_study

    dices, lung_hu, per_class = [], [], {}
    for r in recs:
        study = read_study([Path(p).read_bytes() for p in r.image_paths])
        vol = study.volume()
        with np.load(r.extra["mask_path"]) as z:
            shape = tuple(int(v) for v in z["shape"])
            truth = np.unpackbits(z["lung"], axis=-1)[..., : shape[-1]].astype(bool)
        # the generator writes apex first (z = -10 mm * i); read_study orders by position, feet first
        truth = truth[::-1]
        pred = np.stack([lung_mask(s, modality="ct") for s in vol])
        d = 2.0 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1)
        dices.append(d)
        per_class.setdefault(r.labels[0], []).append(d)
        lung_hu.append(float(vol[truth].mean()))
    return {
        "dice_mean": round(float(np.mean(dices)), 4),
        "dice_min": round(float(np.min(dices)), 4),
        "dice_by_class": {k: round(float(np.mean(v)), 4) for k, v in sorted(per_class.items())},
        "lung_hu_mean": round(float(np.mean(lung_hu)), 1),
    }
