"""Radiograph lung masks: Dice on phantoms drawn on held-out real lung outlines, and each
failure mode of issue 21 (collimation, marker, MONOCHROME1, 16-bit, exposure, effusion, device).

The phantoms are synthetic; their lungs are real outlines from torchxrayvision's masks that the
shipped atlas did not use (``held_out_bank``), so the atlas never saw the shape it is scored on.
"""

from __future__ import annotations

import numpy as np
import pytest

from lungsearch.data.masks import lung_mask_checked
from lungsearch.metrics import dice

pytest.importorskip("torchxrayvision", reason="phantom lung outlines come from torchxrayvision's masks")


@pytest.fixture(scope="module")
def bank():
    from lungsearch.data.masks._build_atlas import held_out_bank

    return held_out_bank()


def _phantom(bank, seed: int, *findings):
    from lungsearch.data.phantoms._cxr import render_cxr

    img, truth = render_cxr(np.random.default_rng(seed), 224, bank, tuple(findings))
    return img.astype(np.float32) / 255.0, truth


def test_atlas_is_small_and_disjoint_from_the_held_out_outlines(bank):
    import os

    from lungsearch.data.masks import _atlas
    from lungsearch.data.phantoms._shapes import load_shape_bank

    atlas = _atlas.load_atlas()
    assert atlas.masks.shape[1:] == (64, 64) and 150 <= len(atlas.masks) <= 300
    assert os.path.getsize(_atlas._PATH) < 100_000
    # the atlas holds the even positions of the filtered bank, the held-out bank the odd ones
    full = load_shape_bank()
    assert len(atlas.masks) + len(bank) == len(full)
    assert set(bank.names).isdisjoint(full.names[0::2])


def test_phantom_dice(bank):
    scores = [
        dice(lung_mask_checked(_phantom(bank, s)[0], modality="cxr").mask, _phantom(bank, s)[1]) for s in range(6)
    ]
    assert np.median(scores) >= 0.88 and min(scores) >= 0.8, scores


def _collimate(x):
    y = x.copy()
    b = int(0.08 * y.shape[0])
    y[:b], y[-b:], y[:, :b] = 0.97, 0.97, 0.97  # unexposed (bright) borders on three sides
    return y


def _marker(x):
    y = x.copy()
    s = y.shape[0]
    y[int(0.86 * s) : int(0.94 * s), int(0.06 * s) : int(0.12 * s)] = 1.0  # burned-in "R"
    y[int(0.04 * s) : int(0.07 * s), int(0.55 * s) : int(0.9 * s)] = 1.0  # burned-in text line
    return y


MODES = {
    "collimation_border": _collimate,
    "burned_in_marker": _marker,
    "monochrome1_not_inverted": lambda x: 1.0 - x,
    "16_bit": lambda x: np.round(x * 52000 + 900).astype(np.uint16),
    "under_exposed": lambda x: 0.25 * x**2.2,
    "over_exposed": lambda x: 0.75 + 0.25 * x**0.35,
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_failure_modes(bank, mode):
    x, truth = _phantom(bank, 11)
    base = dice(lung_mask_checked(x, modality="cxr").mask, truth)
    res = lung_mask_checked(MODES[mode](x), modality="cxr")
    assert res.ok, res.reasons
    d = dice(res.mask, truth)
    assert d >= 0.8 and d >= base - 0.06, (mode, d, base)
    assert res.inverted == (mode == "monochrome1_not_inverted")


def _large_effusion(bank):
    from lungsearch.data.phantoms._reports import Finding

    return _phantom(bank, 3, Finding(kind="effusion", label="Effusion", side="bilateral", severity=1.3))


def test_large_effusion_gives_a_plausible_field(bank):
    x, truth = _large_effusion(bank)
    res = lung_mask_checked(x, modality="cxr")
    assert res.ok, res.reasons
    assert dice(res.mask, truth) >= 0.8


@pytest.mark.xfail(
    strict=True,
    reason="known gap (docs/masks.md): the box and the fused atlas prior are both "
    "chosen by correlation with lung darkness, so the fluid reads as 'no lung' and the prior itself "
    "stops at the fluid's upper edge (34 % of the lower third covered here; 3-46 % over six seeds, "
    "4-51 % even with no penalty on bright pixels). Needs a cue that does not come from lung darkness: "
    "the lateral chest wall and costophrenic angles, or meniscus (fluid) vs dome (diaphragm) shape",
)
def test_large_effusion_is_lung_field_not_just_air(bank):
    x, truth = _large_effusion(bank)
    res = lung_mask_checked(x, modality="cxr")
    # the fluid sits in the lower third of each lung outline: most of it must be in the mask
    rows = np.nonzero(truth.any(1))[0]
    lower = truth.copy()
    lower[: rows[0] + int(0.67 * (rows[-1] - rows[0]))] = False
    assert res.mask[lower].mean() >= 0.6


def test_device_and_consolidation(bank):
    from lungsearch.data.phantoms._reports import Finding

    for seed, f in ((5, Finding(kind="device", label="Device")), (7, Finding(kind="opacity", label="Consolidation"))):
        x, truth = _phantom(bank, seed, f)
        res = lung_mask_checked(x, modality="cxr")
        assert res.ok and dice(res.mask, truth) >= 0.8, (f.kind, res.reasons)


def test_a_wrong_fit_is_flagged_not_silent(bank):
    """A dense consolidation that pulls the fit off the lungs (seed 9: Dice ~0.3) must come back
    implausible, so radiomics falls back to the whole thorax instead of reading the wrong region."""
    from lungsearch.data.masks import roi_masks
    from lungsearch.data.phantoms._reports import Finding

    x, truth = _phantom(bank, 9, Finding(kind="opacity", label="Consolidation"))
    res = lung_mask_checked(x, modality="cxr")
    assert dice(res.mask, truth) < 0.6 and res.outcome == "implausible", res.reasons
    roi = roi_masks([x], modality="cxr")
    assert roi.fallback and roi.reason in ("area", "position")
    assert roi.masks[0].sum() > res.mask.sum()  # the thorax box, not the misplaced lungs
