"""MilvusStore against a real Milvus 2.3.5 standalone server (the session's ``milvus_server``).

Synthetic cases (random vectors and codes); no mocks. Each test uses its own profile name so the
tests share the one server without seeing each other's rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_milvus import BITS, DIM, make_cases

from lungsearch.errors import InvalidRequestError, NotFoundError
from lungsearch.store import CaseIndex, MilvusStore, SearchFilter, StoredCase, collection_name
from lungsearch.store.schema import HAMMING_NLIST, companion_name

pytestmark = [pytest.mark.milvus_server, pytest.mark.slow]

VERSION = "20261204-server"


@pytest.fixture
def store(milvus_server):
    s = MilvusStore(milvus_server.uri, timeout=60.0)
    yield s
    s.close()


def _fresh(store: MilvusStore, profile: str) -> str:
    store.drop_collection(profile, VERSION)
    return profile


def _popcount_oracle(cases: list[StoredCase], query: bytes, keep=lambda c: True) -> dict[str, int]:
    q = np.frombuffer(query, dtype=np.uint8)
    return {c.case_key: int(np.unpackbits(np.frombuffer(c.code, dtype=np.uint8) ^ q).sum()) for c in cases if keep(c)}


def test_capabilities_are_probed_from_the_server(store):
    caps = store.capabilities
    assert caps.probed and caps.backend == "milvus"
    # What the probe found must be what the server does: the facts of this Milvus 2.3 binary.
    assert caps.binary_vector and caps.strong_reads and not caps.flush_on_write
    assert not caps.multi_vector and caps.code_storage == "companion"  # 2.3: one vector field per collection
    assert (caps.numeric_index_type, caps.scalar_index_type, caps.array_scalar_index) == ("STL_SORT", "Trie", False)
    assert not [n for n in store._client.list_collections() if n.startswith("_lsprobe_")]  # the probe cleans up


def test_ensure_collection_with_and_without_codes(store, milvus_server):
    with_codes, without = _fresh(store, "srv-codes"), _fresh(store, "srv-nocodes")
    info = store.ensure_collection(with_codes, VERSION, embedding_dim=DIM, code_bits=BITS)
    assert (info.embedding_dim, info.code_bits, info.code_storage) == (DIM, BITS, store.capabilities.code_storage)
    plain = store.ensure_collection(without, VERSION, embedding_dim=DIM, code_bits=0)
    assert (plain.code_bits, plain.code_storage, plain.companion) == (0, "hex", None)
    names = store._client.list_collections()
    assert (companion_name(info.name) in names) == (info.code_storage == "companion")
    assert collection_name(with_codes, VERSION) in store.list_collections()
    assert not [n for n in store.list_collections() if n.endswith("__codes")]  # companions are not cases
    with MilvusStore(milvus_server.uri, timeout=60.0) as again:  # a new connection reads the same layout back
        assert again.collection_info(with_codes, VERSION) == info
        assert again.ensure_collection(without, VERSION, embedding_dim=DIM, code_bits=0) == plain
        with pytest.raises(InvalidRequestError):
            again.ensure_collection(with_codes, VERSION, embedding_dim=DIM, code_bits=32)
    assert store.drop_collection(with_codes, VERSION)
    assert companion_name(info.name) not in store._client.list_collections()


def test_upsert_get_search_delete_count_round_trip(store):
    profile = _fresh(store, "srv-roundtrip")
    cases = make_cases(300, seed=5)
    r = store.upsert(profile, VERSION, cases)
    assert (r.inserted, r.updated) == (300, 0)
    r = store.upsert(profile, VERSION, cases[:10])
    assert (r.inserted, r.updated) == (0, 10)  # idempotent by key
    assert store.count(profile, VERSION) == 300
    back = store.get_many(profile, VERSION, [c.case_key for c in cases])
    for c in cases:
        b = back[c.case_key]
        assert (b.modality, b.view, b.labels, b.report_excerpt, b.code, b.num_images) == (
            c.modality,
            c.view,
            c.labels,
            c.report_excerpt,
            c.code,
            c.num_images,
        )
        np.testing.assert_allclose(b.embedding, c.embedding, rtol=1e-6)
    for c in cases[:20]:  # the server's own HNSW finds each case by its embedding, and by its code
        assert store.search(profile, VERSION, c.embedding, top_k=1, consistency="Strong")[0].key == c.case_key
        hit = store.search_codes(profile, VERSION, c.code, top_k=1, consistency="Strong")[0]
        assert hit.hamming == 0 and hit.score == 1.0
    flt = SearchFilter(modality="ct", labels_any=("Nodule",))
    want = sorted(c.case_key for c in cases if c.modality == "ct" and "Nodule" in c.labels)
    assert store.query_keys(profile, VERSION, flt) == want
    assert {
        h.key for h in store.search(profile, VERSION, cases[0].embedding, top_k=10, filter=flt, consistency="Strong")
    } <= set(want)
    gone = [cases[0].case_key, cases[1].case_key]
    assert store.delete(profile, VERSION, gone + ["never-stored"]) == 2
    assert store.count(profile, VERSION) == 298
    with pytest.raises(NotFoundError):
        store.get(profile, VERSION, gone[0])
    assert gone[0] not in {
        h.key for h in store.search_codes(profile, VERSION, cases[0].code, top_k=5, consistency="Strong")
    }
    assert sorted(c.case_key for c in store.iterate(profile, VERSION, batch_rows=64)) == sorted(
        c.case_key for c in cases[2:]
    )


def test_server_hamming_search_agrees_with_a_numpy_popcount_oracle(store):
    profile = _fresh(store, "srv-hamming")
    cases = make_cases(600, seed=11)
    store.upsert(profile, VERSION, cases)
    store.flush(profile, VERSION)  # seal the segments so BIN_IVF_FLAT is really used, not a growing-segment scan
    store.wait_for_index(profile, VERSION, timeout=120)
    rng = np.random.default_rng(3)
    for trial in range(8):
        query = rng.integers(0, 256, BITS // 8, dtype=np.uint8).tobytes()
        keep = (lambda c: True) if trial % 2 == 0 else (lambda c: c.modality == "cxr")
        flt = None if trial % 2 == 0 else SearchFilter(modality="cxr")
        truth = _popcount_oracle(cases, query, keep)
        hits = store.search_codes(
            profile, VERSION, query, top_k=15, filter=flt, nprobe=HAMMING_NLIST, consistency="Strong"
        )
        assert len(hits) == 15
        for h in hits:  # each distance is the true popcount distance of that case
            assert h.hamming == truth[h.key] and h.score == pytest.approx(1 - truth[h.key] / BITS)
        # ... and they are the 15 smallest distances (ties may pick other keys, the distances cannot differ)
        assert [h.hamming for h in hits] == sorted(truth.values())[:15]


def test_strong_consistency_reads_its_own_write_at_once(store):
    profile = _fresh(store, "srv-ryw")
    store.upsert(profile, VERSION, make_cases(50, seed=2))
    for i in range(5):  # no flush, no sleep between the write and the reads
        new = make_cases(1, seed=100 + i, start=1000 + i)[0]
        store.upsert(profile, VERSION, [new])
        assert store.count(profile, VERSION) == 51 + i
        assert store.get(profile, VERSION, new.case_key).code == new.code
        assert store.search(profile, VERSION, new.embedding, top_k=1, consistency="Strong")[0].key == new.case_key
        assert store.search_codes(profile, VERSION, new.code, top_k=1, consistency="Strong")[0].key == new.case_key


def test_index_rebuilt_from_the_server_answers_like_one_built_from_the_cases(store):
    profile = _fresh(store, "srv-rebuild")
    cases = make_cases(400, seed=7)
    store.upsert(profile, VERSION, cases)
    rebuilt = CaseIndex.from_store(store, profile, VERSION, batch_rows=100)
    direct = CaseIndex(DIM, BITS)
    direct.upsert(cases)
    assert len(rebuilt) == len(direct) == 400
    for c in cases[::20]:
        # Row order differs (pages by bucket), so compare what ties cannot change: cosine over every
        # candidate, and the Hamming distances of a code-only search.
        assert rebuilt.search(c.embedding, c.code, top_k=10, candidates=400) == direct.search(
            c.embedding, c.code, top_k=10, candidates=400
        )
        flt = SearchFilter(view="PA")
        assert [h.hamming for h in rebuilt.search(None, c.code, top_k=10, filter=flt)] == [
            h.hamming for h in direct.search(None, c.code, top_k=10, filter=flt)
        ]


def test_data_and_generation_survive_a_server_restart(milvus_server):
    profile = "srv-restart"
    cases = make_cases(120, seed=13)
    with MilvusStore(milvus_server.uri, timeout=60.0) as s:
        s.drop_collection(profile, VERSION)
        s.upsert(profile, VERSION, cases)
        generation = s.write_generation(profile, VERSION)
    milvus_server.restart()
    with MilvusStore(milvus_server.uri, timeout=60.0) as s:
        assert s.count(profile, VERSION) == 120
        assert s.write_generation(profile, VERSION) == generation
        assert (
            s.search_codes(profile, VERSION, cases[9].code, top_k=1, consistency="Strong")[0].key == cases[9].case_key
        )
        assert s.get(profile, VERSION, cases[3].case_key).labels == cases[3].labels


def test_two_replicas_on_one_server_agree_through_server_side_search(store, milvus_server):
    """Item 2's server-side-search option at the store level: two connections ("replicas"), writes
    through one, Strong reads through both give identical answers with no delay; the generation
    written by one is what the other reads (the hook an in-memory replica uses to see it is stale)."""
    profile = _fresh(store, "srv-replicas")
    base = make_cases(200, seed=17)
    store.upsert(profile, VERSION, base)
    with MilvusStore(milvus_server.uri, timeout=60.0) as other:
        before = other.write_generation(profile, VERSION)
        for i in range(3):
            new = make_cases(1, seed=300 + i, start=3000 + i)[0]
            store.upsert(profile, VERSION, [new])  # ingest through replica A
            for replica in (store, other):  # search through both, at once
                assert (
                    replica.search_codes(profile, VERSION, new.code, top_k=1, consistency="Strong")[0].key
                    == new.case_key
                )
            a = store.search_codes(profile, VERSION, base[i].code, top_k=10, consistency="Strong")
            b = other.search_codes(profile, VERSION, base[i].code, top_k=10, consistency="Strong")
            assert [h.hamming for h in a] == [h.hamming for h in b]
            assert store.search(profile, VERSION, new.embedding, top_k=5, consistency="Strong") == other.search(
                profile, VERSION, new.embedding, top_k=5, consistency="Strong"
            )
        assert other.delete(profile, VERSION, [base[0].case_key]) == 1  # a delete through replica B
        assert store.count(profile, VERSION) == other.count(profile, VERSION) == 202
        assert base[0].case_key not in {
            h.key for h in store.search_codes(profile, VERSION, base[0].code, top_k=3, consistency="Strong")
        }
        after = other.write_generation(profile, VERSION)
        assert after != before and store.write_generation(profile, VERSION) == after
        assert other.clean_generation(profile, VERSION) == after and store.clean_generation(profile, VERSION) is None


def test_index_snapshot_on_a_server_is_invalidated_by_another_replicas_write(store, milvus_server, tmp_path):
    from lungsearch.store.snapshot import index_from_store

    profile = _fresh(store, "srv-snapshot")
    cases = make_cases(150, seed=19)
    store.upsert(profile, VERSION, cases)
    first, how = index_from_store(store, profile, VERSION, snapshot_dir=tmp_path)
    assert how == "rebuild"
    with MilvusStore(milvus_server.uri, timeout=60.0) as restarted:
        again, how = index_from_store(restarted, profile, VERSION, snapshot_dir=tmp_path)
        assert how == "snapshot"
        for c in cases[::15]:
            assert again.search(c.embedding, c.code, top_k=10) == first.search(c.embedding, c.code, top_k=10)
    with MilvusStore(milvus_server.uri, timeout=60.0) as other_replica:
        other_replica.upsert(profile, VERSION, make_cases(2, seed=20, start=4000))
    with MilvusStore(milvus_server.uri, timeout=60.0) as restarted:
        idx, how = index_from_store(restarted, profile, VERSION, snapshot_dir=tmp_path)
        assert how == "rebuild" and len(idx) == 152


def test_ensure_loaded_notices_a_released_collection_and_loads_it(store, milvus_server):
    """What a server restart does to the collections (all released), done by a second client: this
    store's "loaded once" memory still says loaded; ``ensure_loaded`` (the health check's) asks the
    server and loads them again, companion included."""
    profile = _fresh(store, "srv-reload")
    store.upsert(profile, VERSION, make_cases(20, seed=9))
    info = store.collection_info(profile, VERSION)
    names = [n for n in (info.name, info.companion) if n]
    with MilvusStore(milvus_server.uri, timeout=60.0) as other:
        for n in names:
            other._client.release_collection(n)
        assert {other._client.get_load_state(n)["state"].name for n in names} == {"NotLoad"}
    assert info.name in store._loaded  # the memory alone would have said "ready"
    store.ensure_loaded(profile, VERSION)
    assert {store._client.get_load_state(n)["state"].name for n in names} == {"Loaded"}
    assert store.count(profile, VERSION) == 20
    with pytest.raises(NotFoundError):
        store.ensure_loaded("srv-never-made", VERSION)
