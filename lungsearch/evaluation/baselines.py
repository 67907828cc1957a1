"""The trivial models a sceptical reviewer tries first, and the oracle, as reference rows.

Each returns an *outcome* (:mod:`lungsearch.evaluation.percase`) on the same test cases and
gallery as the learned models, so its numbers are bootstrapped and compared the same way:

* ``tfidf_logreg``: TF-IDF of the report text + logistic regression (classification), TF-IDF
  cosine (retrieval); only where cases have reports;
* ``histogram_logreg``: first-order intensity statistics of the model input (mean, std, skew,
  kurtosis, 5 percentiles) and a 16-bin intensity histogram, averaged over a CT series' slices
  (for CT in the lung window: the "first-order HU statistics" row), + logistic regression; cosine
  on the standardised features for retrieval;
* ``pixels_knn``: the image downsampled to 16 x 16 pixels, k-nearest neighbours (k = 5) vote and
  cosine ranking;
* ``oracle``: the generator's ground truth. For the ``cxr`` phantoms the findings each image was
  drawn from (kind, severity, side: what an image model could at best see) + logistic
  regression; for ``cxr4`` and ``ct`` the class drawn is the label, so the oracle is the label
  itself (every metric at its maximum). Phantoms only (None on real data).

Every model is fitted on the training split only (validation cases are gallery, never fitted on),
scikit-learn, fixed seeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lungsearch import metrics as M
from lungsearch.evaluation.percase import outcome_from_ranking

if TYPE_CHECKING:
    from lungsearch.training.cases import CaseTable

__all__ = [
    "BASELINES",
    "first_order_features",
    "histogram_logreg",
    "oracle",
    "pixel_features",
    "pixels_knn",
    "reference_rows",
    "tfidf_logreg",
]


def _valid_slices(table: "CaseTable", i: int) -> np.ndarray:
    return np.asarray(table.images[i, : max(int(table.n_slices[i]), 1), 0], dtype=np.float32)  # [S, H, W]


def first_order_features(table: "CaseTable", bins: int = 16, batch: int = 256) -> np.ndarray:
    """Per case: mean, std, skew, kurtosis, 5 percentiles and a ``bins`` histogram (25 numbers),
    over the valid slices' pixels (vectorised per batch of single-slice cases: 20,000 radiographs
    take seconds, not minutes)."""
    from scipy.stats import kurtosis, skew

    lo, hi = float(np.min(table.images)), float(np.max(table.images))
    edges = np.linspace(lo, hi + 1e-6, bins + 1)

    def rows(v: np.ndarray) -> np.ndarray:  # v: [B, P] pixels
        v = v.astype(np.float64)
        idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)
        hist = np.stack([np.bincount(r, minlength=bins) for r in idx]) / v.shape[1]
        return np.column_stack(
            [
                v.mean(1),
                v.std(1),
                skew(v, axis=1),
                kurtosis(v, axis=1),
                np.percentile(v, [5, 25, 50, 75, 95], axis=1).T,
                hist,
            ]
        )

    out = np.zeros((len(table), 9 + bins))
    single = np.flatnonzero(np.asarray(table.n_slices) <= 1)
    for start in range(0, len(single), batch):
        ids = single[start : start + batch]
        out[ids] = rows(np.asarray(table.images[ids, 0, 0], dtype=np.float32).reshape(len(ids), -1))
    for i in np.flatnonzero(np.asarray(table.n_slices) > 1):
        out[i] = rows(_valid_slices(table, i).reshape(1, -1))[0]
    return np.nan_to_num(out)


def pixel_features(table: "CaseTable", side: int = 16) -> np.ndarray:
    """The mean of the valid slices, area-downsampled to ``side`` x ``side`` and flattened."""
    import torch
    import torch.nn.functional as F

    out = []
    for i in range(len(table)):
        img = torch.from_numpy(_valid_slices(table, i).mean(0))[None, None]
        out.append(F.adaptive_avg_pool2d(img, side).reshape(-1).numpy())
    return np.asarray(out, dtype=np.float64)


def _labels(t: "CaseTable") -> np.ndarray:
    return t.multi_hot if t.multilabel else t.labels


def _outcome(train_x, train: "CaseTable", test_x, test: "CaseTable", gallery_x, gallery: "CaseTable", clf) -> dict:
    """Fit ``clf`` (single-label) on train, rank the gallery by cosine of the (standardised) features."""
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(train_x)
    tr, te, ga = sc.transform(train_x), sc.transform(test_x), sc.transform(gallery_x)
    out: dict = {}
    single = not test.multilabel
    if single:
        out["labels"] = np.asarray(test.labels)
        n_cls = len(test.targets)
        probs = np.zeros((len(te), n_cls))
        y = np.asarray(train.labels)
        if len(np.unique(y)) == 1:
            probs[:, int(y[0])] = 1.0
        else:
            clf.fit(tr, y)
            probs[:, clf.classes_.astype(int)] = clf.predict_proba(te)
        out["probs"] = probs
    rel = M.label_relevance(_labels(test), _labels(gallery))
    out.update(
        outcome_from_ranking(
            M.rank_by_cosine(te, ga),
            rel,
            labels=test.labels if single else None,
            gallery_labels=gallery.labels if single else None,
        )
    )
    out["embedding"] = te.astype(np.float32)
    return out


def _logreg():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=3000, C=1.0, class_weight="balanced")


def histogram_logreg(train: "CaseTable", test: "CaseTable", gallery: "CaseTable") -> dict:
    return _outcome(
        first_order_features(train),
        train,
        first_order_features(test),
        test,
        first_order_features(gallery),
        gallery,
        _logreg(),
    )


def pixels_knn(train: "CaseTable", test: "CaseTable", gallery: "CaseTable", k: int = 5) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    return _outcome(
        pixel_features(train),
        train,
        pixel_features(test),
        test,
        pixel_features(gallery),
        gallery,
        KNeighborsClassifier(n_neighbors=min(k, len(train)), metric="cosine"),
    )


def tfidf_logreg(train: "CaseTable", test: "CaseTable", gallery: "CaseTable") -> dict | None:
    """None when the cases have no report text."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if not all(train.reports) or not all(test.reports):
        return None
    vec = TfidfVectorizer(min_df=2).fit(train.reports)
    tr, te, ga = (vec.transform(t.reports) for t in (train, test, gallery))
    out: dict = {}
    single = not test.multilabel
    if single:
        out["labels"] = np.asarray(test.labels)
        probs = np.zeros((te.shape[0], len(test.targets)))
        clf = LogisticRegression(max_iter=3000, C=10.0, class_weight="balanced").fit(tr, train.labels)
        probs[:, clf.classes_.astype(int)] = clf.predict_proba(te)
        out["probs"] = probs
    sims = (te @ ga.T).toarray()
    order = np.argsort(-sims, axis=1, kind="stable")
    rel = M.label_relevance(_labels(test), _labels(gallery))
    out.update(
        outcome_from_ranking(
            order, rel, labels=test.labels if single else None, gallery_labels=gallery.labels if single else None
        )
    )
    return out


def _finding_features(table: "CaseTable") -> np.ndarray | None:
    """The cxr generator's drawn findings per case (from its report id): per kind, max severity
    and a bilateral flag. None when a group is not a bundled report (not a cxr phantom)."""
    from lungsearch.data.phantoms._reports import load_reports

    by_uid = {r.uid: r for r in load_reports()}
    kinds = sorted({f.kind for r in by_uid.values() for f in r.findings})
    col = {k: i for i, k in enumerate(kinds)}
    x = np.zeros((len(table), 2 * len(kinds)))
    for i, g in enumerate(table.groups):
        rep = by_uid.get(g)
        if rep is None:
            return None
        for f in rep.findings:
            j = col[f.kind]
            x[i, j] = max(x[i, j], f.severity)
            x[i, len(kinds) + j] = max(x[i, len(kinds) + j], float(f.side == "bilateral"))
    return x


def oracle(train: "CaseTable", test: "CaseTable", gallery: "CaseTable") -> dict | None:
    """The generator's ground truth as a model (module doc); None on real data."""
    if not (train.synthetic and test.synthetic):
        return None
    if test.modality == "cxr" and all(test.reports):  # the cxr kind: findings from its report
        fx = [_finding_features(t) for t in (train, test, gallery)]
        if all(f is not None for f in fx):
            return _outcome(fx[0], train, fx[1], test, fx[2], gallery, _logreg())
    # cxr4 / ct: the class drawn is the label
    truth = [np.asarray(t.multi_hot, dtype=np.float64) for t in (train, test, gallery)]
    return _outcome(truth[0], train, truth[1], test, truth[2], gallery, _logreg())


#: Reference rows by name: (function, what it says). Chance comes from :mod:`.chance`.
BASELINES = {
    "TF-IDF + logistic regression (report text)": tfidf_logreg,
    "first-order intensity statistics + logistic regression": histogram_logreg,
    "kNN on 16x16 pixels": pixels_knn,
    "oracle (generator ground truth)": oracle,
}


def reference_rows(
    train: "CaseTable", test: "CaseTable", gallery: "CaseTable", *, reports: bool = True
) -> dict[str, dict]:
    """Every applicable reference row's outcome (``reports=False`` drops the report baseline,
    e.g. for image-only profiles where it is shown for information only)."""
    out = {}
    for name, fn in BASELINES.items():
        if not reports and fn is tfidf_logreg:
            continue
        o = fn(train, test, gallery)
        if o is not None:
            out[name] = o
    return out
