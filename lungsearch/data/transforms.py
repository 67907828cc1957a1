"""Preprocessing, defined once and used by training, evaluation and serving alike.

``preprocess(img, data_cfg)`` turns a :class:`DecodedImage` into the model input, float32
``[1, S, S]`` with ``S = data_cfg.image_size``:

1. **Window to [0, 1]**: CT (Hounsfield units) through ``data_cfg.window`` (:data:`WINDOWS`:
   lung -500/1500 as in paper 3, mediastinum 40/400; "none" maps -1024..3071 HU linearly);
   other images are already in [0, 1].
2. **Denoise** (``data_cfg.denoise``): 3×3 Gaussian (sigma 0.8), as in paper 2.
3. **Equalise** (``data_cfg.equalize``): histogram equalisation over 256 bins.
4. **Resize and pad**: the longer side to S (antialiased bilinear), the shorter side padded
   symmetrically with the image's minimum, so the whole field of view is kept.
5. **Augment** (``train=True`` and ``data_cfg.augment``): one random similarity transform
   (rotation ±10°, scale 0.9-1.1 with centre crop/pad, shift ±4 %); horizontal flip only for CT
   (p = 0.5): on a radiograph the side is diagnostic and stated in the report ("left base
   opacity"), so flipping CXR would teach the model false image-report pairs.
6. **Normalise**: ``(x - NORM_MEAN) / NORM_STD`` (0.5, 0.5): inputs lie in [-1, 1].

The output is always finite and exactly ``[1, S, S]``, whatever the decoded size (1×1 included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lungsearch.data.types import DecodedImage, Study

if TYPE_CHECKING:
    from lungsearch.config import DataConfig

__all__ = ["NORM_MEAN", "NORM_STD", "WINDOWS", "apply_window", "preprocess", "preprocess_study", "to_unit"]

#: HU windows as (level, width).
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-500.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "none": (1023.5, 4095.0),
}
NORM_MEAN = 0.5
NORM_STD = 0.5


def apply_window(hu: np.ndarray, window: str | tuple[float, float]) -> np.ndarray:
    """HU -> [0, 1] float32 through a (level, width) window or a :data:`WINDOWS` name."""
    level, width = WINDOWS[window] if isinstance(window, str) else window
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(width), 0.0, 1.0)


def to_unit(img: DecodedImage, window: str = "none") -> np.ndarray:
    """The image in [0, 1]: CT through ``window``, anything else as decoded."""
    px = np.asarray(img.pixels, dtype=np.float32)
    if img.meta.hu:
        return apply_window(px, window)
    return np.clip(np.nan_to_num(px, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _gauss3(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=0.8, radius=1, mode="nearest")


def _equalize(x: np.ndarray) -> np.ndarray:
    hist, edges = np.histogram(x, bins=256, range=(0.0, 1.0))
    cdf = np.cumsum(hist).astype(np.float64)
    if cdf[-1] <= 0:
        return x
    cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
    return np.interp(x.ravel(), edges[1:], cdf).reshape(x.shape).astype(np.float32)


def _resize_pad(x: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = x.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        x = np.asarray(
            Image.fromarray(np.ascontiguousarray(x, dtype=np.float32), mode="F").resize((nw, nh), Image.BILINEAR),
            dtype=np.float32,
        )
    if (nh, nw) == (size, size):
        return x
    fill = float(x.min()) if x.size else 0.0
    out = np.full((size, size), fill, dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = x
    return out


def _draw_augment(rng: np.random.Generator, modality: str) -> dict:
    return {
        "angle": float(rng.uniform(-10.0, 10.0)),
        "scale": float(rng.uniform(0.9, 1.1)),
        "shift": (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
        "flip": bool(modality == "ct" and rng.random() < 0.5),
    }


def _augment(x: np.ndarray, params: dict) -> np.ndarray:
    from scipy.ndimage import affine_transform

    size = x.shape[0]
    theta = np.deg2rad(params["angle"])
    c, s = np.cos(theta), np.sin(theta)
    # output -> input mapping: rotate and scale about the centre, then shift (centre crop/pad).
    mat = np.array([[c, -s], [s, c]]) / params["scale"]
    centre = np.array([(size - 1) / 2.0] * 2)
    shift = np.array(params["shift"]) * size
    offset = centre - mat @ (centre + shift)
    out = affine_transform(x, mat, offset=offset, order=1, mode="constant", cval=float(x.min()))
    if params["flip"]:
        out = out[:, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def _pipeline(img: DecodedImage, data_cfg: "DataConfig", aug: dict | None) -> np.ndarray:
    x = to_unit(img, data_cfg.window)
    if x.ndim != 2 or x.size == 0:
        x = np.zeros((1, 1), dtype=np.float32)
    if data_cfg.denoise:
        x = _gauss3(x)
    if data_cfg.equalize:
        x = _equalize(x)
    x = _resize_pad(x, data_cfg.image_size)
    if aug is not None:
        x = _augment(x, aug)
    x = (np.clip(x, 0.0, 1.0) - np.float32(NORM_MEAN)) / np.float32(NORM_STD)
    return np.ascontiguousarray(x[None], dtype=np.float32)


def preprocess(
    img: DecodedImage, data_cfg: "DataConfig", *, train: bool = False, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Model input for one image: float32 ``[1, S, S]`` (see the module docstring).

    Args:
        img: A decoded image (:func:`lungsearch.data.read_image`).
        data_cfg: The profile's data section (window, denoise, equalize, image_size, augment).
        train: Apply train-time augmentation (only when ``data_cfg.augment``).
        rng: Randomness for augmentation (a fresh default generator when None).
    """
    aug = None
    if train and data_cfg.augment:
        aug = _draw_augment(rng if rng is not None else np.random.default_rng(), img.meta.modality)
    return _pipeline(img, data_cfg, aug)


def preprocess_study(
    study: Study, data_cfg: "DataConfig", *, train: bool = False, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Model input for a study: ``[S_slices, 1, S, S]``; one augmentation draw for all slices,
    so a CT volume stays spatially consistent."""
    aug = None
    if train and data_cfg.augment and study.images:
        aug = _draw_augment(rng if rng is not None else np.random.default_rng(), study.modality)
    return np.stack([_pipeline(im, data_cfg, aug) for im in study.images]).astype(np.float32, copy=False)
