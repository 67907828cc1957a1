"""Two Ranking replicas' indexes on one real Milvus server (the session's ``milvus_server``):
writes through one, the other follows the store (``lungsearch.store.follow``) and answers the same
within one poll. Synthetic cases."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from test_milvus import BITS, DIM, make_cases

from lungsearch.store import MilvusStore
from lungsearch.store.follow import IndexFollower
from lungsearch.store.snapshot import index_from_store

pytestmark = [pytest.mark.milvus_server, pytest.mark.slow]

VERSION = "20261206-follow"
PROFILE = "srv-follow"


def _answers(idx, queries) -> list[list[str]]:
    return [[h[0] for h in idx.search(embedding=q, top_k=10)] for q in queries]


def _write(store, idx, cases):  # what the Ranking replica that takes a write does: store first, then its index
    store.upsert(PROFILE, VERSION, cases)
    idx.upsert(cases)


def test_a_replica_follows_writes_and_deletes_made_through_another(milvus_server, tmp_path):
    a, b = MilvusStore(milvus_server.uri, timeout=60.0), MilvusStore(milvus_server.uri, timeout=60.0)
    try:
        a.drop_collection(PROFILE, VERSION)
        a.ensure_collection(PROFILE, VERSION, embedding_dim=DIM, code_bits=BITS)
        a.upsert(PROFILE, VERSION, make_cases(60, seed=3))
        idx_a, _ = index_from_store(a, PROFILE, VERSION, snapshot_dir=tmp_path / "a")
        idx_b, _ = index_from_store(b, PROFILE, VERSION, snapshot_dir=tmp_path / "b")
        follower = IndexFollower(b, PROFILE, VERSION, idx_b, interval_s=0.5)
        queries = [np.random.default_rng(i).standard_normal(DIM).astype(np.float32) for i in range(8)]
        assert _answers(idx_a, queries) == _answers(idx_b, queries)

        now = time.time()
        new = [dataclasses.replace(c, ingested_at=now) for c in make_cases(5, seed=4, start=100)]
        _write(a, idx_a, new)
        assert len(idx_b) == 60  # b is behind until it polls
        upserted, removed = follower.poll()
        assert upserted >= 5 and removed == 0 and len(idx_b) == len(idx_a) == 65
        assert _answers(idx_a, queries) == _answers(idx_b, queries)

        # a delete elsewhere: caught by the count check and reconciled by key
        gone = [c.case_key for c in make_cases(3, seed=3)]
        a.delete(PROFILE, VERSION, gone)
        idx_a.delete(gone)
        assert follower.poll()[1] == 3 and sorted(idx_b.keys()) == sorted(idx_a.keys())
        # an update (new labels, new timestamp) replaces the row
        changed = dataclasses.replace(new[0], labels=["Nodule"], ingested_at=time.time())
        _write(a, idx_a, [changed])
        follower.poll()
        assert idx_b.search(embedding=changed.embedding, top_k=1)[0][0] == changed.case_key
        assert _answers(idx_a, queries) == _answers(idx_b, queries)

        # the thread: a write through a is answered by b within about one interval
        follower.start()
        late = dataclasses.replace(make_cases(1, seed=5, start=200)[0], ingested_at=time.time())
        t0 = time.perf_counter()
        _write(a, idx_a, [late])
        while late.case_key not in set(idx_b.keys()):
            assert time.perf_counter() - t0 < 10.0, "the follower did not catch up"
            time.sleep(0.05)
        delay = time.perf_counter() - t0
        follower.stop()
        print(f"\nfollower caught up {delay:.2f} s after the write (interval 0.5 s)")
        assert _answers(idx_a, queries) == _answers(idx_b, queries)
    finally:
        a.drop_collection(PROFILE, VERSION)
        a.close()
        b.close()
