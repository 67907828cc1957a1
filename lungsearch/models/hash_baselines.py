"""Unsupervised hashing baselines for paper 5's comparison at the same code lengths: LSH (random
hyperplanes, :class:`lungsearch.models.hashing.LSH`) and ITQ (PCA + iterative quantisation, Gong &
Lazebnik 2013; FAISS's ``ITQTransform``), with their query time. A fair deep-hashing comparison
counts search time: every method's codes are searched the same way (FAISS ``IndexBinaryFlat``,
exact Hamming), so the times differ only by the encoding of the query.

    >>> base = fit_hash_baseline("itq", train_features, bits=64)
    >>> g, q = base.encode(gallery_features), base.encode(query_features)   # packed uint8 codes
    >>> timing = query_time(base, query_features, g, k=10)                   # ms per query
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lungsearch.errors import ConfigError, InvalidRequestError
from lungsearch.models.hashing import LSH, pack_codes

__all__ = ["HASH_BASELINES", "HashBaseline", "fit_hash_baseline", "hamming_search", "query_time"]

HASH_BASELINES = ("lsh", "itq")


@dataclass
class HashBaseline:
    """A fitted baseline: ``encode(features [N, D]) -> packed codes uint8 [N, bits/8]``."""

    kind: str
    bits: int
    fit_seconds: float
    _encode: Callable[[np.ndarray], np.ndarray]

    def encode(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
        if x.ndim != 2:
            raise InvalidRequestError(f"features must be [N, D], got shape {x.shape}")
        return pack_codes(self._encode(x))


def fit_hash_baseline(kind: str, train_features: np.ndarray, bits: int, *, seed: int = 0) -> HashBaseline:
    """Fit ``kind`` (``lsh`` or ``itq``) on training features ``[N, D]`` for ``bits``-bit codes.

    LSH ignores the data except for its mean (features are centred first: hyperplanes through the
    origin split uncentred non-negative features, such as pooled ReLU maps, into nearly one bucket).
    ITQ needs ``bits <= D`` (PCA to ``bits`` dimensions, then the rotation).

    Raises:
        ConfigError: unknown kind, bits not a positive multiple of 8, or ITQ with bits > D.
    """
    x = np.ascontiguousarray(np.asarray(train_features, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] < 2:
        raise InvalidRequestError(f"train features must be [N >= 2, D], got shape {x.shape}")
    if bits <= 0 or bits % 8:
        raise ConfigError(f"hash baseline bits must be a positive multiple of 8, got {bits}")
    t0 = time.perf_counter()
    if kind == "lsh":
        mean = x.mean(0, keepdims=True)
        lsh = LSH(x.shape[1], bits, seed=seed)

        def enc(f: np.ndarray) -> np.ndarray:
            return lsh.codes(torch.from_numpy(f - mean)).numpy()
    elif kind == "itq":
        import faiss

        if bits > x.shape[1]:
            raise ConfigError(f"itq: bits ({bits}) must not exceed the feature dimension ({x.shape[1]})")
        itq = faiss.ITQTransform(x.shape[1], bits, True)
        itq.itq.seed = int(seed)  # ITQ starts from a random rotation: seeded, so fits repeat exactly
        itq.train(x)

        def enc(f: np.ndarray) -> np.ndarray:
            return itq.apply(f)
    else:
        raise ConfigError(f"hash baseline must be one of {', '.join(HASH_BASELINES)}, got {kind!r}")
    return HashBaseline(kind, bits, time.perf_counter() - t0, enc)


def hamming_search(query_packed: np.ndarray, gallery_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-``k`` with FAISS ``IndexBinaryFlat``: (distances, indices) ``[Q, k]``."""
    import faiss

    g = np.ascontiguousarray(gallery_packed, dtype=np.uint8)
    q = np.ascontiguousarray(query_packed, dtype=np.uint8)
    index = faiss.IndexBinaryFlat(g.shape[1] * 8)
    index.add(g)
    return index.search(q, min(k, g.shape[0]))


def query_time(
    encoder: HashBaseline | Callable[[np.ndarray], np.ndarray],
    query_input: np.ndarray,
    gallery_packed: np.ndarray,
    *,
    k: int = 10,
    repeats: int = 5,
) -> dict[str, float]:
    """Median milliseconds per query of encoding (``encoder``: a baseline, or any callable that
    turns query inputs into packed codes, e.g. the deep hash network) and of the Hamming search
    over ``gallery_packed``; ``total_ms`` is their sum."""
    import faiss

    encode = encoder.encode if isinstance(encoder, HashBaseline) else encoder
    n = len(query_input)
    g = np.ascontiguousarray(gallery_packed, dtype=np.uint8)
    index = faiss.IndexBinaryFlat(g.shape[1] * 8)
    index.add(g)
    enc_t, search_t = [], []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        codes = np.ascontiguousarray(encode(query_input), dtype=np.uint8)
        t1 = time.perf_counter()
        index.search(codes, min(k, g.shape[0]))
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        search_t.append(t2 - t1)
    enc_ms = float(np.median(enc_t)) * 1e3 / n
    search_ms = float(np.median(search_t)) * 1e3 / n
    return {"encode_ms": enc_ms, "search_ms": search_ms, "total_ms": enc_ms + search_ms, "gallery": int(g.shape[0])}
