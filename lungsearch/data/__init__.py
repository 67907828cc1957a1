"""The imaging data layer: ingest (DICOM, PNG, JPEG), de-identification, preprocessing, lung masks,
dataset adapters and the built-in phantom datasets.

Public API (imported lazily, so ``import lungsearch.data`` stays light and never imports torch)::

    read_image(data, *, fmt=None, limits=None, hmac_key=None) -> DecodedImage
    read_study(files, *, limits=None, hmac_key=None) -> Study
    preprocess(img, data_cfg, *, train=False, rng=None) -> np.ndarray   # [1, S, S]
    preprocess_study(study, data_cfg, *, train=False, rng=None) -> np.ndarray  # [N, 1, S, S]
    lung_mask(pixels, *, modality) -> np.ndarray[bool]
    load_records(data_cfg) -> list[CaseRecord]
    split_records(records, fractions=(0.6, 0.2, 0.2), seed=0) -> {"train", "val", "test"}
    kfold_records(records, k, seed=0) -> [(train, held_out), ...]
    load_study(record, *, hmac_key=None) -> Study
    deid.load_or_create_key / deid.case_key / deid.deidentify
    phantoms.generate(kind, n, out_dir, *, seed=0, size=224, slices=8) -> Path
"""

from __future__ import annotations

import importlib
from typing import Any

from lungsearch.data.types import CaseRecord, DecodedImage, ImageMeta, Study

__all__ = [
    "CaseRecord",
    "DecodedImage",
    "ImageMeta",
    "Study",
    "deid",
    "kfold_records",
    "load_records",
    "load_study",
    "lung_mask",
    "phantoms",
    "preprocess",
    "preprocess_study",
    "read_image",
    "read_image_frames",
    "read_study",
    "split_records",
]

_LAZY = {
    "read_image": "lungsearch.data.io",
    "read_image_frames": "lungsearch.data.io",
    "read_study": "lungsearch.data.io",
    "preprocess": "lungsearch.data.transforms",
    "preprocess_study": "lungsearch.data.transforms",
    "lung_mask": "lungsearch.data.masks",
    "load_records": "lungsearch.data.datasets",
    "load_study": "lungsearch.data.datasets",
    "split_records": "lungsearch.data.splits",
    "kfold_records": "lungsearch.data.splits",
}
_SUBMODULES = {"deid", "phantoms", "datasets", "io", "masks", "transforms", "splits", "types"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"lungsearch.data.{name}")
    raise AttributeError(f"module 'lungsearch.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)
