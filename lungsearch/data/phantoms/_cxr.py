"""Chest radiograph phantoms: anatomy on a real lung outline, findings where the report puts them.

Drawn in attenuation units (bright = dense), as a PA radiograph is displayed (the patient's
right on the image left):

* body and soft tissue, lungs on one of the real lung masks (:mod:`._shapes`), heart (its
  cardiothoracic ratio is the cardiomegaly signal), mediastinum, spine, hila, posterior ribs,
  clavicles, breast shadows, gastric bubble, vascular markings;
* findings from :class:`~._reports.Finding` (opacity, edema, nodule/mass/granuloma, effusion with
  a blunted costophrenic angle, atelectasis with volume loss, pneumothorax, emphysema, devices,
  scoliosis) at the stated side and zone, with a per-case visibility;
* nuisance that has nothing to do with the label: exposure, patient size, rotation, blur,
  quantum noise, breast shadows, pseudo-nodules (vessels end-on, nipples) in any case.

The image alone is deliberately imperfect evidence: the visibility of findings is drawn per case
(some are faint), normal anatomy varies as much as mild disease does (a large normal heart vs
borderline cardiomegaly), and overlapping anatomy hides small lesions. The report then carries
information the image does not.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from lungsearch.data.phantoms._reports import Finding
from lungsearch.data.phantoms._shapes import ShapeBank

__all__ = ["CXR4_TARGETS", "render_cxr", "render_cxr4"]

CXR4_TARGETS = ("COVID", "Lung_Opacity", "Viral_Pneumonia", "Normal")
#: Overall strength of label-dependent findings (tuned so that a logistic regression on simple
#: image statistics is clearly above chance and well below perfect; see docs/phantoms.md).
SIGNAL = 1.6
#: The default of :data:`SIGNAL`; ``generate(signal=x)`` renders with ``SIGNAL = BASE_SIGNAL * x``.
BASE_SIGNAL = SIGNAL
#: Strength of the cxr4 classes' findings (multiplies each film's visibility); ``generate(signal=x)`` sets it to x.
CXR4_SIGNAL = 1.0


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _lowpass_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise of correlation length ~sigma px."""
    n = ndi.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma, mode="wrap")
    s = float(n.std())
    return n / s if s > 0 else n


class _Anatomy:
    """Geometry of one rendered chest: lung masks, per-side extents, heart, spine."""

    def __init__(self, rng: np.random.Generator, size: int, bank: ShapeBank, emphysema: bool) -> None:
        S = size
        idx = int(rng.integers(len(bank)))
        canon = bank.mask(idx)
        aspect = float(bank.aspect[idx]) * rng.uniform(0.92, 1.08) * (1.08 if emphysema else 1.0)
        self.wf = S * rng.uniform(0.60, 0.72)
        self.hf = float(np.clip(self.wf * aspect, 0.50 * S, 0.76 * S))
        self.top = S * rng.uniform(0.08, 0.14)
        self.cx = S / 2 + S * rng.uniform(-0.03, 0.03)
        from PIL import Image

        w, h = max(2, round(self.wf)), max(2, round(self.hf))
        small = np.asarray(Image.fromarray(canon.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)) > 127
        lungs = np.zeros((S, S), dtype=bool)
        y0, x0 = int(round(self.top)), int(round(self.cx - self.wf / 2))
        ys, xs = slice(max(y0, 0), min(y0 + h, S)), slice(max(x0, 0), min(x0 + w, S))
        lungs[ys, xs] = small[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        self.lungs = lungs
        _, xx = _grid(S)
        # Image left = patient right.
        self.side = {"right": lungs & (xx < self.cx), "left": lungs & (xx >= self.cx)}
        self.extent = {}
        for name, m in self.side.items():
            rows = np.nonzero(m.any(axis=1))[0]
            cols = np.nonzero(m.any(axis=0))[0]
            if rows.size == 0:
                rows = np.array([int(self.top), int(self.top + self.hf) - 1])
                cols = np.array([int(self.cx) - 1, int(self.cx)])
            self.extent[name] = (float(rows.min()), float(rows.max()), float(cols.min()), float(cols.max()))
        self.bottom = max(e[1] for e in self.extent.values())


def _zone_rows(ext: tuple[float, float, float, float], zone: str) -> tuple[float, float]:
    top, bot = ext[0], ext[1]
    h = bot - top
    return {
        "upper": (top, top + h * 0.38),
        "middle": (top + h * 0.33, top + h * 0.66),
        "lower": (top + h * 0.6, bot),
    }.get(zone, (top, bot))


def _pick_point(
    rng: np.random.Generator, mask: np.ndarray, rows: tuple[float, float], margin: int = 0
) -> tuple[float, float] | None:
    m = mask
    if margin > 0:
        m = ndi.binary_erosion(mask, iterations=margin) if mask.sum() > 50 else mask
    ys, xs = np.nonzero(m[int(rows[0]) : int(rows[1]) + 1])
    if ys.size == 0:
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            return None
        i = int(rng.integers(ys.size))
        return float(ys[i]), float(xs[i])
    i = int(rng.integers(ys.size))
    return float(ys[i] + int(rows[0])), float(xs[i])


def _blob(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = _grid(size)
    return np.exp(-0.5 * (((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2)).astype(np.float32)


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = _grid(size)
    d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / max(r, 0.5) ** 2
    return np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)).astype(np.float32)


def _sides(rng: np.random.Generator, side: str, p_bilateral: float = 0.25) -> list[str]:
    if side == "bilateral":
        return ["right", "left"]
    if side in ("left", "right"):
        return [side]
    if rng.random() < p_bilateral:
        return ["right", "left"]
    return ["right" if rng.random() < 0.5 else "left"]


def _base_image(
    rng: np.random.Generator, size: int, an: _Anatomy, *, ctr: float, scoliosis: bool, emphysema: bool
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Normal anatomy. Returns (image, soft lung weight, tissue level, lung level)."""
    S = size
    yy, xx = _grid(S)
    k = S / 224.0
    bg = rng.uniform(0.02, 0.08)
    tissue = rng.uniform(0.42, 0.58)
    lung_level = rng.uniform(0.12, 0.22) - (0.04 if emphysema else 0.0)
    a = an.wf * 0.5 * rng.uniform(1.22, 1.4)
    b = S * 0.78
    cy_b = an.top + an.hf * 0.62
    body = (np.abs((xx - an.cx) / a) ** 4 + np.abs((yy - cy_b) / b) ** 4) <= 1.0
    body_w = ndi.gaussian_filter(body.astype(np.float32), 2.5 * k)
    img = bg + (tissue - bg) * body_w
    # abdomen below the diaphragm is denser than the chest wall
    img += 0.06 * body_w * np.clip((yy - an.bottom) / (0.1 * S), 0.0, 1.0)
    lung_w = ndi.gaussian_filter(an.lungs.astype(np.float32), 1.2 * k)
    # vascular markings: smooth texture, strongest near the hila, fading to the periphery
    hx_r, hx_l = an.cx - an.wf * 0.16, an.cx + an.wf * 0.16
    hy = an.top + an.hf * 0.45
    d_hilum = np.minimum(np.hypot(xx - hx_r, yy - hy), np.hypot(xx - hx_l, yy - hy)) / (0.5 * an.wf)
    markings = np.clip(1.0 - d_hilum, 0.0, 1.0) ** 1.5
    vessel_amp = rng.uniform(0.035, 0.07) * (0.5 if emphysema else 1.0)
    texture = _lowpass_noise(rng, S, 1.3 * k)
    lung_img = lung_level + vessel_amp * np.abs(texture) * (0.35 + markings) + 0.05 * markings
    img = img * (1.0 - lung_w) + lung_img * lung_w
    # hila
    for hx in (hx_r, hx_l):
        img += rng.uniform(0.05, 0.1) * _blob(S, hy, hx, an.hf * 0.07, an.wf * 0.05)
    # spine and mediastinum (scoliosis bends the spine)
    bend = (an.wf * rng.uniform(0.04, 0.08) * np.sin(np.pi * (yy - an.top) / an.hf)) if scoliosis else 0.0
    spine_x = an.cx + bend
    spine_w = an.wf * 0.055
    spine = np.exp(-0.5 * ((xx - spine_x) / spine_w) ** 4)
    vert = 0.5 + 0.5 * np.cos(2 * np.pi * (yy - an.top) / (0.06 * an.hf))
    img += body_w * spine * (rng.uniform(0.06, 0.1) + 0.03 * vert)
    med = np.exp(-0.5 * ((xx - an.cx) / (an.wf * 0.09)) ** 2) * np.clip((yy - an.top) / (0.05 * S), 0, 1)
    img += 0.08 * med * body_w
    # heart: a cardiothoracic ratio of `ctr`, shifted to the patient's left (image right)
    thorax_w = an.wf * 1.02
    h_rx = ctr * thorax_w / 2.0
    h_ry = an.hf * rng.uniform(0.19, 0.24)
    h_cy = an.bottom - h_ry * rng.uniform(0.7, 0.9)
    h_cx = an.cx + h_rx * rng.uniform(0.22, 0.35)
    heart = (((yy - h_cy) / h_ry) ** 2 + ((xx - h_cx) / h_rx) ** 2) <= 1.0
    # the heart is soft tissue seen through the lungs: it replaces lung darkness, it does not
    # add to the mediastinum (which is why a large heart shows as lost lung, not a bright disc)
    hw = ndi.gaussian_filter(heart.astype(np.float32), 1.5 * k) * rng.uniform(0.85, 0.95)
    img = img * (1.0 - hw) + np.maximum(img, tissue + rng.uniform(0.02, 0.08)) * hw
    # posterior ribs: one periodic expression for all of them, sloping down laterally
    spacing = an.hf * rng.uniform(0.085, 0.1)
    lat = (xx - an.cx) / (an.wf / 2)
    curve = an.hf * rng.uniform(0.18, 0.3) * np.abs(lat) ** 1.6 - an.hf * 0.05 * np.abs(lat)
    phase = (yy - an.top - curve) / spacing
    frac = phase - np.floor(phase)
    rib = np.exp(-0.5 * ((frac - 0.5) / 0.1) ** 2) * ((yy > an.top - 0.02 * S) & (yy < an.bottom - 0.05 * S))
    img += rng.uniform(0.03, 0.06) * rib * (0.35 + 0.65 * lung_w) * body_w
    # clavicles
    for sgn in (-1.0, 1.0):
        dx = (xx - an.cx) * sgn
        cl_y = an.top + S * rng.uniform(-0.005, 0.02) - 0.12 * dx
        band = np.exp(-0.5 * ((yy - cl_y) / (0.012 * S)) ** 2) * ((dx > 0.04 * S) & (dx < an.wf * 0.55))
        img += rng.uniform(0.07, 0.12) * band
    # breast shadows (nuisance)
    if rng.random() < 0.45:
        amp = rng.uniform(0.03, 0.08)
        for sgn in (-1.0, 1.0):
            img += (
                amp * _blob(S, an.bottom - an.hf * 0.12, an.cx + sgn * an.wf * 0.34, an.hf * 0.16, an.wf * 0.2) * body_w
            )
    # gastric bubble (nuisance) under the left hemidiaphragm
    if rng.random() < 0.5:
        img -= (
            rng.uniform(0.05, 0.12) * _blob(S, an.bottom + 0.05 * S, an.cx + an.wf * 0.2, 0.025 * S, 0.04 * S) * body_w
        )
    return img.astype(np.float32), lung_w, tissue, lung_level


def _draw_finding(
    rng: np.random.Generator,
    img: np.ndarray,
    f: Finding,
    an: _Anatomy,
    lung_w: np.ndarray,
    tissue: float,
    lung_level: float,
    vis: float,
) -> np.ndarray:
    S = img.shape[0]
    k = S / 224.0
    s = f.severity * vis * rng.uniform(0.6, 1.2)
    yy, xx = _grid(S)
    kind = f.kind
    if kind in ("opacity", "edema"):
        sides = _sides(rng, f.side, p_bilateral=0.7 if kind == "edema" else 0.25)
        for side in sides:
            zone = f.zone or (
                "middle" if kind == "edema" else str(rng.choice(["upper", "middle", "lower"], p=[0.2, 0.3, 0.5]))
            )
            ext = an.extent[side]
            pt = _pick_point(rng, an.side[side], _zone_rows(ext, zone))
            if pt is None:
                continue
            ry = (ext[1] - ext[0]) * rng.uniform(0.1, 0.2)
            rx = (ext[3] - ext[2]) * rng.uniform(0.25, 0.45)
            field = _blob(S, pt[0], pt[1], ry, rx)
            if kind == "edema" or f.pattern in ("interstitial", "streaky"):
                tex = np.abs(_lowpass_noise(rng, S, 0.9 * k))
                field = field * (0.3 + 0.9 * np.clip(tex, 0, 2))
                amp = 0.2 * SIGNAL
            else:
                patch = _lowpass_noise(rng, S, 4.0 * k)
                field = field * np.clip(0.75 + 0.35 * patch, 0.2, 1.4)
                amp = 0.3 * SIGNAL
            img += amp * s * field * ndi.gaussian_filter(an.side[side].astype(np.float32), 2.0 * k)
    elif kind in ("nodule", "mass", "granuloma"):
        count = int(rng.integers(2, 6)) if f.multiple else 1
        for _ in range(count):
            side = _sides(rng, f.side if f.side != "bilateral" else "", p_bilateral=0.0)[0]
            zone = f.zone or str(rng.choice(["upper", "middle", "lower"]))
            pt = _pick_point(rng, an.side[side], _zone_rows(an.extent[side], zone), margin=max(1, int(3 * k)))
            if pt is None:
                continue
            r, amp = {
                "nodule": (rng.uniform(0.018, 0.032), 0.22),
                "mass": (rng.uniform(0.04, 0.065), 0.22),
                "granuloma": (rng.uniform(0.009, 0.016), 0.3),
            }[kind]
            img += amp * SIGNAL * min(s, 1.2) * _disc(S, pt[0], pt[1], r * S)
    elif kind == "effusion":
        for side in _sides(rng, f.side, p_bilateral=0.35):
            m = an.side[side]
            top, bot, c0, c1 = an.extent[side]
            hf = (bot - top) * rng.uniform(0.1, 0.25) * min(s / 0.8, 1.3)
            medial = c1 if side == "right" else c0
            lateralness = np.clip(np.abs(xx - medial) / max(c1 - c0, 1.0), 0.0, 1.0)
            y_m = (bot - hf) - hf * 0.8 * lateralness  # meniscus: higher laterally
            fluid = m & (yy > y_m)
            w = ndi.gaussian_filter(fluid.astype(np.float32), 2.0 * k)
            img += (tissue - lung_level) * rng.uniform(0.6, 0.9) * min(SIGNAL * s / 0.8, 1.0) * w
    elif kind == "atelectasis":
        for side in _sides(rng, f.side, p_bilateral=0.3):
            m = an.side[side]
            top, bot, c0, c1 = an.extent[side]
            zone = f.zone or "lower"
            r0, r1 = _zone_rows(an.extent[side], zone)
            yc = rng.uniform(r0, r1)
            slope = rng.uniform(-0.15, 0.15)
            band = np.exp(-0.5 * ((yy - yc - slope * (xx - (c0 + c1) / 2)) / (rng.uniform(0.008, 0.018) * S)) ** 2)
            img += 0.22 * SIGNAL * s * band * ndi.gaussian_filter(m.astype(np.float32), 1.5 * k)
            # volume loss: the hemidiaphragm rises
            lift = (bot - top) * 0.1 * SIGNAL * min(s, 1.2)
            base = m & (yy > bot - lift)
            img += (tissue - lung_level) * 0.7 * ndi.gaussian_filter(base.astype(np.float32), 2.0 * k)
    elif kind == "pneumothorax":
        side = _sides(rng, f.side, p_bilateral=0.0)[0]
        top, bot, c0, c1 = an.extent[side]
        lateral = c0 if side == "right" else c1
        width = (c1 - c0) * rng.uniform(0.12, 0.25)
        d = np.abs(xx - lateral)
        region = an.side[side] & (d < width) & (yy < top + (bot - top) * 0.55)
        img -= 0.05 * ndi.gaussian_filter(region.astype(np.float32), 1.0 * k)
        edge = region ^ ndi.binary_erosion(region, iterations=1)
        img += 0.08 * edge
    elif kind == "emphysema":
        img -= 0.03 * lung_w
    elif kind == "device":
        t = np.linspace(0.0, 1.0, int(2 * S))
        x0 = an.cx - an.wf * rng.uniform(0.1, 0.35)
        path_y = an.top - 0.06 * S + t * (an.hf * rng.uniform(0.35, 0.55))
        path_x = x0 + (an.cx - x0) * t**1.5
        line = np.zeros_like(img)
        iy = np.clip(path_y.astype(int), 0, S - 1)
        ix = np.clip(path_x.astype(int), 0, S - 1)
        line[iy, ix] = 1.0
        img += 0.35 * ndi.gaussian_filter(line, 0.7 * k) * 2.5
    # scoliosis and cardiomegaly are drawn by the anatomy itself
    return img


def _finish(rng: np.random.Generator, img: np.ndarray, lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positioning, blur, exposure and noise; uint8 image and the matching lung mask."""
    from scipy.ndimage import affine_transform

    S = img.shape[0]
    k = S / 224.0
    theta = np.deg2rad(rng.uniform(-3.0, 3.0))
    c, s = np.cos(theta), np.sin(theta)
    mat = np.array([[c, -s], [s, c]], dtype=np.float64)
    centre = np.array([(S - 1) / 2.0] * 2)
    shift = rng.uniform(-0.02, 0.02, size=2) * S
    offset = centre - mat @ (centre + shift)
    bg = float(np.percentile(img[:, :3], 50))
    img = affine_transform(img, mat, offset=offset, order=1, mode="constant", cval=bg)
    mask = affine_transform(lungs.astype(np.float32), mat, offset=offset, order=1, mode="constant", cval=0.0) > 0.5
    img = ndi.gaussian_filter(img, rng.uniform(0.5, 1.0) * k)
    gamma = rng.uniform(0.85, 1.15)
    img = np.clip(img, 0.0, 1.0) ** gamma
    img = (img - 0.4) * rng.uniform(0.9, 1.1) + 0.4 + rng.uniform(-0.03, 0.03)
    noise_sd = rng.uniform(0.012, 0.035)
    img = img + noise_sd * rng.standard_normal(img.shape).astype(np.float32) + 0.012 * _lowpass_noise(rng, S, 6.0 * k)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mask


def _pseudo_findings(rng: np.random.Generator, img: np.ndarray, an: _Anatomy) -> None:
    """Label-independent look-alikes: vessels end-on, nipple shadows, a faint patch."""
    S = img.shape[0]
    for _ in range(int(rng.poisson(0.8))):
        side = "right" if rng.random() < 0.5 else "left"
        pt = _pick_point(rng, an.side[side], _zone_rows(an.extent[side], str(rng.choice(["middle", "lower"]))))
        if pt is not None:
            img += rng.uniform(0.04, 0.1) * _disc(S, pt[0], pt[1], rng.uniform(0.008, 0.018) * S)
    if rng.random() < 0.2:
        side = "right" if rng.random() < 0.5 else "left"
        pt = _pick_point(rng, an.side[side], _zone_rows(an.extent[side], "lower"))
        if pt is not None:
            img += rng.uniform(0.02, 0.05) * _blob(S, pt[0], pt[1], 0.04 * S, 0.05 * S) * an.side[side]


def render_cxr(
    rng: np.random.Generator, size: int, bank: ShapeBank, findings: tuple[Finding, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """One radiograph for a report's findings. Returns (uint8 [S, S], lung mask bool [S, S])."""
    kinds = {f.kind for f in findings}
    cardio = [f for f in findings if f.kind == "cardiomegaly"]
    an = _Anatomy(rng, size, bank, emphysema="emphysema" in kinds)
    vis = float(rng.uniform(0.45, 1.1))  # how well this film shows its findings
    ctr = float(np.clip(rng.normal(0.45, 0.035), 0.36, 0.55))
    if cardio:
        ctr += max(f.severity for f in cardio) * vis * rng.uniform(0.1, 0.2) * SIGNAL
    img, lung_w, tissue, lung_level = _base_image(
        rng, size, an, ctr=min(ctr, 0.72), scoliosis="scoliosis" in kinds, emphysema="emphysema" in kinds
    )
    _pseudo_findings(rng, img, an)
    for f in findings:
        if f.kind != "cardiomegaly":
            img = _draw_finding(rng, img, f, an, lung_w, tissue, lung_level, vis)
    return _finish(rng, img, an.lungs)


def render_cxr4(rng: np.random.Generator, size: int, bank: ShapeBank, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One radiograph of the 4-class COVID / Lung_Opacity / Viral_Pneumonia / Normal variant.

    COVID: bilateral, peripheral, lower-zone hazy (ground-glass) opacities; Lung_Opacity: one or
    two denser focal consolidations anywhere; Viral_Pneumonia: bilateral perihilar interstitial
    (streaky) pattern; Normal: anatomy and nuisance only.
    """
    an = _Anatomy(rng, size, bank, emphysema=False)
    vis = float(rng.uniform(0.3, 1.0)) * CXR4_SIGNAL
    ctr = float(np.clip(rng.normal(0.45, 0.035), 0.36, 0.55))
    img, lung_w, tissue, lung_level = _base_image(rng, size, an, ctr=ctr, scoliosis=False, emphysema=False)
    _pseudo_findings(rng, img, an)
    S = size
    k = S / 224.0
    yy, xx = _grid(S)
    if label == "COVID":
        for side in ("right", "left"):
            m = an.side[side]
            top, bot, c0, c1 = an.extent[side]
            lateral = c0 if side == "right" else c1
            periph = np.clip(1.0 - np.abs(xx - lateral) / max(0.6 * (c1 - c0), 1.0), 0.0, 1.0)
            basal = np.clip((yy - top) / max(bot - top, 1.0), 0.0, 1.0)
            haze = np.clip(0.6 + 0.5 * _lowpass_noise(rng, S, 6.0 * k), 0.0, 1.5)
            img += (
                0.13
                * vis
                * rng.uniform(0.7, 1.2)
                * periph
                * basal
                * haze
                * ndi.gaussian_filter(m.astype(np.float32), 2 * k)
            )
    elif label == "Lung_Opacity":
        for _ in range(int(rng.integers(1, 3))):
            img = _draw_finding(
                rng, img, Finding(kind="opacity", label="Opacity"), an, lung_w, tissue, lung_level, vis * 1.1
            )
    elif label == "Viral_Pneumonia":
        for side in ("right", "left"):
            m = an.side[side]
            top, bot, c0, c1 = an.extent[side]
            medial = c1 if side == "right" else c0
            central = np.clip(1.0 - np.abs(xx - medial) / max(0.8 * (c1 - c0), 1.0), 0.0, 1.0)
            mid = np.exp(-0.5 * ((yy - (top + bot) / 2) / (0.3 * (bot - top))) ** 2)
            tex = np.clip(np.abs(_lowpass_noise(rng, S, 0.8 * k)), 0.0, 2.5)
            img += (
                0.09
                * vis
                * rng.uniform(0.7, 1.2)
                * central
                * mid
                * tex
                * ndi.gaussian_filter(m.astype(np.float32), 1.5 * k)
            )
    return _finish(rng, img, an.lungs)
