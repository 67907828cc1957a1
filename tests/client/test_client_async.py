"""AsyncLungSearchClient (grpc.aio) against a real local gRPC server: the same methods and guarantees."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from lungsearch.client import (
    AsyncLungSearchClient,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.02, max_backoff=0.05, seed=0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_every_method(server, servicer, png, dicom, tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.dcm").write_bytes(dicom(bytes([i]) * 1_200_000))

    async def main():
        async with AsyncLungSearchClient(server.target, timeout=5, retries=FAST) as c:
            assert (await c.health()).serving
            a = await c.ingest(png(seed=1), report="left effusion", labels=["Effusion"])
            b = await c.ingest(png(seed=2), report="clear lungs", labels=["Normal"])
            s = await c.ingest_series(tmp_path, labels=["ggo"], model="ct-ild")
            assert servicer.store[s.case_key].images == [(tmp_path / f"{i}.dcm").read_bytes() for i in range(3)]
            assert max(servicer.chunk_sizes) <= 1 << 20
            hits = await c.search(report="effusion", filters={"modality": "cxr"}, top_k=5)
            assert hits[0].case.case_key == a.case_key and {h.case.case_key for h in hits} == {a.case_key, b.case_key}
            cls = await c.classify(image=png(seed=1), knn_k=1)
            assert cls.top_label == "Effusion"
            exp = await c.explain(image=png(seed=1))
            assert exp.heatmap_png.startswith(b"\x89PNG")
            assert (await c.get_case(a.case_key)).labels == ("Effusion",)
            assert await c.delete_case(a.case_key) is True
            with pytest.raises(NotFound):
                await c.get_case(a.case_key)
            assert len(await c.models()) == 3
            assert str((await c.activate_model("cxr-report", "v2")).live) == "cxr-report@v2"
            # Concurrency on one channel.
            many = await asyncio.gather(*(c.search(report=f"query {i}") for i in range(8)))
            assert all(len(r) == 2 for r in many)
            with pytest.raises(InvalidArgument):
                await c.ingest(b"garbage")

    run(main())


def test_deadline_retry_and_auth(server, servicer):
    async def main():
        async with AsyncLungSearchClient(server.target, timeout=5, retries=FAST) as c:
            await c.health()
            servicer.behaviour.failures = [(grpc.StatusCode.UNAVAILABLE, True, None)] * 2
            await c.models()
            assert servicer.calls["ListModels"] == 3
            servicer.behaviour.failures = [(grpc.StatusCode.INVALID_ARGUMENT, None, None)]
            with pytest.raises(InvalidArgument):
                await c.models()
            assert servicer.calls["ListModels"] == 4

            servicer.behaviour.delay = 5.0
            start = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await c.search(report="slow", timeout=0.8)
            assert time.monotonic() - start <= 0.8 * 1.1
            servicer.behaviour.delay = 0.0

            servicer.behaviour.failures = [(grpc.StatusCode.UNAVAILABLE, True, None)] * 100
            start = time.monotonic()
            with pytest.raises(Unavailable):
                await c.models(timeout=0.8)
            assert time.monotonic() - start <= 0.8 * 1.1
            servicer.behaviour.failures = []

        servicer.behaviour.token = "tok"
        async with AsyncLungSearchClient(server.target, timeout=5) as anon:
            with pytest.raises(Unauthenticated):
                await anon.models()
        async with AsyncLungSearchClient(server.target, timeout=5, token="tok") as ok:
            assert await ok.models()

    run(main())
