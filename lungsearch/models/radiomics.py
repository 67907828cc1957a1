"""pyradiomics features on the lung-mask ROI, with a fixed feature order and a standardisation
scaler stored as module buffers (saved with the model's weights).

Cost (FACTS.md, one 256×256 slice): firstorder + GLCM ~35 ms; all 2D classes ~3.2 s (GLSZM,
GLRLM and NGTDM dominate). The default is therefore ``firstorder`` + ``glcm`` (42 features);
the others are opt-in. pyradiomics is imported lazily (only when features are extracted).

    >>> ex = RadiomicsExtractor(classes=["firstorder", "glcm"])
    >>> vec = ex.extract(slice_hu, lung_mask)        # float64 [42], NaN where undefined
    >>> ex.feature_names[:2]
    ['firstorder_10Percentile', 'firstorder_90Percentile']
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from lungsearch.errors import ConfigError, InvalidRequestError
from lungsearch.models.registry import RADIOMICS, BuildContext, take_params

__all__ = ["RadiomicsExtractor", "RadiomicsScaler", "RadiomicsModule", "FEATURE_CLASSES", "DEFAULT_CLASSES"]

#: Classes selectable in 2D (``shape2D`` is the 2D shape class; ``shape`` is accepted as an alias).
FEATURE_CLASSES = ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
DEFAULT_CLASSES = ("firstorder", "glcm")

_log = logging.getLogger(__name__)


def _feature_names(classes: Sequence[str]) -> list[str]:
    from radiomics import getFeatureClasses

    fc = getFeatureClasses()
    names = []
    for cls in classes:
        names += [f"{cls}_{n}" for n, deprecated in sorted(fc[cls].getFeatureNames().items()) if not deprecated]
    return names


def _normalise_classes(classes: Sequence[str]) -> list[str]:
    out = []
    for c in classes:
        c = "shape2D" if c in ("shape", "shape2d") else c
        if c not in FEATURE_CLASSES:
            raise ConfigError(f"radiomics: unknown feature class {c!r}; choose from {', '.join(FEATURE_CLASSES)}")
        if c not in out:
            out.append(c)
    # fixed order regardless of how the config lists them
    return [c for c in FEATURE_CLASSES if c in out]


class RadiomicsExtractor:
    """2D pyradiomics on one slice and its ROI mask.

    Args:
        classes: feature classes (see :data:`FEATURE_CLASSES`); order in the output is fixed
            (the order of :data:`FEATURE_CLASSES`, then feature name).
        bin_count: grey levels for texture matrices. A fixed bin *count* (not pyradiomics'
            default bin width of 25) so the same settings work for HU slices and for [0, 1]
            preprocessed images.
        min_roi_pixels: smaller masks give an all-NaN vector (texture undefined).
        settings: extra pyradiomics settings (e.g. ``{"binWidth": 25}`` to use a width instead).
    """

    def __init__(
        self,
        classes: Sequence[str] = DEFAULT_CLASSES,
        bin_count: int = 32,
        min_roi_pixels: int = 16,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.classes = _normalise_classes(classes)
        if not self.classes:
            raise ConfigError("radiomics: choose at least one feature class")
        self.feature_names = _feature_names(self.classes)
        self.bin_count = bin_count
        self.min_roi_pixels = min_roi_pixels
        self.settings = dict(settings or {})
        self._extractor = None

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def _get(self):
        if self._extractor is None:
            from radiomics import featureextractor

            logging.getLogger("radiomics").setLevel(logging.ERROR)
            settings = {
                "force2D": True,
                "force2Ddimension": 0,
                "label": 1,
                "correctMask": True,
                "additionalInfo": False,
            }
            if "binWidth" not in self.settings:
                settings["binCount"] = self.bin_count
            settings.update(self.settings)
            ex = featureextractor.RadiomicsFeatureExtractor(**settings)
            ex.disableAllFeatures()
            for cls in self.classes:
                ex.enableFeatureClassByName(cls)
            self._extractor = ex
        return self._extractor

    def extract(self, pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Features ``float64 [F]`` of one 2D image inside ``mask``; NaN where undefined.

        Raises:
            InvalidRequestError: shapes differ or the input is not 2D.
        """
        import SimpleITK as sitk

        img = np.asarray(pixels, dtype=np.float64)
        m = np.asarray(mask).astype(bool)
        if img.ndim == 3 and img.shape[0] == 1:
            img = img[0]
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if img.ndim != 2 or img.shape != m.shape:
            raise InvalidRequestError(
                f"radiomics needs a 2D image and a mask of the same shape, got {img.shape} and {m.shape}"
            )
        out = np.full(self.num_features, np.nan)
        if int(m.sum()) < self.min_roi_pixels or not np.isfinite(img[m]).all():
            return out
        if float(img[m].max() - img[m].min()) == 0.0:
            return out  # constant ROI: texture matrices are degenerate
        # Crop to the ROI's bounding box (+1 px margin) before SimpleITK sees the slice.
        # pyradiomics crops too, but only after its mask check, casts and label statistics ran
        # over the whole image: on a 512x512 CT slice with a lung mask that was a third of the
        # CPU time (29.5 -> 19.7 ms; 1.3x at 256 px, ~1.1x at 128 px; docs/performance.md).
        # Every feature class reads only pixels inside the mask (and the margin keeps the shape
        # perimeter), so the features are identical (tests/models/test_radiomics.py).
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        r0, r1 = max(int(rows[0]) - 1, 0), int(rows[-1]) + 2
        c0, c1 = max(int(cols[0]) - 1, 0), int(cols[-1]) + 2
        img, m = img[r0:r1, c0:c1], m[r0:r1, c0:c1]
        # pyradiomics works on 3D volumes; a one-slice volume with force2D is the 2D case
        image = sitk.GetImageFromArray(img[None])
        label = sitk.GetImageFromArray(m[None].astype(np.uint8))
        try:
            result = self._get().execute(image, label)
        except (ValueError, RuntimeError, IndexError) as exc:  # pyradiomics raises these on bad ROIs
            _log.debug("radiomics extraction failed: %s", type(exc).__name__)
            return out
        for k, name in enumerate(self.feature_names):
            v = result.get(f"original_{name}")
            if v is not None:
                out[k] = float(v)
        return out

    def extract_study(self, slices: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Per-case features of a CT series ``[S, H, W]``: NaN-aware mean over slices."""
        feats = np.stack([self.extract(s, m) for s, m in zip(slices, masks)])
        with np.errstate(all="ignore"):
            finite = np.isfinite(feats)
            total = np.where(finite, feats, 0.0).sum(0)
            count = finite.sum(0)
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)


class RadiomicsScaler(nn.Module):
    """Standardisation ``(x - mean) / std`` fitted on training features, kept as buffers.

    Non-finite inputs (failed features) become 0 after standardisation (= the training mean),
    and outputs are clipped to ``±clip`` so one outlier slice cannot dominate the fusion.
    Until :meth:`fit` runs the scaler is the identity (with the same NaN handling).
    """

    def __init__(self, feature_names: Sequence[str], clip: float = 10.0) -> None:
        super().__init__()
        self.feature_names = list(feature_names)
        f = len(self.feature_names)
        self.register_buffer("mean", torch.zeros(f, dtype=torch.float64))
        self.register_buffer("std", torch.ones(f, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))
        self.clip = clip
        self.out_dim = f

    @torch.no_grad()
    def fit(self, raw: np.ndarray | torch.Tensor) -> "RadiomicsScaler":
        """Fit on training features ``[N, F]`` (non-finite values ignored per feature)."""
        x = torch.as_tensor(np.asarray(raw, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != self.out_dim:
            raise InvalidRequestError(f"radiomics scaler expects [N, {self.out_dim}], got {tuple(x.shape)}")
        finite = torch.isfinite(x)
        cnt = finite.sum(0).clamp_min(1)
        xz = torch.where(finite, x, torch.zeros_like(x))
        mean = xz.sum(0) / cnt
        var = (torch.where(finite, x - mean, torch.zeros_like(x)) ** 2).sum(0) / cnt
        std = var.sqrt()
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))  # constant feature -> 0
        self.fitted.fill_(True)
        return self

    def forward(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Standardised ``float32 [N, F]``."""
        x = (
            torch.as_tensor(np.asarray(raw, dtype=np.float64))
            if not isinstance(raw, torch.Tensor)
            else raw.to(torch.float64)
        )
        x = x.to(self.mean.device)
        z = (x - self.mean) / self.std
        z = torch.where(torch.isfinite(z), z, torch.zeros_like(z)).clamp(-self.clip, self.clip)
        return z.to(torch.float32)


class RadiomicsModule(RadiomicsScaler):
    """The model's radiomics part: the scaler plus a lazily created extractor."""

    def __init__(
        self,
        classes: Sequence[str] = DEFAULT_CLASSES,
        bin_count: int = 32,
        clip: float = 10.0,
        min_roi_pixels: int = 16,
    ) -> None:
        self.extractor = RadiomicsExtractor(classes, bin_count=bin_count, min_roi_pixels=min_roi_pixels)
        super().__init__(self.extractor.feature_names, clip=clip)


@RADIOMICS.register("pyradiomics")
def _pyradiomics(params: dict[str, Any], ctx: BuildContext) -> RadiomicsModule:
    p = take_params(
        "pyradiomics", params, {"classes": list(DEFAULT_CLASSES), "bin_count": 32, "clip": 10.0, "min_roi_pixels": 16}
    )
    return RadiomicsModule(**p)
