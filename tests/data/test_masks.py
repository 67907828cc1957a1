"""CT lung masks: HU physics on synthetic slices, the CT phantoms, a real cropped CT slice."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lungsearch.data import lung_mask
from lungsearch.data.masks import kmeans_threshold, lung_mask_checked
from lungsearch.metrics import dice


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _chest(rng, shape=(128, 128)):
    """Body in outside air, two lungs at ~-850 HU with vessels, soft tissue at 40 HU."""
    hu = np.full(shape, -1000.0)
    hu[_ellipse(shape, 64, 64, 50, 60)] = 40.0
    lungs = _ellipse(shape, 60, 40, 32, 18) | _ellipse(shape, 60, 88, 32, 18)
    hu[lungs] = -850.0
    for _ in range(30):
        y, x = rng.integers(0, shape[0], 2)
        if lungs[y, x]:
            hu[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = 30.0
    return hu, lungs


def test_kmeans_threshold_splits_two_modes():
    v = np.concatenate([np.full(1000, -850.0), np.full(3000, 40.0)])
    assert -850 < kmeans_threshold(v) < 40


def test_ct_mask_recovers_lungs_with_vessels_and_pleural_lesion():
    rng = np.random.default_rng(0)
    hu, lungs = _chest(rng)
    lesion = _ellipse(hu.shape, 75, 25, 6, 6) & lungs
    hu[lesion] = 20.0
    hu += rng.normal(0, 20, hu.shape)
    mask = lung_mask(hu, modality="ct")
    assert mask.dtype == bool and dice(mask, lungs) >= 0.9
    # Known limit (docs/masks.md): a juxtapleural lesion wider than the closing (~2.5 % of the
    # field of view) stays a bite out of the lung; this one is 5 %, so only the Dice is asserted.


def test_ct_outside_air_trachea_and_bowel_gas_excluded():
    rng = np.random.default_rng(1)
    hu, lungs = _chest(rng)
    trachea = _ellipse(hu.shape, 40, 64, 4, 4)  # pure air in the mediastinum
    gas = _ellipse(hu.shape, 100, 60, 5, 8) & ~lungs  # a gas pocket under the diaphragm
    hu[trachea] = -1000.0
    hu[gas] = -1000.0
    hu += rng.normal(0, 15, hu.shape)
    res = lung_mask_checked(hu, modality="ct")
    assert res.ok
    body = _ellipse(hu.shape, 64, 64, 50, 60)
    assert not (res.mask & ~body).any(), "outside air in the lung mask"
    assert not (res.mask & trachea).any() and not (res.mask & gas).any()
    assert dice(res.mask, lungs) >= 0.9


def test_ct_lungs_touching_the_field_of_view_edge_are_kept():
    """A slice cropped around the spine: the lungs run into the image edges, no outside air."""
    rng = np.random.default_rng(2)
    hu, lungs = _chest(rng)
    hu += rng.normal(0, 15, hu.shape)
    crop = (slice(40, 90), slice(30, 100))  # inside the body, through both lungs at the top and sides
    h, t = hu[crop], lungs[crop]
    assert t[0].any() and t[:, 0].any() and t[:, -1].any()
    mask = lung_mask(h, modality="ct")
    assert dice(mask, t) >= 0.9


def test_ct_phantom_dice():
    from lungsearch.data.phantoms._ct import CT_TARGETS, render_ct

    rng = np.random.default_rng(0)
    scores = []
    for label in CT_TARGETS:
        vol, truth = render_ct(rng, 128, 4, label)
        pred = np.stack([lung_mask(s.astype(np.float32), modality="ct") for s in vol])
        scores.append(dice(pred, truth))
    assert np.median(scores) >= 0.95 and min(scores) >= 0.9, scores


def test_real_ct_slice_cropped_around_the_spine():
    """pydicom's CT_small.dcm (a real slice, 128 px, lungs at the top corners and edges)."""
    import pydicom.data

    from lungsearch.data import read_image

    path = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files", "CT_small.dcm")
    if not os.path.exists(path):
        pytest.skip("pydicom's bundled CT_small.dcm is not installed")
    px = read_image(open(path, "rb").read()).pixels
    res = lung_mask_checked(px, modality="ct")
    assert res.ok, res.reasons
    # both lungs (the two upper corners), nothing that is pure air
    assert res.mask[:40, :40].mean() > 0.5 and res.mask[:40, -40:].mean() > 0.3
    assert 0.1 < res.mask.mean() < 0.4
    assert not (res.mask & (px < -950)).any()


def test_degenerate_inputs():
    assert not lung_mask(np.zeros((10, 10)), modality="ct").any()
    assert lung_mask(np.zeros((1, 1)), modality="cxr").shape == (1, 1)
    assert lung_mask_checked(np.full((64, 64), np.nan), modality="cxr").outcome == "empty"
    assert lung_mask_checked(np.zeros((3,)), modality="ct").mask.shape == (0, 0)
    # a head slice: no lung, nothing found, no exception
    head = np.full((96, 96), -1000.0)
    head[_ellipse(head.shape, 48, 48, 40, 34)] = 35.0
    assert lung_mask_checked(head, modality="ct").outcome == "empty"


def test_real_head_ct_is_not_lung():
    """pydicom's J2K_pixelrep_mismatch.dcm is a head CT: sinus air must not pass as lung."""
    import pydicom.data

    from lungsearch.data import read_image

    path = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files", "J2K_pixelrep_mismatch.dcm")
    if not os.path.exists(path):
        pytest.skip("pydicom's bundled J2K_pixelrep_mismatch.dcm is not installed")
    res = lung_mask_checked(read_image(open(path, "rb").read()).pixels, modality="ct")
    assert res.outcome in ("empty", "implausible")


def test_non_radiograph_modality_is_never_plausible():
    rng = np.random.default_rng(0)
    img = rng.random((96, 96)).astype(np.float32)
    res = lung_mask_checked(img, modality="mr")
    assert res.outcome != "ok" and ("modality" in res.reasons or res.reasons == ("empty",))


@pytest.mark.parametrize("shape,tshape", [((34, 36), (14, 12)), ((40, 38), (20, 25)), ((150, 140), (130, 120))])
def test_layout_ncc_equals_skimage_match_template(shape, tshape):
    """The CXR layout match's NCC (integral images, direct sums or FFT) gives skimage's values,
    also when it reads its window sums from a larger padded image's integrals, and 0 on flat windows."""
    from skimage.feature import match_template

    from lungsearch.data.masks._cxr import _integrals, _ncc

    rng = np.random.default_rng(0)
    img = rng.random(shape).astype(np.float32)
    img[:12, :12] = 0.25  # a flat corner
    t = rng.random(tshape).astype(np.float32)
    ref = match_template(img, t)
    np.testing.assert_allclose(_ncc(img, t), ref, atol=1e-5)
    big = np.pad(img.astype(np.float64), ((3, 5), (4, 2)), mode="edge")
    np.testing.assert_allclose(
        _ncc(big[3 : 3 + shape[0], 4 : 4 + shape[1]], t, _integrals(big), (3, 4)), ref, atol=1e-5
    )
    flat = np.full(shape, 0.5, np.float32)
    assert not _ncc(flat, t).any()
