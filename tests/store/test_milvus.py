"""MilvusStore against real milvus-lite files in tmp_path (no mocks)."""

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lungsearch.errors import InvalidRequestError, NotFoundError, StoreUnavailableError
from lungsearch.store import (
    CaseIndex,
    MilvusStore,
    SearchFilter,
    StoreCapabilities,
    StoredCase,
    collection_name,
    is_lite_uri,
)
from lungsearch.store.milvus import CollectionInfo, _split_result, collection_index_params, collection_schema

PROFILE, VERSION = "cxr-hash", "20261124-0001-test"
LABELS = ["Nodule", "Effusion", 'x" or 1==1 or "', "back\\slash", "it's", "é 肺"]
DIM, BITS = 16, 64


def make_cases(n, seed=0, start=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        labs = [LABELS[j] for j in range(len(LABELS)) if rng.random() < 0.3]
        out.append(
            StoredCase(
                case_key=f"case{i:05d}",
                modality="cxr" if i % 3 else "ct",
                view=("PA", "AP", "LATERAL")[i % 3],
                labels=labs,
                report_excerpt=f"synthetic report {i} ü",
                embedding=rng.standard_normal(DIM).astype(np.float32),
                code=rng.integers(0, 256, BITS // 8, dtype=np.uint8).tobytes(),
                ingested_at=1.7e9 + i,
                num_images=1 + i % 4,
                model_version=VERSION,
            )
        )
    return out


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "store.db")


@pytest.fixture
def store(db_path):
    s = MilvusStore(db_path, timeout=30.0)
    yield s
    s.close()


def test_collection_name_is_valid_and_unique():
    name = collection_name("cxr-report", "2026.11.24-1953/ab")
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", name)
    assert collection_name("a-b", "v") != collection_name("a_b", "v")
    assert collection_name("p", "v1") == collection_name("p", "v1")
    assert len(collection_name("p" * 300, "v" * 300)) <= 255
    with pytest.raises(InvalidRequestError):
        collection_name("p", "")


def test_capabilities_decided_by_uri():
    assert is_lite_uri("data/lungsearch.db") and not is_lite_uri("http://milvus:19530")
    lite, server = StoreCapabilities.for_uri("x.db"), StoreCapabilities.for_uri("https://milvus.example:443")
    assert (lite.backend, lite.binary_vector, lite.single_process) == ("milvus-lite", False, True)
    assert (server.backend, server.binary_vector, server.array_scalar_index) == ("milvus", True, True)


def test_server_schema_uses_binary_vector_and_hamming_index():
    from pymilvus import DataType

    info = CollectionInfo("ls_x", "x", "v", 128, 64, "binary_vector")
    fields = {f.name: f for f in collection_schema(info).fields}
    assert fields["code"].dtype == DataType.BINARY_VECTOR and fields["embedding"].dtype == DataType.FLOAT_VECTOR
    idx = {i.field_name: i for i in collection_index_params(info, StoreCapabilities.for_uri("http://h:19530"))}
    assert idx["code"].to_dict()["index_type"] == "BIN_IVF_FLAT" and idx["code"].to_dict()["metric_type"] == "HAMMING"
    assert "labels" in idx  # servers index ARRAY fields; milvus-lite cannot
    lite_idx = {i.field_name for i in collection_index_params(info, StoreCapabilities.for_uri("a.db"))}
    assert "labels" not in lite_idx and {"embedding", "modality", "view", "bucket"} <= lite_idx


def test_persistence_across_reopen(db_path):
    cases = make_cases(300)
    with MilvusStore(db_path, timeout=30.0) as s:
        res = s.upsert(PROFILE, VERSION, cases)
        assert (res.inserted, res.updated) == (300, 0)
    with MilvusStore(db_path, timeout=30.0) as s:  # a real reopen: the in-process server was stopped
        assert s.count(PROFILE, VERSION) == 300
        info = s.collection_info(PROFILE, VERSION)
        assert (info.embedding_dim, info.code_bits, info.code_storage) == (DIM, BITS, "hex")
        back = s.get_many(PROFILE, VERSION, [c.case_key for c in cases])
        for c in cases:
            b = back[c.case_key]
            assert (b.modality, b.view, b.labels, b.report_excerpt, b.code, b.num_images, b.model_version) == (
                c.modality,
                c.view,
                c.labels,
                c.report_excerpt,
                c.code,
                c.num_images,
                c.model_version,
            )
            np.testing.assert_allclose(b.embedding, c.embedding, rtol=1e-6)
            assert b.ingested_at == c.ingested_at
        s.wait_for_index(PROFILE, VERSION, timeout=60)
        for c in cases[:40]:  # Milvus's own HNSW finds each case by its embedding
            assert s.search(PROFILE, VERSION, c.embedding, top_k=1)[0].key == c.case_key
        assert sorted(k.case_key for k in s.iterate(PROFILE, VERSION, batch_rows=64)) == sorted(
            c.case_key for c in cases
        )
        idx = CaseIndex.from_store(s, PROFILE, VERSION, batch_rows=50)
    assert len(idx) == 300
    for c in cases:  # the rebuilt in-memory index finds every case, by code+embedding and by code alone
        hit = idx.search(c.embedding, c.code, top_k=1)[0]
        assert hit.key == c.case_key and hit.hamming == 0
        modality, view, labels = idx.case_meta(c.case_key)
        assert (modality, view, sorted(labels)) == (c.modality, c.view, sorted(c.labels))


def test_upsert_is_idempotent_by_key(store):
    cases = make_cases(50)
    store.upsert(PROFILE, VERSION, cases)
    again = store.upsert(PROFILE, VERSION, cases)
    assert (again.inserted, again.updated) == (0, 50)
    changed = make_cases(1, seed=9)[0]
    changed.case_key = cases[7].case_key
    changed.labels = ["Effusion"]
    dup = make_cases(1, seed=10)[0]
    dup.case_key = cases[7].case_key  # the same key twice in one call: the last record wins
    dup.labels = ["Nodule"]
    r = store.upsert(PROFILE, VERSION, [changed, dup] + make_cases(5, start=100))
    assert (r.inserted, r.updated) == (5, 1)
    assert store.count(PROFILE, VERSION) == 55
    got = store.get(PROFILE, VERSION, cases[7].case_key)
    assert got.labels == ["Nodule"]
    np.testing.assert_allclose(got.embedding, dup.embedding, rtol=1e-6)


def test_filters_are_exact_and_injection_safe(store):
    cases = make_cases(200, seed=3)
    store.upsert(PROFILE, VERSION, cases)

    def expected(pred):
        return sorted(c.case_key for c in cases if pred(c))

    checks = [
        (SearchFilter(modality="ct"), lambda c: c.modality == "ct"),
        (
            SearchFilter(view="PA", labels_any=("Nodule", "it's")),
            lambda c: c.view == "PA" and {"Nodule", "it's"} & set(c.labels),
        ),
        (SearchFilter(labels_all=("Effusion", "back\\slash")), lambda c: {"Effusion", "back\\slash"} <= set(c.labels)),
        (
            SearchFilter(labels_none=("Nodule",), modality="cxr"),
            lambda c: c.modality == "cxr" and "Nodule" not in c.labels,
        ),
        (SearchFilter(labels_any=('x" or 1==1 or "',)), lambda c: 'x" or 1==1 or "' in c.labels),
        (SearchFilter(labels_any=("é 肺",)), lambda c: "é 肺" in c.labels),
        (SearchFilter(labels_any=("x",)), lambda c: False),  # a substring of a label is not the label
    ]
    store.wait_for_index(PROFILE, VERSION, timeout=60)
    for flt, pred in checks:
        want = expected(pred)
        assert store.query_keys(PROFILE, VERSION, flt) == want, flt
        hits = store.search(PROFILE, VERSION, cases[0].embedding, top_k=10, filter=flt)
        assert {h.key for h in hits} <= set(want) and len(hits) == min(10, len(want)), flt


def test_delete_persists(db_path):
    cases = make_cases(30)
    with MilvusStore(db_path, timeout=30.0) as s:
        s.upsert(PROFILE, VERSION, cases)
        assert s.delete(PROFILE, VERSION, [cases[0].case_key, cases[1].case_key, "never-stored"]) == 2
    with MilvusStore(db_path, timeout=30.0) as s:
        assert s.count(PROFILE, VERSION) == 28
        with pytest.raises(NotFoundError):
            s.get(PROFILE, VERSION, cases[0].case_key)


def test_errors_are_typed(store):
    with pytest.raises(NotFoundError):
        store.count(PROFILE, "no-such-version")
    store.upsert(PROFILE, VERSION, make_cases(3))
    with pytest.raises(NotFoundError):
        store.get(PROFILE, VERSION, "missing")
    wrong = make_cases(1)[0]
    wrong.embedding = np.ones(DIM + 1, np.float32)
    with pytest.raises(InvalidRequestError):
        store.upsert(PROFILE, VERSION, [wrong])
    bad_key = make_cases(1)[0]
    bad_key.case_key = 'a" or "1'
    with pytest.raises(InvalidRequestError):
        store.upsert(PROFILE, VERSION, [bad_key])
    with pytest.raises(InvalidRequestError):
        store.ensure_collection(PROFILE, VERSION, embedding_dim=DIM, code_bits=32)
    with pytest.raises(InvalidRequestError):
        store.search_codes(PROFILE, VERSION, b"\x00" * 8)  # milvus-lite has no BINARY_VECTOR
    store.close()
    with pytest.raises(StoreUnavailableError) as e:
        store.count(PROFILE, VERSION)
    assert e.value.retriable


def test_second_process_gets_store_unavailable(db_path):
    with MilvusStore(db_path, timeout=30.0) as s:
        s.upsert(PROFILE, VERSION, make_cases(2))
        code = textwrap.dedent(f"""
            from lungsearch.errors import StoreUnavailableError
            from lungsearch.store import MilvusStore
            try:
                MilvusStore({db_path!r}, timeout=5.0)
                print("OPENED")
            except StoreUnavailableError as e:
                print("UNAVAILABLE", e.code, e.retriable)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "UNAVAILABLE store_locked True", out.stderr[-2000:]


def test_unreachable_server_is_store_unavailable():
    with pytest.raises(StoreUnavailableError) as e:
        MilvusStore("http://127.0.0.1:9", timeout=1.0)  # nothing listens on the discard port
    assert e.value.code == "connect_failed"


def test_vector_columns_are_read_without_per_row_decoding(store):
    """Guards the fast path of _split_result (pymilvus private attribute): a silent fallback would
    make rebuilding a 1M-case index ~10x slower."""
    store.upsert(PROFILE, VERSION, make_cases(20))
    name = collection_name(PROFILE, VERSION)
    res = store._client.query(name, filter="bucket >= 0", output_fields=["case_key", "embedding"], limit=100)
    rows, vectors = _split_result(res)
    assert len(rows) == 20 and vectors["embedding"].shape == (20 * DIM,)


def test_collection_released_behind_the_store_is_reloaded_on_the_next_call(store):
    """A Milvus that comes back from a restart has our collection released (code 101). The store
    must not keep believing it is loaded: one retriable failure, then the next call reloads."""
    cases = make_cases(3)
    store.upsert(PROFILE, VERSION, cases)
    name = collection_name(PROFILE, VERSION)
    store._client.release_collection(name)  # what a server restart does to the load state
    with pytest.raises(StoreUnavailableError) as err:
        store.get_many(PROFILE, VERSION, [cases[0].case_key])
    assert err.value.code == "collection_not_loaded" and err.value.retriable
    assert set(store.get_many(PROFILE, VERSION, [c.case_key for c in cases])) == {c.case_key for c in cases}
    assert store.count(PROFILE, VERSION) == 3


def test_ensure_loaded_reloads_what_was_released_without_a_failed_call(store):
    """The health check's way: ask the server's load state, not this process's memory, so no call
    has to fail first."""
    cases = make_cases(3)
    store.upsert(PROFILE, VERSION, cases)
    name = collection_name(PROFILE, VERSION)
    store._client.release_collection(name)
    store.ensure_loaded(PROFILE, VERSION)
    assert store._client.get_load_state(name)["state"].name == "Loaded"
    assert set(store.get_many(PROFILE, VERSION, [c.case_key for c in cases])) == {c.case_key for c in cases}


def test_lite_index_creation_logs_no_grpc_traceback(db_path, caplog):
    """pymilvus asks milvus-lite's in-process server for AllocTimestamp while it waits for a new
    index; the server lacks it and grpc logged an ERROR traceback per collection (noise only)."""
    import logging

    caplog.set_level(logging.ERROR)
    with MilvusStore(db_path, timeout=30.0) as s:
        s.ensure_collection("cxr-hash", "v1", embedding_dim=8, code_bits=16)
    assert not [r for r in caplog.records if r.name == "grpc._server"], [r.getMessage() for r in caplog.records]


def test_a_lite_store_pings_no_more_than_its_server_allows():
    """milvus-lite's gRPC server keeps gRPC's ping policy (none without a call, at most one per 5 min):
    pymilvus's default 10 s keepalive got GOAWAY "too_many_pings" on an idle Ranking replica."""
    from lungsearch.store.milvus import _keepalive_options

    lite = _keepalive_options("/data/lungsearch.db")
    assert lite["grpc.keepalive_time_ms"] >= 300_000 and lite["grpc.keepalive_permit_without_calls"] == 0
    assert _keepalive_options("http://milvus:19530") == {}  # a Milvus server permits pymilvus's pings
