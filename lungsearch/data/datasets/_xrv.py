"""Shared glue for the adapters built on torchxrayvision's dataset classes (imported lazily:
torchxrayvision imports torch)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["first_existing", "positive_labels", "xrv_datasets"]


def xrv_datasets():
    import torchxrayvision as xrv

    return xrv.datasets


def positive_labels(pathologies: list[str], row: np.ndarray) -> list[str]:
    """Pathologies whose label is 1 (NaN = uncertain or unlabelled counts as negative: U-zeros)."""
    return [p for p, v in zip(pathologies, row) if not (isinstance(v, float) and math.isnan(v)) and v == 1]


def first_existing(root: Path, names: list[str]) -> Path | None:
    for n in names:
        p = root / n
        if p.exists():
            return p
    return None
