"""LSH and ITQ baselines for paper 5 at the same code lengths, with their query time."""

import numpy as np
import pytest

from lungsearch.errors import ConfigError
from lungsearch.evaluation.ties import rank_by_hamming
from lungsearch.metrics import map_at_k
from lungsearch.models.hash_baselines import fit_hash_baseline, hamming_search, query_time
from lungsearch.models.hashing import hamming_distance


def _clusters(n=600, d=64, c=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d)) * 2
    labels = rng.integers(0, c, n)
    x = centres[labels] + rng.standard_normal((n, d)) + 5.0  # offset: features need centring
    return x.astype(np.float32), labels


@pytest.mark.parametrize("bits", [16, 32, 64])
@pytest.mark.parametrize("kind", ["lsh", "itq"])
def test_baselines_give_balanced_codes_that_keep_neighbours(kind, bits):
    x, y = _clusters()
    base = fit_hash_baseline(kind, x[:300], bits, seed=0)
    g, q = base.encode(x[300:]), base.encode(x[:50])
    assert g.shape == (300, bits // 8) and g.dtype == np.uint8
    b = np.unpackbits(g, axis=1, bitorder="little")
    assert np.abs(b.mean(0) - 0.5).mean() < 0.2  # centred: bits split the data
    rel = (y[:50, None] == y[None, 300:]).astype(int)
    ranked = np.take_along_axis(rel, rank_by_hamming(q, g, seed=0), 1)
    assert map_at_k(ranked, 10) > 1 / 6 + 0.3  # far above the 1/6 label prior
    assert np.array_equal(fit_hash_baseline(kind, x[:300], bits, seed=0).encode(x[:50]), q)  # seeded


def test_itq_quantises_better_than_lsh_at_equal_bits():
    """ITQ's point: its rotation makes the codes keep more of the neighbourhood than random planes."""
    x, y = _clusters(d=32, c=8, seed=1)
    rel = (y[:100, None] == y[None, 300:]).astype(int)
    scores = {}
    for kind in ("lsh", "itq"):
        base = fit_hash_baseline(kind, x[:300], 16, seed=0)
        ranked = np.take_along_axis(rel, rank_by_hamming(base.encode(x[:100]), base.encode(x[300:]), seed=0), 1)
        scores[kind] = map_at_k(ranked, 10)
    assert scores["itq"] > scores["lsh"]


def test_query_time_and_faiss_search_match_numpy():
    x, _ = _clusters()
    base = fit_hash_baseline("itq", x[:300], 32)
    g, q = base.encode(x[300:]), base.encode(x[:20])
    dist, idx = hamming_search(q, g, 5)
    ref = hamming_distance(q, g)
    assert np.array_equal(dist, np.sort(ref, axis=1)[:, :5])
    assert np.array_equal(np.take_along_axis(ref, idx.astype(np.int64), 1), dist)
    t = query_time(base, x[:20], g, k=10, repeats=2)
    assert (
        t["total_ms"] == pytest.approx(t["encode_ms"] + t["search_ms"]) and t["search_ms"] > 0 and t["gallery"] == 300
    )


def test_baseline_config_errors():
    x, _ = _clusters(d=16)
    with pytest.raises(ConfigError):
        fit_hash_baseline("itq", x, 32)  # more bits than dimensions
    with pytest.raises(ConfigError):
        fit_hash_baseline("pq", x, 16)
    with pytest.raises(ConfigError):
        fit_hash_baseline("lsh", x, 12)
