"""Retrieval-quality monitoring: are the answers still good, and do the queries still look like the gallery?

Prometheus sees requests and latency; it does not see a new scanner, site or protocol shifting the
query embeddings away from what was indexed. :class:`QualityMonitor` turns each search into five
signals per profile and site (metrics in :mod:`lungsearch.serving.metrics`):

* the best (top-1) and the k-th result's cosine similarity (histograms);
* low-similarity searches (best result under a threshold; a counter, so a rate in PromQL);
* **embedding drift**: cosine distance between an exponentially weighted running mean of the unit
  query embeddings and the gallery centroid (the mean of the indexed unit embeddings). Queries from
  the gallery's own distribution keep it near the distance of a sample mean (small); a shifted
  distribution moves it up;
* **code-bit population stability** (PSI): per bit of the hash code, the EWMA frequency of 1s among
  queries against the gallery's frequency, ``(q - p) ln(q / p)`` summed over both outcomes, averaged
  over bits. Rules of thumb for PSI: < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted.

Labels stay bounded: the profile comes from the served model set; the site is kept only when it is
in the configured allow-list, else ``"other"`` (``"unspecified"`` when none was given). Nothing here
sees a case key or a patient identifier.

Pure NumPy, no Ray: the Ranking deployment (which holds the gallery) calls :meth:`QualityMonitor.observe`
after each search and :meth:`QualityMonitor.set_reference` whenever its index is rebuilt.

Example::

    qm = QualityMonitor(metrics, sites=("north", "south"), low_similarity=0.5)
    qm.set_reference("cxr", GalleryReference.from_arrays(gallery_embeddings, gallery_codes, code_bits=64))
    sample = qm.observe("cxr", "north", query_embedding, scores=[0.93, 0.90, 0.81], code=query_code)
    sample.drift   # cosine distance of the running mean to the gallery centroid
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from lungsearch.serving.metrics import ServingMetrics

__all__ = [
    "GalleryReference",
    "QualitySample",
    "QualityMonitor",
    "site_label",
    "psi_bits",
    "OTHER_SITE",
    "UNSPECIFIED_SITE",
]

OTHER_SITE = "other"
UNSPECIFIED_SITE = "unspecified"
_EPS = 1e-4  # PSI floor for a bit frequency (a bit that is always 0 in the gallery must not give inf)


def site_label(site: str | None, allowed: Sequence[str]) -> str:
    """The metric label of ``site``: itself when allow-listed, ``"other"`` otherwise (bounded cardinality)."""
    if not site:
        return UNSPECIFIED_SITE
    return site if site in allowed else OTHER_SITE


def psi_bits(p: np.ndarray, q: np.ndarray) -> float:
    """Mean population stability index over binary features with frequencies ``p`` (reference) and ``q``."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    q = np.clip(np.asarray(q, dtype=np.float64), _EPS, 1 - _EPS)
    per_bit = (q - p) * np.log(q / p) + ((1 - q) - (1 - p)) * np.log((1 - q) / (1 - p))
    return float(per_bit.mean()) if per_bit.size else 0.0


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n = float(np.linalg.norm(x))
    return x / n if n > 0 else x


def _bits(packed: bytes | np.ndarray, code_bits: int) -> np.ndarray:
    """Unpacked bits (big-endian within bytes, numpy's packbits order) of one or many codes."""
    arr = np.frombuffer(packed, dtype=np.uint8) if isinstance(packed, (bytes, bytearray)) else np.asarray(packed)
    if arr.dtype != np.uint8:
        arr = arr.view(np.uint8)
    return np.unpackbits(arr, axis=-1)[..., :code_bits].astype(np.float64)


@dataclass(frozen=True)
class GalleryReference:
    """What queries are compared with: the gallery centroid and the gallery's code-bit frequencies.

    Attributes:
        centroid: unit vector, the direction of the mean of the gallery's unit embeddings.
        spread: mean cosine of the gallery embeddings to the centroid (how concentrated it is).
        bit_frequency: per code bit, the fraction of gallery codes with that bit set (None: no codes).
        size: gallery rows used.
    """

    centroid: np.ndarray
    spread: float
    bit_frequency: np.ndarray | None
    size: int

    @classmethod
    def from_arrays(
        cls, embeddings: np.ndarray, codes: np.ndarray | None = None, *, code_bits: int = 0
    ) -> "GalleryReference":
        """From gallery embeddings ``[N, D]`` and optional packed codes ``[N, code_bits // 8]``
        (uint8 or uint64 words)."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError("gallery embeddings must be a non-empty [N, D] array")
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        centroid = _unit(unit.mean(axis=0))
        freq = None
        if codes is not None and code_bits:
            freq = _bits(np.ascontiguousarray(codes), code_bits).reshape(emb.shape[0], code_bits).mean(axis=0)
        return cls(
            centroid=centroid, spread=float((unit @ centroid).mean()), bit_frequency=freq, size=int(emb.shape[0])
        )

    @classmethod
    def from_index(cls, index) -> "GalleryReference | None":
        """From a :class:`lungsearch.store.CaseIndex` snapshot (live rows only); None when empty.

        Reads the index's published snapshot (rows ``[:n]`` are immutable once published); a public
        accessor on CaseIndex would be better (asked of the store owner)."""
        st = index._state  # noqa: SLF001 - see docstring
        n = int(st.n)
        if n == 0:
            return None
        alive = np.asarray(st.alive[:n], dtype=bool)
        if not alive.any():
            return None
        emb = np.asarray(st.emb[:n][alive], dtype=np.float32)
        codes = None
        if index.code_bits:
            codes = np.ascontiguousarray(st.codes[:n][alive]).view(np.uint8)[:, : index.code_bytes]
        return cls.from_arrays(emb, codes, code_bits=index.code_bits)


@dataclass(frozen=True)
class QualitySample:
    """The signals of one search (also what was recorded)."""

    site: str
    top1: float | None
    topk: float | None
    low: bool
    drift: float | None
    psi: float | None


class _Running:
    """EWMA state of one (profile, site)."""

    __slots__ = ("mean", "bits", "n")

    def __init__(self) -> None:
        self.mean: np.ndarray | None = None
        self.bits: np.ndarray | None = None
        self.n = 0


class QualityMonitor:
    """Per-profile, per-site retrieval-quality signals (see the module docstring).

    Args:
        metrics: where to record (None: compute only, e.g. in tests).
        sites: site labels allowed as metric labels; anything else is ``"other"``.
        low_similarity: a search whose best cosine is below this counts as low-similarity.
        alpha: EWMA weight of the newest query (0.02 ~ the last 50 queries dominate).
        warmup: queries of a (profile, site) before drift and PSI are published (the running mean
            of a handful of queries is noise).
    """

    def __init__(
        self,
        metrics: "ServingMetrics | None" = None,
        *,
        sites: Sequence[str] = (),
        low_similarity: float = 0.5,
        alpha: float = 0.02,
        warmup: int = 20,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.metrics = metrics
        self.sites = tuple(sites)
        self.low_similarity = float(low_similarity)
        self.alpha = float(alpha)
        self.warmup = int(warmup)
        self._refs: dict[str, GalleryReference] = {}
        self._running: dict[tuple[str, str], _Running] = {}
        self._lock = threading.Lock()

    def set_reference(self, profile: str, reference: GalleryReference | None) -> None:
        """Compare ``profile``'s queries with ``reference`` from now on (None forgets it)."""
        with self._lock:
            if reference is None:
                self._refs.pop(profile, None)
            else:
                self._refs[profile] = reference

    def reference(self, profile: str) -> GalleryReference | None:
        return self._refs.get(profile)

    def observe(
        self,
        profile: str,
        site: str | None,
        embedding: np.ndarray | None,
        scores: Sequence[float],
        code: bytes | None = None,
    ) -> QualitySample:
        """Record one search: its query embedding (or None), the result scores best first, the query code."""
        label = site_label(site, self.sites)
        top1 = float(scores[0]) if len(scores) else None
        topk = float(scores[-1]) if len(scores) else None
        low = top1 is None or top1 < self.low_similarity
        ref = self._refs.get(profile)
        drift = psi = None
        with self._lock:
            run = self._running.setdefault((profile, label), _Running())
            run.n += 1
            if embedding is not None and np.size(embedding):
                u = _unit(embedding)
                run.mean = (
                    u if run.mean is None or run.mean.shape != u.shape else (1 - self.alpha) * run.mean + self.alpha * u
                )
            if code and ref is not None and ref.bit_frequency is not None:
                b = _bits(code, ref.bit_frequency.size)
                run.bits = (
                    b if run.bits is None or run.bits.shape != b.shape else (1 - self.alpha) * run.bits + self.alpha * b
                )
            ready = run.n >= self.warmup
            if ready and ref is not None and run.mean is not None and run.mean.shape == ref.centroid.shape:
                drift = float(1.0 - _unit(run.mean) @ ref.centroid)
            if ready and ref is not None and run.bits is not None and ref.bit_frequency is not None:
                psi = psi_bits(ref.bit_frequency, run.bits)
        sample = QualitySample(label, top1, topk, low, drift, psi)
        if self.metrics is not None:
            self.metrics.observe_quality(profile, label, top1=top1, topk=topk, low=low, drift=drift, psi=psi)
        return sample

    def drift(self, profile: str, site: str | None = None) -> float | None:
        """The current drift of ``profile`` at ``site`` (None before a reference and a query)."""
        ref, run = self._refs.get(profile), self._running.get((profile, site_label(site, self.sites)))
        if ref is None or run is None or run.mean is None:
            return None
        return float(1.0 - _unit(run.mean) @ ref.centroid)
