"""Retrieval-quality monitoring: similarity histograms, low-similarity counter, drift and code PSI.

Embeddings are synthetic vectors (seeded) or pixel vectors of phantom radiographs (synthetic data).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from lungsearch.serving.metrics import ServingMetrics
from lungsearch.serving.quality import GalleryReference, QualityMonitor, psi_bits, site_label

D = 64
BITS = 64


def _cluster(rng, n, mean, sigma=1.0):
    return mean + sigma * rng.standard_normal((n, mean.size))


def _codes(x, planes):
    return np.packbits((x @ planes) > 0, axis=1)  # [n, BITS // 8] uint8, sign LSH


def test_site_label_is_bounded():
    assert site_label("north", ("north", "south")) == "north"
    assert site_label("St. Elsewhere 12/3", ("north",)) == "other"
    assert site_label("", ("north",)) == site_label(None, ()) == "unspecified"


def test_psi_is_zero_for_the_same_population_and_large_for_a_shift():
    p = np.full(32, 0.5)
    assert psi_bits(p, p) == pytest.approx(0.0)
    assert psi_bits(p, np.full(32, 0.52)) < 0.01
    assert psi_bits(p, np.full(32, 0.9)) > 0.25
    assert np.isfinite(psi_bits(np.zeros(4), np.ones(4)))


def test_drift_and_psi_rise_for_a_shifted_query_distribution():
    rng = np.random.default_rng(0)
    mean = rng.standard_normal(D) * 0.6
    planes = rng.standard_normal((D, BITS))
    gallery = _cluster(rng, 2000, mean)
    ref = GalleryReference.from_arrays(gallery, _codes(gallery, planes), code_bits=BITS)
    assert ref.size == 2000 and ref.bit_frequency.shape == (BITS,)

    def run(queries):
        qm = QualityMonitor(sites=("north",), alpha=0.02, warmup=20)
        qm.set_reference("cxr", ref)
        out = [
            qm.observe("cxr", "north", q, scores=[0.9, 0.8], code=c.tobytes())
            for q, c in zip(queries, _codes(queries, planes))
        ]
        return [s.drift for s in out], [s.psi for s in out]

    same_drift, same_psi = run(_cluster(rng, 400, mean))
    # A new scanner: the same anatomy, moved along a direction the gallery never shows.
    shift = rng.standard_normal(D)
    shifted_drift, shifted_psi = run(
        _cluster(rng, 400, mean + 1.5 * shift / np.linalg.norm(shift) * np.linalg.norm(mean))
    )
    assert same_drift[:19] == [None] * 19 and same_drift[19] is not None  # warm-up
    assert max(same_drift[100:]) < 0.1
    assert min(shifted_drift[200:]) > 5 * max(same_drift[100:])
    assert np.mean(shifted_psi[200:]) > 3 * np.mean(same_psi[200:])
    # It rises: the running mean forgets the start.
    assert np.mean(shifted_drift[300:]) > np.mean(shifted_drift[20:40])


def test_drift_returns_to_baseline_when_queries_come_back():
    rng = np.random.default_rng(1)
    mean = rng.standard_normal(D)
    ref = GalleryReference.from_arrays(_cluster(rng, 500, mean))
    qm = QualityMonitor(alpha=0.05, warmup=1)
    qm.set_reference("p", ref)
    for q in _cluster(rng, 200, -mean):
        qm.observe("p", None, q, scores=[0.2])
    high = qm.drift("p")
    for q in _cluster(rng, 300, mean):
        qm.observe("p", None, q, scores=[0.9])
    assert high > 1.0 and qm.drift("p") < 0.1


def test_metrics_are_recorded_with_bounded_labels():
    rng = np.random.default_rng(2)
    m = ServingMetrics("ranking", ray_export=False)
    qm = QualityMonitor(m, sites=("north",), low_similarity=0.5, warmup=1)
    qm.set_reference("cxr", GalleryReference.from_arrays(rng.standard_normal((50, D))))
    qm.observe("cxr", "north", rng.standard_normal(D), scores=[0.95, 0.7, 0.6])
    qm.observe("cxr", "Hospital of Some Patient", rng.standard_normal(D), scores=[0.3, 0.2])
    s = qm.observe("cxr", "north", None, scores=[])
    assert s.low and s.top1 is None
    text = m.render()
    assert {m_.group(1) for m_ in re.finditer(r'site="([^"]*)"', text)} == {"north", "other"}
    assert 'lungsearch_quality_low_similarity_queries_total{profile="cxr",site="other"} 1.0' in text
    assert 'lungsearch_quality_low_similarity_queries_total{profile="cxr",site="north"} 1.0' in text
    assert 'lungsearch_quality_best_similarity_cosine_count{profile="cxr",site="north"} 1.0' in text
    assert "lungsearch_quality_embedding_drift_cosine{" in text


def _pixel_embeddings(recs, *, scanner=None) -> np.ndarray:
    from PIL import Image

    out = []
    for r in recs:
        img = np.asarray(Image.open(r.image_paths[0]).convert("L").resize((16, 16)), dtype=np.float64) / 255.0
        if scanner is not None:
            img = scanner(img)
        out.append((img - img.mean()).reshape(-1))  # centred pixels: the embedding of a pixel "model"
    return np.stack(out)


def test_drift_rises_for_phantoms_from_a_shifted_scanner(tmp_path):
    """Phantom radiographs (synthetic): a gallery, held-out queries from the same generator, and the
    same held-out cases as a different scanner would show them (another gamma and an anode-heel
    brightness ramp across the detector)."""
    from lungsearch.data import phantoms

    gallery = phantoms.read_manifest(phantoms.generate("cxr4", 60, tmp_path / "g", seed=0, size=64, workers=1))
    queries = phantoms.read_manifest(phantoms.generate("cxr4", 40, tmp_path / "q", seed=1, size=64, workers=1))
    ref = GalleryReference.from_arrays(_pixel_embeddings(gallery))

    def final_drift(emb):
        qm = QualityMonitor(alpha=0.1, warmup=10)
        qm.set_reference("cxr4", ref)
        for e in emb:
            qm.observe("cxr4", None, e, scores=[0.9])
        return qm.drift("cxr4")

    same = final_drift(_pixel_embeddings(queries))
    ramp = np.linspace(0.0, 0.25, 16)[None, :]
    shifted = final_drift(_pixel_embeddings(queries, scanner=lambda x: x**0.6 + ramp))
    assert shifted > 3 * same, (same, shifted)
