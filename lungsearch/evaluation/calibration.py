"""How much label information the phantoms' images carry (synthetic data, by construction):

* :func:`cxr_image_information`: the ``cxr`` kind's labels come from the report; at each value of
  the generator's signal-strength knob, a logistic regression on 39 simple image statistics vs
  TF-IDF + logistic regression on the report text (patient-grouped 5-fold CV,
  :func:`lungsearch.data.phantoms._checks.check_phantoms`), beside chance;
* :func:`ct_first_order_separability`: the ``ct`` kind classified from nine first-order HU
  statistics of the generator's own lung mask (mean, std, skew, kurtosis, 10/25/50/75/90th
  percentiles) by logistic regression, grouped 5-fold CV, beside chance (1/4).

Both generate their own small phantom sets under ``work_dir``; everything here is synthetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["ct_first_order_separability", "cxr_image_information"]


def cxr_image_information(
    work_dir: str | Path, *, n: int = 400, size: int = 128, seed: int = 2, signals: tuple[float, ...] = (1.0, 3.0)
) -> dict:
    from lungsearch.data import phantoms
    from lungsearch.data.phantoms._checks import check_phantoms

    out = {"synthetic": True, "kind": "cxr", "n": n, "size": size, "seed": seed, "by_signal": {}}
    for s in signals:
        root = phantoms.generate("cxr", n, Path(work_dir) / f"cxr-signal-{s:g}", seed=seed, size=size, signal=s)
        r = check_phantoms(root)
        out["by_signal"][f"{s:g}"] = {k: r.get(k) for k in ("chance", "image_stats_logreg", "report_tfidf_logreg")}
    return out


def ct_first_order_separability(
    work_dir: str | Path, *, n: int = 160, size: int = 64, slices: int = 4, seed: int = 0, signal: float = 1.0
) -> dict:
    from scipy.stats import kurtosis, skew
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lungsearch.data import phantoms, read_study

    root = phantoms.generate(
        "ct", n, Path(work_dir) / f"ct-signal-{signal:g}", seed=seed, size=size, slices=slices, signal=signal
    )
    x, y, groups = [], [], []
    for r in phantoms.read_manifest(root):
        vol = read_study([Path(p).read_bytes() for p in r.image_paths]).volume()
        with np.load(r.extra["mask_path"]) as z:
            shape = tuple(int(v) for v in z["shape"])
            lung = np.unpackbits(z["lung"], axis=-1)[..., : shape[-1]].astype(bool)[
                ::-1
            ]  # read_study orders feet first
        v = vol[lung].astype(np.float64)
        x.append([v.mean(), v.std(), skew(v), kurtosis(v), *np.percentile(v, [10, 25, 50, 75, 90])])
        y.append(r.labels[0])
        groups.append(r.group)
    x, y = np.nan_to_num(np.asarray(x)), np.asarray(y)
    pred = cross_val_predict(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)), x, y, groups=groups, cv=GroupKFold(5)
    )
    classes, counts = np.unique(y, return_counts=True)
    return {
        "synthetic": True,
        "kind": "ct",
        "n": int(len(y)),
        "size": size,
        "slices": slices,
        "signal": signal,
        "features": "9 first-order HU statistics of the generator's lung mask",
        "accuracy": round(float((pred == y).mean()), 4),
        "chance_majority": round(float(counts.max() / counts.sum()), 4),
    }
