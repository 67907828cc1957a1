"""Lung masks for CT slices and radiographs, with plausibility checks and a flagged fallback.

* :func:`lung_mask` (as before): a bool mask of one 2-D image.
* :func:`lung_mask_checked`: the mask *and* what the checks said (:class:`LungMaskResult`);
  ``result.raise_for_outcome()`` raises :class:`EmptyLungMask` / :class:`ImplausibleLungMask`.
* :func:`roi_masks`: what radiomics should read for one case: the lung masks when they pass,
  otherwise the whole thorax, flagged (``fallback=True``) and counted in
  ``lungsearch_data_radiomics_roi_fallbacks_total``.

Radiographs (:mod:`._cxr`): exposed-field crop, rank normalisation, a match of the lung layout
learned from 217 real lung masks (:mod:`._atlas`, shipped as ``atlas.npz``), atlas fusion and a
prior-weighted intensity vote. CT (:mod:`._ct`): HU physics (air-like < -400 HU, pure air
excluded, body hull). Checks (:mod:`._checks`): two components, area and position within ranges
learned from ~435 real masks. Measurements and overlays: ``docs/masks.md``.

Example::

    >>> res = lung_mask_checked(image.pixels, modality="cxr")
    >>> res.outcome, res.reasons            # ("ok", ()) or ("implausible", ("area",)) ...
    >>> roi = roi_masks([image.pixels], modality="cxr")
    >>> roi.fallback                         # True: radiomics reads the whole thorax
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from lungsearch.data.masks._checks import REASONS, ct_reasons, cxr_reasons
from lungsearch.data.masks._kmeans import kmeans_threshold
from lungsearch.errors import LungsearchError

__all__ = [
    "EmptyLungMask",
    "ImplausibleLungMask",
    "LungMaskError",
    "LungMaskResult",
    "REASONS",
    "RoiMasks",
    "kmeans_threshold",
    "lung_mask",
    "lung_mask_checked",
    "roi_masks",
]

log = logging.getLogger(__name__)


class LungMaskError(LungsearchError):
    """The lung mask of an image failed its checks; ``code`` is one of :data:`REASONS`."""

    grpc_status = "FAILED_PRECONDITION"
    reason = "INVALID_IMAGE"


class EmptyLungMask(LungMaskError):
    """No lung-like region was found (code ``"empty"``)."""


class ImplausibleLungMask(LungMaskError):
    """A mask was found but its shape, size or position is not that of two lungs."""


@dataclass(frozen=True)
class LungMaskResult:
    """A lung mask and what its plausibility checks said.

    Attributes:
        mask: bool [H, W].
        modality: "ct" or "cxr" (what the mask was computed as).
        outcome: "ok", "empty" or "implausible".
        reasons: failed checks, from :data:`REASONS` (empty when ``outcome == "ok"``).
        stats: the measured values the checks compared (area fractions, centroids, ...).
        inverted: a radiograph came in with the wrong polarity (MONOCHROME1 not applied) and was
            segmented inverted.
    """

    mask: np.ndarray
    modality: str
    outcome: str
    reasons: tuple[str, ...] = ()
    stats: dict = field(default_factory=dict)
    inverted: bool = False
    _thorax: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def thorax(self) -> np.ndarray:
        """bool [H, W]: the whole-thorax ROI (CT: the filled body; CXR: the lung-field box with
        its margin, or the whole image when nothing was found)."""
        if self._thorax is None:
            return np.ones_like(self.mask, dtype=bool)
        return self._thorax()

    def raise_for_outcome(self) -> "LungMaskResult":
        """Return self when plausible, else raise :class:`EmptyLungMask` / :class:`ImplausibleLungMask`."""
        if self.outcome == "empty":
            raise EmptyLungMask(f"no lung found in the {self.modality} image", code="empty")
        if self.outcome != "ok":
            raise ImplausibleLungMask(
                f"{self.modality} lung mask failed its checks: {', '.join(self.reasons)}",
                code=self.reasons[0] if self.reasons else "implausible",
            )
        return self


def _empty(shape, modality: str) -> LungMaskResult:
    return LungMaskResult(mask=np.zeros(shape, dtype=bool), modality=modality, outcome="empty", reasons=("empty",))


def lung_mask_checked(pixels: np.ndarray, *, modality: str) -> LungMaskResult:
    """Lung mask of one 2-D image and its plausibility outcome (counted in
    ``lungsearch_data_lung_masks_total``).

    Args:
        pixels: [H, W]: Hounsfield units for ``modality="ct"``; for ``"cxr"`` any intensity scale
            (8-16 bit, [0, 1]) of a frontal radiograph, either polarity.
        modality: "ct" or "cxr" ("mr" and anything else are treated like "cxr").

    Returns:
        A :class:`LungMaskResult`; it never raises for an implausible mask (call
        :meth:`LungMaskResult.raise_for_outcome` for that).
    """
    from lungsearch.data.masks._metrics import count_mask

    x = np.asarray(pixels, dtype=np.float32)
    kind = "ct" if modality == "ct" else "cxr"
    if x.ndim != 2 or x.size == 0:
        res = _empty(x.shape if x.ndim == 2 else (0, 0), kind)
    elif not np.isfinite(x).any() or float(np.nanmax(x) - np.nanmin(x)) == 0.0 or min(x.shape) < 8:
        res = _empty(x.shape, kind)
    else:
        x = np.nan_to_num(x, nan=float(np.nanmin(x)))
        if kind == "ct":
            from lungsearch.data.masks._ct import segment_ct

            fit = segment_ct(x)
            lung_px = int(fit.mask[:: fit._step, :: fit._step].sum())
            reasons, stats = ct_reasons(fit.mask, lung_px / max(int(fit._body.sum()), 1))
            res = LungMaskResult(
                mask=fit.mask,
                modality=kind,
                outcome=_outcome(reasons),
                reasons=reasons,
                stats=stats,
                _thorax=lambda fit=fit: fit.body,
            )
        else:
            from lungsearch.data.masks._cxr import segment_cxr

            fit = segment_cxr(x)
            reasons, stats = cxr_reasons(fit.mask)
            if modality != "cxr" and reasons != ("empty",):
                # The layout match is made and checked for frontal radiographs only: an MR slice
                # can pass the shape checks (pydicom's examples_overlay.dcm, a head, did).
                reasons = reasons + ("modality",)
            stats["layout_score"] = fit.score
            res = LungMaskResult(
                mask=fit.mask,
                modality=kind,
                outcome=_outcome(reasons),
                reasons=reasons,
                stats=stats,
                inverted=fit.inverted,
                _thorax=lambda fit=fit: fit.thorax,
            )
    count_mask(modality, res.outcome)
    return res


def _outcome(reasons: tuple[str, ...]) -> str:
    if not reasons:
        return "ok"
    return "empty" if reasons == ("empty",) else "implausible"


def lung_mask(pixels: np.ndarray, *, modality: str) -> np.ndarray:
    """Boolean lung mask of one 2-D image (unchecked; see :func:`lung_mask_checked`).

    Args:
        pixels: [H, W]: Hounsfield units for ``modality="ct"``, a radiograph's intensities
            otherwise (as :func:`lungsearch.data.read_image` returns them; any scale works).
        modality: "ct" or "cxr" ("mr" is treated like "cxr").

    Returns:
        bool [H, W]; all False when no lung-like region is found. A radiograph's mask is returned
        even when it fails the plausibility checks: consumers that must not read a wrong region
        use :func:`roi_masks` or :func:`lung_mask_checked`.
    """
    return lung_mask_checked(pixels, modality=modality).mask


@dataclass(frozen=True)
class RoiMasks:
    """The regions radiomics reads for one case.

    Attributes:
        masks: bool [S, H, W], one per slice / image.
        fallback: True when the lung masks failed and ``masks`` is the whole thorax.
        reason: why it fell back ("" when it did not): a value of :data:`REASONS`.
        outcomes: the per-slice mask outcomes.
    """

    masks: np.ndarray
    fallback: bool
    reason: str
    outcomes: tuple[str, ...]


def roi_masks(slices: Sequence[np.ndarray], *, modality: str) -> RoiMasks:
    """Lung masks for radiomics, or the whole thorax (flagged, logged, counted) when they fail.

    A radiograph falls back when its mask is empty or implausible. A CT series falls back only
    when *no* slice has a plausible lung (slices above the apices or below the bases are empty
    by nature; their features are NaN and the NaN-aware study mean skips them).
    """
    from lungsearch.data.masks._metrics import count_fallback

    results = [lung_mask_checked(s, modality=modality) for s in slices]
    outcomes = tuple(r.outcome for r in results)
    if not results:
        return RoiMasks(masks=np.zeros((0, 0, 0), dtype=bool), fallback=False, reason="", outcomes=())
    if any(r.ok for r in results):
        if modality == "ct":
            masks = [r.mask if r.ok else np.zeros_like(r.mask) for r in results]
            return RoiMasks(masks=np.stack(masks), fallback=False, reason="", outcomes=outcomes)
        if all(r.ok for r in results):
            return RoiMasks(masks=np.stack([r.mask for r in results]), fallback=False, reason="", outcomes=outcomes)
    bad = next(r for r in results if not r.ok)
    reason = bad.reasons[0] if bad.reasons else "empty"
    count_fallback(modality, reason)
    # No identifiers here: the log line carries only the modality and the bounded reason.
    log.warning("lung mask failed (%s, %s): radiomics on the whole thorax", "ct" if modality == "ct" else "cxr", reason)
    thorax = np.stack([r.thorax() for r in results])
    # A 2-px rim off: pyradiomics returns nothing for an ROI that fills the whole image.
    thorax[:, :2], thorax[:, -2:], thorax[:, :, :2], thorax[:, :, -2:] = False, False, False, False
    return RoiMasks(masks=thorax, fallback=True, reason=reason, outcomes=outcomes)
