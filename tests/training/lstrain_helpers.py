"""Helpers for the training and evaluation tests: tiny configs and synthetic case tables built
directly as arrays (no decoding), so loop/trainer tests do not depend on phantom generation."""

from __future__ import annotations

import numpy as np

from lungsearch.config import load_profile
from lungsearch.training.cases import CaseTable

TINY = {
    "cxr-cnn": ["data.image_size=32", "train.epochs=2", "train.batch_size=8", "train.early_stopping_patience=0"],
    "cxr-report": [
        "data.image_size=32",
        "train.epochs=2",
        "train.batch_size=8",
        "train.early_stopping_patience=0",
        "model.text_encoder={name: hashed, params: {}}",
    ],
    "ct-ild": ["data.image_size=32", "train.epochs=2", "train.batch_size=8"],
    "cxr-hash": ["data.image_size=32", "train.epochs=2", "train.batch_size=8"],
    "cxr-clip": [
        "data.image_size=32",
        "train.epochs=2",
        "train.batch_size=8",
        "model.text_encoder={name: hashed, params: {}}",
    ],
}


def tiny_cfg(profile: str, *extra: str):
    return load_profile(profile, overrides=[*TINY[profile], *extra])


def synthetic_table(cfg, n: int = 24, seed: int = 0, slices: int = 1) -> CaseTable:
    """Cases whose images, reports and radiomics carry the class (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    targets = list(cfg.data.targets)
    c = len(targets)
    size = cfg.data.image_size
    y = np.arange(n) % c
    rng.shuffle(y)
    s = slices if cfg.modality == "ct" else 1
    images = rng.normal(0, 0.3, (n, s, 1, size, size)).astype(np.float32)
    for i in range(n):
        k = y[i]
        r0 = (k * size) // c
        images[i, :, 0, r0 : r0 + max(2, size // c), :] += 1.5  # a class-specific bright band
    hot = np.eye(c, dtype=np.float32)[y]
    labels = hot if cfg.data.multilabel else y.astype(np.int64)
    rad = None
    if cfg.model.radiomics is not None:
        rad = rng.normal(0, 1, (n, 42)) + y[:, None] * 0.5
    return CaseTable(
        case_ids=[f"c{i:03d}" for i in range(n)],
        groups=[f"g{i:03d}" for i in range(n)],
        images=images,
        n_slices=np.full(n, s, dtype=np.int32),
        labels=labels,
        multi_hot=hot,
        reports=[f"finding {targets[k].lower()} seen" for k in y],
        radiomics=rad,
        modality=cfg.modality,
        views=["AXIAL" if cfg.modality == "ct" else "PA"] * n,
        synthetic=True,
        targets=targets,
        label_sets=[(targets[k],) for k in y],
    )
