"""Paper 3's (MFMIRS) k-means intensity threshold, kept for callers of the first mask version.

The mask itself no longer uses it: on a real radiograph the darkest cluster is the air outside
the body and the collimation, not the lungs (issue 21; see :mod:`lungsearch.data.masks`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans_threshold"]


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
