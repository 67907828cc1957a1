"""CaseIndex against brute-force NumPy (exact), for both kernel backends."""

import threading

import numpy as np
import pytest

from lungsearch.errors import InvalidRequestError
from lungsearch.store import CaseIndex, SearchFilter, StoredCase, _kernels
from lungsearch.store.index import OVERFETCH_MAX

BACKENDS = ["numpy"] + (["faiss"] if _kernels.have_faiss() else [])
VOCAB = [f"L{i}" for i in range(8)]


def dataset(n, dim=32, bits=64, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    keys = [f"k{i:06d}" for i in range(n)]
    mods = [("cxr", "ct")[i % 2] for i in range(n)]
    views = [("PA", "AP", "AXIAL")[i % 3] for i in range(n)]
    labels = [[VOCAB[j] for j in range(len(VOCAB)) if rng.random() < 0.25] for _ in range(n)]
    return keys, emb, codes, mods, views, labels


def build(backend, n=3000, dim=32, bits=64, seed=0):
    keys, emb, codes, mods, views, labels = dataset(n, dim, bits, seed)
    idx = CaseIndex(dim, bits, backend=backend)
    idx.add_arrays(keys, emb, codes if bits else None, modalities=mods, views=views, labels=labels)
    return idx, (keys, emb, codes, mods, views, labels)


def hamming_np(codes, q):
    return np.unpackbits(codes ^ q, axis=1).sum(axis=1)


def unit16(emb):
    """What the index stores: L2-normalised float16 rows, compared in float32."""
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [64, 96, 128])
def test_hamming_topk_matches_bruteforce(backend, bits):
    idx, (keys, emb, codes, *_rest) = build(backend, n=4000, bits=bits)
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.integers(0, 256, bits // 8, dtype=np.uint8)
        hits = idx.search(None, q.tobytes(), top_k=25)
        d = hamming_np(codes, q)
        # Same multiset of distances as brute force (row choice among ties is free) ...
        assert [h.hamming for h in hits] == sorted(d)[:25]
        # ... and every reported distance is the true distance of that key.
        for h in hits:
            assert d[keys.index(h.key)] == h.hamming
            assert h.score == pytest.approx(1 - h.hamming / bits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_topk_matches_bruteforce(backend):
    idx, (keys, emb, *_rest) = build(backend, n=5000, bits=0)
    e16 = unit16(emb)
    e32 = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    rng = np.random.default_rng(2)
    recall = []
    for _ in range(10):
        q = rng.standard_normal(emb.shape[1]).astype(np.float32)
        qn = q / np.linalg.norm(q)
        hits = idx.search(q, top_k=10)
        exact16 = np.argsort(-(e16 @ qn))[:10]
        assert [h.key for h in hits] == [keys[i] for i in exact16]
        np.testing.assert_allclose([h.score for h in hits], (e16 @ qn)[exact16], rtol=1e-4, atol=1e-5)
        assert all(h.hamming == -1 for h in hits)
        recall.append(len({h.key for h in hits} & {keys[i] for i in np.argsort(-(e32 @ qn))[:10]}) / 10)
    assert np.mean(recall) >= 0.95  # float16 storage vs float32 exact


@pytest.mark.parametrize("backend", BACKENDS)
def test_hamming_candidates_then_cosine_rerank(backend):
    idx, (keys, emb, codes, *_rest) = build(backend, n=2000)
    e16 = unit16(emb)
    rng = np.random.default_rng(3)
    q = rng.standard_normal(emb.shape[1]).astype(np.float32)
    qc = codes[17] ^ np.uint8(1)  # a code near row 17's
    qn = q / np.linalg.norm(q)
    # With every row a candidate, the re-rank is exact cosine.
    hits = idx.search(q, qc.tobytes(), top_k=10, candidates=len(keys))
    assert [h.key for h in hits] == [keys[i] for i in np.argsort(-(e16 @ qn))[:10]]
    # With 50 candidates: results come from the 50 nearest codes, ordered by cosine.
    d = hamming_np(codes, qc)
    hits = idx.search(q, qc.tobytes(), top_k=10, candidates=50)
    cutoff = np.sort(d)[49]
    assert all(h.hamming <= cutoff for h in hits) and len(hits) == 10
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    strictly_inside = [i for i in range(len(keys)) if d[i] < cutoff]
    best_inside = sorted(strictly_inside, key=lambda i: -(e16[i] @ qn))[:10]
    assert (e16[best_inside[-1]] @ qn) <= scores[0] + 1e-6
    for i in best_inside:  # a candidate that beats the 10th score must be in the results
        if e16[i] @ qn > scores[-1] + 1e-5:
            assert keys[i] in {h.key for h in hits}


FILTERS = [
    (SearchFilter(modality="ct"), lambda m, v, labs: m == "ct"),
    (SearchFilter(view="AXIAL", modality="cxr"), lambda m, v, labs: v == "AXIAL" and m == "cxr"),
    (SearchFilter(labels_any=("L1", "L5")), lambda m, v, labs: bool({"L1", "L5"} & set(labs))),
    (
        SearchFilter(labels_all=("L0", "L2", "L3")),
        lambda m, v, labs: {"L0", "L2", "L3"} <= set(labs),
    ),  # selective: gather path
    (SearchFilter(labels_none=("L4",)), lambda m, v, labs: "L4" not in labs),  # broad: bitmap path
    (SearchFilter(labels_all=("L0", "unknown")), lambda m, v, labs: False),
    (SearchFilter(modality="mr"), lambda m, v, labs: False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flt,pred", FILTERS)
def test_filters_applied_before_topk(backend, flt, pred):
    idx, (keys, emb, codes, mods, views, labels) = build(backend, n=3000)
    ok = np.array([pred(m, v, labs) for m, v, labs in zip(mods, views, labels)])
    e16 = unit16(emb)
    rng = np.random.default_rng(4)
    q = rng.standard_normal(emb.shape[1]).astype(np.float32)
    qn = q / np.linalg.norm(q)
    scores = np.where(ok, e16 @ qn, -np.inf)
    want = [keys[i] for i in np.argsort(-scores)[: min(10, int(ok.sum()))]]
    assert [h.key for h in idx.search(q, top_k=10, filter=flt)] == want
    d = np.where(ok, hamming_np(codes, codes[5]), 10**6)
    hits = idx.search(None, codes[5].tobytes(), top_k=10, filter=flt)
    assert [h.hamming for h in hits] == sorted(d)[: len(hits)] and len(hits) == min(10, int(ok.sum()))
    assert all(ok[keys.index(h.key)] for h in hits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_upsert_overwrites_and_delete_tombstones_then_compacts(backend):
    idx, (keys, emb, codes, *_rest) = build(backend, n=2000)
    rng = np.random.default_rng(5)
    # Overwrite key 10 with row 20's vectors: searching row 20's vectors now finds both keys.
    r = idx.add_arrays([keys[10]], emb[20:21], codes[20:21])
    assert (r.inserted, r.updated) == (0, 1) and len(idx) == 2000
    found = {h.key for h in idx.search(emb[20], codes[20].tobytes(), top_k=2)}
    assert found == {keys[10], keys[20]}
    # A few deletes: tombstones, never returned (over-fetch path).
    gone = [keys[20], keys[10], "not-there"]
    assert idx.delete(gone) == 2 and len(idx) == 1998
    assert idx.stats()["dead_rows"] == 3  # two deletes + the overwritten row
    for h in idx.search(emb[20], codes[20].tobytes(), top_k=20) + idx.search(emb[20], top_k=20):
        assert h.key not in gone
    # Many deletes: compaction keeps dead rows <= OVERFETCH_MAX, results stay exact.
    victims = [keys[i] for i in rng.choice(np.arange(100, 2000), size=OVERFETCH_MAX + 50, replace=False)]
    idx.delete(victims)
    assert idx.stats()["dead_rows"] <= OVERFETCH_MAX and len(idx) == 1998 - len(victims)
    alive = [i for i, k in enumerate(keys) if k in idx]
    q = rng.standard_normal(emb.shape[1]).astype(np.float32)
    e16 = unit16(emb)
    qn = q / np.linalg.norm(q)
    best = sorted(alive, key=lambda i: -(e16[i] @ qn))[:10]
    assert [h.key for h in idx.search(q, top_k=10)] == [keys[i] for i in best]
    assert keys[3] in idx and keys[10] not in idx


@pytest.mark.parametrize("backend", BACKENDS)
def test_growth_many_batches_and_wide_label_vocabulary(backend):
    idx = CaseIndex(8, 16, backend=backend)
    rng = np.random.default_rng(6)
    all_keys = []
    for b in range(30):  # crosses the initial capacity several times
        n = 100
        ks = [f"b{b}-{i}" for i in range(n)]
        labs = [[f"label{(b * n + i) % 150}"] for i in range(n)]  # 150 labels: 3 words of bitmask
        idx.add_arrays(ks, rng.standard_normal((n, 8)), rng.integers(0, 256, (n, 2), dtype=np.uint8), labels=labs)
        all_keys += ks
    assert len(idx) == 3000 and sorted(idx.keys()) == sorted(all_keys)
    hits = idx.search(rng.standard_normal(8), top_k=50, filter=SearchFilter(labels_any=("label140",)))
    assert len(hits) == 20 and all(idx.case_meta(h.key)[2] == ["label140"] for h in hits)


def test_upsert_records_and_errors():
    idx = CaseIndex(4, 8, backend=BACKENDS[-1])
    rec = StoredCase("a1", "cxr", "PA", ["Nodule"], "", np.array([1, 0, 0, 0], np.float32), b"\x0f")
    assert idx.upsert([rec]).inserted == 1
    assert idx.search(np.array([1, 0, 0, 0]), b"\x0f", top_k=1)[0].key == "a1"
    with pytest.raises(InvalidRequestError):
        idx.upsert([StoredCase("a2", "cxr", "PA", [], "", np.ones(5, np.float32), b"\x0f")])
    with pytest.raises(InvalidRequestError):
        idx.search(np.ones(4), b"\x0f\x00", top_k=1)
    with pytest.raises(InvalidRequestError):
        idx.search(None, None)
    with pytest.raises(InvalidRequestError):
        idx.search(np.zeros(4), top_k=1)
    with pytest.raises(InvalidRequestError):
        idx.search(np.ones(4), top_k=0)
    with pytest.raises(InvalidRequestError):
        CaseIndex(4, 0).search(np.ones(4), b"\x01")
    with pytest.raises(InvalidRequestError):
        CaseIndex(4, 12)
    assert CaseIndex(4, 0).search(np.ones(4)) == []


def test_ram_per_case_within_one_kib():
    idx, _ = build(BACKENDS[-1], n=20000, dim=128, bits=64)
    mem = idx.memory_bytes()
    assert mem["cases"] == 20000
    assert mem["per_case"] <= 1024, mem
    assert mem["embeddings"] >= 20000 * 128 * 2  # float16, not float32 copies


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_readers_with_one_writer(backend):
    idx, (keys, emb, codes, *_rest) = build(backend, n=3000)
    rng = np.random.default_rng(7)
    errors, stop = [], threading.Event()

    def reader(seed):
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                i = int(r.integers(0, 3000))
                hits = idx.search(emb[i], codes[i].tobytes(), top_k=10)
                scores = [h.score for h in hits]
                assert len(hits) == 10 and scores == sorted(scores, reverse=True)
                hits = idx.search(emb[i], top_k=5, filter=SearchFilter(modality="cxr"))
                assert len(hits) == 5
        except Exception as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    try:
        for step in range(60):  # writer: appends, overwrites, deletes (with compactions)
            new = [f"w{step}-{i}" for i in range(50)]
            idx.add_arrays(
                new,
                rng.standard_normal((50, emb.shape[1])),
                rng.integers(0, 256, (50, 8), dtype=np.uint8),
                modalities=["cxr"] * 50,
            )
            idx.add_arrays(keys[step * 10 : step * 10 + 10], emb[:10], codes[:10], modalities=["ct"] * 10)
            idx.delete(new[:25])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert len(idx) == 3000 + 60 * 25
