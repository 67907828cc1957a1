"""Index snapshots tagged with the store's write generation (milvus-lite files in tmp_path; synthetic cases)."""

from __future__ import annotations

import numpy as np
import pytest
from test_milvus import PROFILE, VERSION, make_cases

from lungsearch.store import CaseIndex, MilvusStore, SearchFilter, collection_name
from lungsearch.store.snapshot import index_from_store, load_snapshot

FILTERS = [
    None,
    SearchFilter(modality="ct"),
    SearchFilter(labels_any=("Nodule",)),
    SearchFilter(view="PA", labels_none=("Effusion",)),
]


def _answers(idx: CaseIndex, cases) -> list:
    out = []
    for c in cases[::7]:
        for flt in FILTERS:
            out.append(idx.search(c.embedding, c.code, top_k=10, filter=flt))
            out.append(idx.search(None, c.code, top_k=10, filter=flt))
            out.append(idx.search(c.embedding, top_k=10, filter=flt))
    return out


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "snap.db")


def test_restart_loads_the_snapshot_and_answers_like_a_rebuild(db):
    cases = make_cases(400, seed=21)
    with MilvusStore(db, timeout=30.0) as s:
        s.upsert(PROFILE, VERSION, cases)
        first, how = index_from_store(s, PROFILE, VERSION)
        assert how == "rebuild"
        rebuilt_answers = _answers(first, cases)
    with MilvusStore(db, timeout=30.0) as s:  # a restart: new process state, same file
        loaded, how = index_from_store(s, PROFILE, VERSION)
        assert how == "snapshot"
        fresh = CaseIndex.from_store(s, PROFILE, VERSION)
    assert len(loaded) == 400 and sorted(loaded.keys()) == sorted(c.case_key for c in cases)
    assert _answers(loaded, cases) == rebuilt_answers == _answers(fresh, cases)
    for c in cases[:30]:
        assert loaded.case_meta(c.case_key) == fresh.case_meta(c.case_key)
    # The loaded index takes writes like any other (vocabularies restored, room to grow).
    extra = make_cases(5, seed=99, start=5000)
    extra[0].labels = ["a label never seen before"]
    assert loaded.upsert(extra).inserted == 5
    assert (
        loaded.search(
            extra[0].embedding, extra[0].code, top_k=1, filter=SearchFilter(labels_any=("a label never seen before",))
        )[0].key
        == extra[0].case_key
    )


def test_a_write_after_the_snapshot_forces_a_rebuild(db):
    cases = make_cases(100, seed=22)
    with MilvusStore(db, timeout=30.0) as s:
        s.upsert(PROFILE, VERSION, cases)
        index_from_store(s, PROFILE, VERSION)
    with MilvusStore(db, timeout=30.0) as s:  # e.g. the build_index job, with the ranking service down
        s.upsert(PROFILE, VERSION, make_cases(3, seed=23, start=900))
        s.delete(PROFILE, VERSION, [cases[0].case_key])
    with MilvusStore(db, timeout=30.0) as s:
        idx, how = index_from_store(s, PROFILE, VERSION)
        assert how == "rebuild" and len(idx) == 102 and cases[0].case_key not in idx
        _, how = index_from_store(s, PROFILE, VERSION)
        assert how == "snapshot"  # the rebuild wrote a current one


def test_keeper_snapshots_ingests_that_went_to_both_store_and_index(db):
    cases = make_cases(80, seed=24)
    with MilvusStore(db, timeout=30.0) as s:
        s.upsert(PROFILE, VERSION, cases)
        idx, _ = index_from_store(s, PROFILE, VERSION)
        keeper = idx.snapshot_keeper
        assert not keeper.maybe_save()  # nothing changed
        new = make_cases(4, seed=25, start=700)
        s.upsert(PROFILE, VERSION, new)
        assert not keeper.maybe_save()  # the store has the write, the index not yet: out of step
        idx.upsert(new)
        s.delete(PROFILE, VERSION, [cases[1].case_key])
        idx.delete(cases[1].case_key)
        assert keeper.maybe_save()
        answers = _answers(idx, cases + new)
    with MilvusStore(db, timeout=30.0) as s:
        loaded, how = index_from_store(s, PROFILE, VERSION)
        assert how == "snapshot" and len(loaded) == 83
        assert _answers(loaded, cases + new) == answers


def test_a_failed_write_is_never_snapshotted(db):
    cases = make_cases(50, seed=26)
    with MilvusStore(db, timeout=30.0) as s:
        s.upsert(PROFILE, VERSION, cases)
        idx, _ = index_from_store(s, PROFILE, VERSION)
        name = collection_name(PROFILE, VERSION)
        s._begin_write(name)  # what an upsert that raised half-way leaves: a new generation, no end
        assert s.clean_generation(PROFILE, VERSION) is None
        idx.upsert(make_cases(1, seed=27, start=800))
        assert not idx.snapshot_keeper.maybe_save()
    with MilvusStore(db, timeout=30.0) as s:
        _, how = index_from_store(s, PROFILE, VERSION)
        assert how == "rebuild"  # the generation moved at the failed write: the old snapshot is stale


def test_a_damaged_snapshot_is_ignored(db, tmp_path):
    cases = make_cases(60, seed=28)
    with MilvusStore(db, timeout=30.0) as s:
        s.upsert(PROFILE, VERSION, cases)
        idx, _ = index_from_store(s, PROFILE, VERSION)
        generation = s.write_generation(PROFILE, VERSION)
    snap = tmp_path / "snap.db.snapshots" / collection_name(PROFILE, VERSION)
    assert load_snapshot(snap.parent, snap.name, generation) is not None
    emb = snap / "emb.npy"
    raw = bytearray(emb.read_bytes())
    raw[-1] ^= 0xFF
    emb.write_bytes(bytes(raw))
    assert load_snapshot(snap.parent, snap.name, generation) is None
    assert load_snapshot(snap.parent, snap.name, "another-generation") is None
    with MilvusStore(db, timeout=30.0) as s:
        again, how = index_from_store(s, PROFILE, VERSION)
    assert how == "rebuild" and len(again) == 60
    assert np.array_equal(np.sort(again.keys()), np.sort([c.case_key for c in cases]))


def test_an_index_without_codes_round_trips(db):
    cases = make_cases(40, seed=29)
    for c in cases:
        c.code = b""
    with MilvusStore(db, timeout=30.0) as s:
        s.upsert("cxr-report", VERSION, cases)
        first, _ = index_from_store(s, "cxr-report", VERSION)
    with MilvusStore(db, timeout=30.0) as s:
        loaded, how = index_from_store(s, "cxr-report", VERSION)
    assert how == "snapshot" and loaded.code_bits == 0
    for c in cases[::5]:
        assert loaded.search(c.embedding, top_k=5) == first.search(c.embedding, top_k=5)
