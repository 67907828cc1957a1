"""Helpers for the serving library tests (imported by conftest.py and the tests; a unique module
name, since every test folder has a conftest.py): tiny, untrained models (small inputs, a hashed text
encoder instead of MiniLM) and synthetic decoded studies. Nothing here trains or downloads."""

from __future__ import annotations

import numpy as np

TINY = ["data.image_size=64", "train.seed=0"]


def tiny_cfg(profile: str, extra: tuple[str, ...] = ()):
    from lungsearch.config import load_profile

    over = list(TINY) + list(extra)
    if profile in ("cxr-clip", "cxr-report"):
        over.append("model.text_encoder={name: hashed, params: {}}")
    return load_profile(profile, over)


def build_tiny_models():
    """{profile: (model, cfg)} for cxr-hash, ct-ild and cxr-clip, built once, eval mode."""
    import torch

    from lungsearch.models import create_model

    torch.set_num_threads(1)
    out = {}
    for p in ("cxr-hash", "ct-ild", "cxr-clip"):
        torch.manual_seed(0)
        cfg = tiny_cfg(p)
        out[p] = (create_model(cfg).eval(), cfg)
    return out


def make_study(modality: str, slices: int = 1, size: int = 80, seed: int = 0):
    """A decoded study as the data layer returns it: CT in HU, CXR in [0, 1]."""
    from lungsearch.data.types import DecodedImage, ImageMeta, Study

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for s in range(slices):
        if modality == "ct":
            body = np.where((yy - size / 2) ** 2 / 0.9 + (xx - size / 2) ** 2 < (size * 0.45) ** 2, 40.0, -1000.0)
            lungs = ((yy - size / 2) ** 2 + (xx - size * 0.3) ** 2 < (size * 0.15) ** 2) | (
                (yy - size / 2) ** 2 + (xx - size * 0.7) ** 2 < (size * 0.15) ** 2
            )
            px = np.where(lungs, -850.0, body) + rng.normal(0, 30, (size, size))
            meta = ImageMeta(modality="ct", view="AXIAL", slice_position=float(s), hu=True)
        else:
            px = np.clip(0.3 + 0.4 * rng.random((size, size)), 0, 1)
            meta = ImageMeta(modality="cxr", view="PA", source_format="png")
        images.append(DecodedImage(pixels=px.astype(np.float32), meta=meta))
    return Study(images=images)
