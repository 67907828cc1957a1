"""Plausibility of a lung mask: ranges learned from ~435 real lung masks, typed outcomes.

The ranges below were made by::

    python -m lungsearch.data.masks._build_atlas --print

(1st and 99th percentiles over the 435 frontal two-lung masks in torchxrayvision 1.5.7's
``semantic_masks_v7labs_lungs.zip``, each measured in its own image frame by
:func:`lungsearch.data.masks._build_atlas.frame_stats`.) Those images are mostly tight crops of
the chest, while a full radiograph also shows neck and abdomen (the lungs then cover less of it),
so each range is widened by :data:`TOLERANCE` of its span on both sides before it is applied.
With it, both lungs must cover 16-60 % of the image and each 13-64 % of its half.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LEARNED_RANGES", "TOLERANCE", "REASONS", "CT_MIN_BODY_FRACTION", "cxr_reasons", "ct_reasons"]

#: quantity -> (1st percentile, 99th percentile) over the torchxrayvision masks (see above).
LEARNED_RANGES: dict[str, tuple[float, float]] = {
    "area_total": (0.200, 0.565),  # both lungs / image
    "cx_left": (0.187, 0.401),  # image-left lung centroid, fraction of width
    "cx_right": (0.593, 0.808),
    "cy_left": (0.315, 0.595),  # centroid height, fraction of height
    "cy_right": (0.326, 0.620),
    "half_left": (0.171, 0.557),  # one lung / its half of the image
    "half_right": (0.199, 0.604),
    "ratio": (0.654, 0.998),  # smaller lung / larger lung
}
#: Slack on each learned range, as a fraction of its span. 0.1 keeps RG1 (a real full PA
#: radiograph: 27 % lung) and rejects RG3 (a leg radiograph whose two soft-tissue strips cover
#: 11 %); 0.25 let the leg through.
TOLERANCE = 0.1

#: The bounded vocabulary of failed checks (also metric label values).
REASONS = ("empty", "components", "area", "position", "balance", "modality")


def _within(name: str, value: float) -> bool:
    lo, hi = LEARNED_RANGES[name]
    pad = TOLERANCE * (hi - lo)
    return lo - pad <= value <= hi + pad


def cxr_reasons(mask: np.ndarray) -> tuple[tuple[str, ...], dict[str, float]]:
    """Failed checks of a radiograph lung mask (empty tuple = plausible) and the measured values."""
    from scipy import ndimage as ndi

    from lungsearch.data.masks._build_atlas import frame_stats

    if not mask.any():
        return ("empty",), {}
    step = max(1, int(np.ceil(max(mask.shape) / 256)))
    m = mask[::step, ::step]
    lab, n = ndi.label(m)
    if n == 0:
        return ("empty",), {}
    areas = ndi.sum_labels(m, lab, index=np.arange(1, n + 1))
    big = int((areas >= 0.02 * m.size).sum())
    stats = {"components": float(big), "area_total": float(m.mean())}
    if big != 2:
        return ("components",), stats
    stats.update(frame_stats(m))
    reasons = []
    if not (
        _within("area_total", stats["area_total"])
        and _within("half_left", stats["half_left"])
        and _within("half_right", stats["half_right"])
    ):
        reasons.append("area")
    if not all(_within(k, stats[k]) for k in ("cx_left", "cx_right", "cy_left", "cy_right")):
        reasons.append("position")
    if not _within("ratio", stats["ratio"]):
        reasons.append("balance")
    return tuple(reasons), stats


#: A CT slice whose lungs cover less than this fraction of the body (tissue + lungs) is not
#: trusted: the air cells of the sinuses or mastoids on a head slice look like a small lung
#: (pydicom's J2K_pixelrep_mismatch.dcm: 1.16 %), while the thinnest real lung bases seen here
#: cover 1.54 % (pydicom-data's bad_sequence.dcm). Set between those two, i.e. on two images:
#: a weak check. Such slices are skipped, not fatal: a series falls back only when no slice passes.
CT_MIN_BODY_FRACTION = 0.013


def ct_reasons(mask: np.ndarray, body_fraction: float | None = None) -> tuple[tuple[str, ...], dict[str, float]]:
    """Failed checks of a CT slice lung mask. An empty slice is ``("empty",)`` (normal above the
    apices or below the bases; a study is judged on all its slices)."""
    if not mask.any():
        return ("empty",), {"area_total": 0.0}
    stats = {"area_total": float(mask.mean())}
    if body_fraction is not None:
        stats["body_fraction"] = float(body_fraction)
        if body_fraction < CT_MIN_BODY_FRACTION:
            return ("area",), stats
    return (), stats
