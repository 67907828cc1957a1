"""CT lung parenchyma on one axial slice in Hounsfield units.

Why not k-means and "does not touch the border" (the first version): a slice cropped around the
spine has lung at the field-of-view edge, and border-touching is how that version told outside
air from lung, so it found nothing (issue 21). HU are calibrated, so physics separates the air
classes instead:

* **Air-like** = below -400 HU (lung parenchyma is about -900..-600; soft tissue above -200).
* **Pure air** is at -1000 HU (-950 on some scanners): outside the body, the trachea and main bronchi, bowel and stomach
  gas. Parenchyma is air *mixed with tissue* (vessels, interstitium, partial volume), so a
  component with >= 40 % of its pixels below -930 HU is not lung; this removes outside air wherever
  it is, and the trachea and bowel gas, with one rule. (A lung that is almost all below -950 HU,
  i.e. severe bullous emphysema, is the known miss.)
* A remaining air-like component must lie at least partly inside the convex hull of the body
  (the largest soft-tissue component): foam pads and blankets on the table are air-like and
  outside it. A lung that touches the field-of-view edge keeps part of its area in the hull.
* A small component must reach the chest-wall band (bowel gas mixed with stool has lung-like HU).
* Each kept component is closed (juxtapleural nodules, dense dependent consolidation at the
  pleura) and hole-filled (vessels, nodules inside the lung).

Works at <= 256 px (stride), so a 512-px slice costs a few ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CtFit", "segment_ct", "AIR_HU", "PURE_AIR_HU"]

AIR_HU = -400.0  # air-like below this
PURE_AIR_HU = -930.0  # "pure air" below this (some scanners read outside air at -950)
PURE_AIR_FRACTION = 0.4
MIN_AREA_FRACTION = 0.001  # of the slice
MIN_HULL_FRACTION = 0.1
#: A lung abuts the chest wall: a *small* air-like component (under SMALL_FRACTION of the hull)
#: must come within this fraction of the body's size (sqrt of the hull area) of the hull's edge
#: or the image border. Small pockets of bowel gas mixed with stool have lung-like HU but sit
#: deeper in the abdomen; large components (lungs) are not tested.
MAX_WALL_DISTANCE = 0.12
SMALL_FRACTION = 0.02


@dataclass
class CtFit:
    mask: np.ndarray  # bool [H, W]
    _body: np.ndarray  # bool, working size: body tissue and lungs
    _step: int
    _shape: tuple[int, int]

    @property
    def body(self) -> np.ndarray:
        """bool [H, W]: the filled body, the whole-thorax fallback ROI (computed on demand)."""
        from scipy import ndimage as ndi

        b = ndi.binary_fill_holes(self._body)
        H, W = self._shape
        return np.repeat(np.repeat(b, self._step, axis=0), self._step, axis=1)[:H, :W]


def _disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= r * r


def segment_ct(hu: np.ndarray) -> CtFit:
    from scipy import ndimage as ndi
    from skimage.morphology import convex_hull_image

    x = np.asarray(hu, dtype=np.float32)
    H, W = x.shape
    step = max(1, int(np.ceil(max(H, W) / 256)))
    small = ndi.uniform_filter(x[::step, ::step], size=3)
    sh, sw = small.shape
    side = max(sh, sw)
    air = small < AIR_HU
    tissue = ~air
    # body = the largest soft-tissue component (an opening detaches the table and cables)
    opened = ndi.binary_opening(tissue, structure=_disk(max(1, side // 128)))
    tlab, tn = ndi.label(opened)
    if tn == 0:
        return CtFit(mask=np.zeros((H, W), dtype=bool), _body=np.zeros((sh, sw), dtype=bool), _step=step, _shape=(H, W))
    tareas = ndi.sum_labels(opened, tlab, index=np.arange(1, tn + 1))
    body = tlab == int(np.argmax(tareas)) + 1
    # Hull and the chest-wall band at <= 64 px: they only vote on whole components, and the
    # convex hull's rasterisation dominated the cost at full working size.
    k = max(1, int(np.ceil(side / 64)))
    hull_c = convex_hull_image(body[::k, ::k])
    depth = max(1, int(round(MAX_WALL_DISTANCE * np.sqrt(hull_c.sum()))))
    band_c = hull_c & ~ndi.binary_erosion(hull_c, iterations=depth, border_value=0)
    hull = np.repeat(np.repeat(hull_c, k, axis=0), k, axis=1)[:sh, :sw]
    band = np.repeat(np.repeat(band_c | ~hull_c, k, axis=0), k, axis=1)[:sh, :sw]
    alab, an = ndi.label(air)
    mask = np.zeros((sh, sw), dtype=bool)
    if an:
        idx = np.arange(1, an + 1)
        areas = ndi.sum_labels(air, alab, index=idx)
        pure = ndi.mean(small < PURE_AIR_HU, alab, index=idx)
        in_hull = ndi.mean(hull, alab, index=idx)
        near_wall = (ndi.mean(band, alab, index=idx) > 0) | (areas >= SMALL_FRACTION * hull.sum())
        keep = idx[
            (areas >= MIN_AREA_FRACTION * sh * sw)
            & (pure < PURE_AIR_FRACTION)
            & (in_hull >= MIN_HULL_FRACTION)
            & near_wall
        ]
        r_close = max(1, round(side * 0.025))
        disk = _disk(r_close)
        boxes = ndi.find_objects(alab)
        for lab in keep:
            sl = boxes[lab - 1]
            comp = alab[sl] == lab
            # Closed in its own padded box: cheap, and a lung at the edge is not clipped.
            padded = ndi.binary_closing(np.pad(comp, r_close + 1), structure=disk)
            comp = ndi.binary_fill_holes(padded)[r_close + 1 : -(r_close + 1), r_close + 1 : -(r_close + 1)]
            mask[sl] |= comp
    if step > 1:
        mask = np.repeat(np.repeat(mask, step, axis=0), step, axis=1)[:H, :W]
    return CtFit(mask=mask, _body=body | mask[::step, ::step], _step=step, _shape=(H, W))
