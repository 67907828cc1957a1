"""Plausibility checks, typed outcomes, the radiomics whole-thorax fallback and its metric."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lungsearch.data.masks import EmptyLungMask, ImplausibleLungMask, LungMaskResult, roi_masks
from lungsearch.data.masks._checks import LEARNED_RANGES, cxr_reasons
from lungsearch.errors import LungsearchError


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


S = (200, 200)
TWO_LUNGS = _ellipse(S, 90, 60, 55, 30) | _ellipse(S, 90, 140, 55, 30)


@pytest.mark.parametrize(
    "mask, reason",
    [
        (np.zeros(S, bool), "empty"),
        (_ellipse(S, 90, 100, 60, 70), "components"),  # one blob across the midline
        (_ellipse(S, 90, 60, 25, 14) | _ellipse(S, 90, 140, 25, 14), "area"),  # two small blobs
        (_ellipse(S, 40, 30, 35, 22) | _ellipse(S, 40, 170, 35, 22), "position"),  # two lungs in the top corners
        (_ellipse(S, 90, 60, 55, 30) | _ellipse(S, 90, 140, 22, 14), "balance"),
    ],
)
def test_each_check_fails_on_its_case(mask, reason):
    reasons, _ = cxr_reasons(mask)
    assert reason in reasons, reasons


def test_two_normal_lungs_pass():
    reasons, stats = cxr_reasons(TWO_LUNGS)
    assert reasons == (), stats
    assert 0.15 <= stats["area_total"] <= 0.5


def test_learned_ranges_contain_the_phantom_outlines():
    """Every held-out real outline placed as the phantoms place it passes the checks."""
    pytest.importorskip("torchxrayvision")
    from lungsearch.data.masks._build_atlas import held_out_bank
    from lungsearch.data.phantoms._cxr import render_cxr

    bank = held_out_bank()
    fails = [cxr_reasons(render_cxr(np.random.default_rng(s), 128, bank, ())[1])[0] for s in range(10)]
    assert sum(bool(f) for f in fails) <= 1, fails
    assert all(lo < hi for lo, hi in LEARNED_RANGES.values())


def test_typed_outcomes_raise_and_pickle():
    empty = LungMaskResult(mask=np.zeros((4, 4), bool), modality="cxr", outcome="empty", reasons=("empty",))
    bad = LungMaskResult(mask=np.ones((4, 4), bool), modality="cxr", outcome="implausible", reasons=("area",))
    with pytest.raises(EmptyLungMask) as e1:
        empty.raise_for_outcome()
    with pytest.raises(ImplausibleLungMask) as e2:
        bad.raise_for_outcome()
    assert isinstance(e1.value, LungsearchError) and e2.value.code == "area"
    again = pickle.loads(pickle.dumps(e2.value))
    assert type(again) is ImplausibleLungMask and again.code == "area"
    ok = LungMaskResult(mask=TWO_LUNGS, modality="cxr", outcome="ok")
    assert ok.raise_for_outcome() is ok


def _counter(name, **labels):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_radiograph_fallback_is_whole_thorax_flagged_and_counted():
    flat = np.full((128, 128), 0.5, np.float32)  # nothing to find
    before = _counter("lungsearch_data_radiomics_roi_fallbacks_total", modality="cxr", reason="empty")
    masks_before = _counter("lungsearch_data_lung_masks_total", modality="cxr", outcome="empty")
    roi = roi_masks([flat], modality="cxr")
    assert roi.fallback and roi.reason == "empty" and roi.outcomes == ("empty",)
    assert roi.masks.shape == (1, 128, 128) and roi.masks[0, 2:-2, 2:-2].all()  # whole image (but its rim)
    assert _counter("lungsearch_data_radiomics_roi_fallbacks_total", modality="cxr", reason="empty") == before + 1
    assert _counter("lungsearch_data_lung_masks_total", modality="cxr", outcome="empty") == masks_before + 1


def test_ct_falls_back_only_when_no_slice_has_lung():
    hu = np.full((96, 96), -1000.0, np.float32)
    body = _ellipse(hu.shape, 48, 48, 40, 44)
    hu[body] = 40.0
    chest = hu.copy()
    lungs = _ellipse(hu.shape, 46, 30, 24, 12) | _ellipse(hu.shape, 46, 66, 24, 12)
    chest[lungs] = -850.0
    chest += np.random.default_rng(0).normal(0, 10, chest.shape).astype(np.float32)
    roi = roi_masks([hu, chest], modality="ct")
    assert not roi.fallback and roi.outcomes == ("empty", "ok")
    assert not roi.masks[0].any() and roi.masks[1].sum() > 0.8 * lungs.sum()
    roi = roi_masks([hu, hu], modality="ct")
    assert roi.fallback and roi.reason == "empty"
    assert (roi.masks[0] == body).mean() > 0.97  # the filled body


def test_radiomics_on_the_fallback_is_defined():
    pytest.importorskip("radiomics")
    from lungsearch.models.radiomics import RadiomicsExtractor

    rng = np.random.default_rng(0)
    img = rng.random((64, 64)).astype(np.float32)
    roi = roi_masks([img * 0 + 0.5], modality="cxr")
    ex = RadiomicsExtractor(["firstorder"])
    feats = ex.extract_study(np.stack([img]), roi.masks)
    assert np.isfinite(feats).any()
