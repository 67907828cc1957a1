"""Lung parenchyma masks, as in paper 3 (MFMIRS), for CT slices and radiographs.

The recipe of the paper: a 2-cluster k-means on intensity gives the parenchyma and "everything
else" centroids; their midpoint is the threshold; binarise; morphological opening/closing removes
noise; keep the lung components; fill holes. Choices the paper leaves open, made here:

* k-means runs on the central 80 % of the image, so the air around the patient does not pull the
  dark centroid (it would in a tight field of view); it is 1-D, initialised at the 10th/90th
  percentiles, and stops when the centroids move by < 1e-3 of the range.
* "Lung components" = dark components that do not touch the image border (the air outside the
  body does), the two largest kept, the second only if it has >= 15 % of the largest's area.
* Holes are filled per component (vessels, nodules inside the lung), then a closing of radius
  ~2.5 % of the side pulls juxtapleural lesions (consolidation on the pleura) back in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans_threshold", "lung_mask"]


def kmeans_threshold(values: np.ndarray, iters: int = 50) -> float:
    """Midpoint of the two centroids of a 1-D 2-means clustering of ``values``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    if v.size > 200_000:
        v = v[:: v.size // 200_000]
    lo, hi = np.percentile(v, [10, 90])
    if hi <= lo:
        return float(lo)
    tol = 1e-3 * (float(v.max()) - float(v.min()) + 1e-12)
    for _ in range(iters):
        thr = 0.5 * (lo + hi)
        dark, bright = v[v <= thr], v[v > thr]
        if dark.size == 0 or bright.size == 0:
            break
        nlo, nhi = dark.mean(), bright.mean()
        moved = abs(nlo - lo) + abs(nhi - hi)
        lo, hi = nlo, nhi
        if moved < tol:
            break
    return float(0.5 * (lo + hi))


def _disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def lung_mask(pixels: np.ndarray, *, modality: str) -> np.ndarray:
    """Boolean lung mask of one 2-D image.

    Args:
        pixels: [H, W]: Hounsfield units for ``modality="ct"``, [0, 1] intensities (air dark)
            for ``"cxr"`` (as :func:`lungsearch.data.read_image` returns them).
        modality: "ct" or "cxr" ("mr" is treated like "cxr").

    Returns:
        bool [H, W]; all False when no lung-like region is found.
    """
    from scipy import ndimage as ndi

    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim != 2 or x.size == 0:
        return np.zeros(x.shape if x.ndim == 2 else (0, 0), dtype=bool)
    x = np.nan_to_num(x, nan=float(np.nanmin(x)) if np.isfinite(x).any() else 0.0)
    h, w = x.shape
    # Work at <= 256 px: the morphology is resolution-relative and this keeps it ~ms per slice.
    step = max(1, int(np.ceil(max(h, w) / 256)))
    small = x[::step, ::step]
    if modality == "ct":
        small = np.clip(small, -1100.0, 600.0)
    else:
        small = ndi.uniform_filter(small, size=3)
    sh, sw = small.shape
    core = small[int(sh * 0.1):max(int(sh * 0.9), 1), int(sw * 0.1):max(int(sw * 0.9), 1)]
    thr = kmeans_threshold(core if core.size else small)
    dark = small < thr
    side = max(sh, sw)
    dark = ndi.binary_opening(dark, structure=_disk(max(1, side // 128)))
    labels, n = ndi.label(dark)
    if n == 0:
        return np.zeros((h, w), dtype=bool)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    areas = ndi.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    order = [i + 1 for i in np.argsort(-areas) if (i + 1) not in set(border.tolist())]
    min_area = 0.002 * sh * sw
    keep = [lab for lab in order[:2] if areas[lab - 1] >= min_area]
    if len(keep) == 2 and areas[keep[1] - 1] < 0.15 * areas[keep[0] - 1]:
        keep = keep[:1]
    mask = np.zeros_like(dark)
    r_close = max(1, round(side * 0.025))
    for lab in keep:
        comp = labels == lab
        # Pad before closing so a lung near the edge is not clipped by the structuring element.
        padded = np.pad(comp, r_close + 1)
        padded = ndi.binary_closing(padded, structure=_disk(r_close))
        comp = padded[r_close + 1:-(r_close + 1), r_close + 1:-(r_close + 1)]
        mask |= ndi.binary_fill_holes(comp)
    if step > 1:
        mask = np.repeat(np.repeat(mask, step, axis=0), step, axis=1)[:h, :w]
    return mask.astype(bool)
