"""The shipped CXR lung atlas (``atlas.npz``, ~25 KB): 217 canonical two-lung masks.

Built by ``python -m lungsearch.data.masks._build_atlas`` from the even positions of the
frontal two-lung masks in torchxrayvision's ``semantic_masks_v7labs_lungs.zip`` (the odd positions
are held out for measuring). Each mask is the lung field cropped to its bounding box and resampled
to ``canon`` x ``canon``; ``aspect`` is the original box's height / width.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["Atlas", "load_atlas"]

_PATH = os.path.join(os.path.dirname(__file__), "atlas.npz")


@dataclass(frozen=True)
class Atlas:
    masks: np.ndarray  # float32 [N, C, C], 0/1
    aspect: np.ndarray  # float32 [N]
    mean: np.ndarray  # float32 [C, C]: lung probability in the box frame
    zmasks: np.ndarray  # float32 [N, C*C]: each mask z-scored (for correlation)

    @property
    def canon(self) -> int:
        return int(self.masks.shape[-1])


@functools.lru_cache(maxsize=1)
def load_atlas(path: str = _PATH) -> Atlas:
    with np.load(path, allow_pickle=False) as z:
        c = int(z["canon"])
        packed, aspect = z["packed"], z["aspect"].astype(np.float32)
    masks = np.unpackbits(packed, axis=1)[:, : c * c].reshape(-1, c, c).astype(np.float32)
    flat = masks.reshape(len(masks), -1)
    z = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-6)
    return Atlas(masks=masks, aspect=aspect, mean=masks.mean(0), zmasks=z.astype(np.float32))
