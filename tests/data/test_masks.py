"""Lung masks (paper 3's k-means recipe) on synthetic CT and CXR."""

from __future__ import annotations

import numpy as np

from lungsearch.data import lung_mask
from lungsearch.data.masks import kmeans_threshold


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def test_kmeans_threshold_splits_two_modes():
    v = np.concatenate([np.full(1000, -850.0), np.full(3000, 40.0)])
    assert -850 < kmeans_threshold(v) < 40


def test_ct_mask_recovers_lungs_with_vessels_and_pleural_lesion():
    rng = np.random.default_rng(0)
    shape = (128, 128)
    hu = np.full(shape, -1000.0)
    body = _ellipse(shape, 64, 64, 50, 60)
    hu[body] = 40.0
    lungs = _ellipse(shape, 60, 40, 32, 18) | _ellipse(shape, 60, 88, 32, 18)
    hu[lungs] = -850.0
    # vessels (bright dots) and a consolidation touching the pleura
    for _ in range(30):
        y, x = rng.integers(0, 128, 2)
        if lungs[y, x]:
            hu[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = 30.0
    lesion = _ellipse(shape, 75, 25, 6, 6) & lungs
    hu[lesion] = 20.0
    hu += rng.normal(0, 20, shape)
    mask = lung_mask(hu, modality="ct")
    assert mask.dtype == bool and dice(mask, lungs) >= 0.9


def test_cxr_mask_and_degenerate_inputs():
    shape = (96, 96)
    img = np.full(shape, 0.05)
    img[_ellipse(shape, 48, 48, 44, 40)] = 0.7
    lungs = _ellipse(shape, 45, 30, 25, 11) | _ellipse(shape, 45, 66, 25, 11)
    img[lungs] = 0.2
    img += np.random.default_rng(1).normal(0, 0.02, shape)
    assert dice(lung_mask(img, modality="cxr"), lungs) >= 0.85
    assert not lung_mask(np.zeros((10, 10)), modality="ct").any()
    assert lung_mask(np.zeros((1, 1)), modality="cxr").shape == (1, 1)
