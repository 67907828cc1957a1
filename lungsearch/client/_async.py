"""The asyncio client (``grpc.aio``), method for method the same as :class:`LungSearchClient`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from lungsearch._proto.v1 import gateway_pb2_grpc
from lungsearch.client import _requests as rq
from lungsearch.client._base import ClientBase, Plan
from lungsearch.client._errors import DeadlineExceeded, LungSearchError, NotFound, error_from_rpc
from lungsearch.client._retry import Attempts, RetryPolicy, pushback_ms
from lungsearch.client._types import (
    ActivateResult,
    Case,
    Classification,
    ExplainResult,
    Filter,
    HealthStatus,
    IngestResult,
    MatchExplanation,
    ModelInfo,
    ModelRef,
    SearchResult,
)

__all__ = ["AsyncLungSearchClient"]

_END = object()


def _trailing(exc: grpc.RpcError):
    try:
        return exc.trailing_metadata()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return None


async def _offloaded(make) -> AsyncIterator[Any]:
    """Drive a (file-reading) sync iterator from a worker thread so the event loop never blocks on disk."""
    it = make()
    while True:
        item = await asyncio.to_thread(next, it, _END)
        if item is _END:
            return
        yield item


class AsyncLungSearchClient(ClientBase):
    """Asyncio client of the lungsearch gRPC API; the same arguments and methods as
    :class:`LungSearchClient`, as coroutines. Create it inside a running event loop.

    Files are read in a worker thread (``asyncio.to_thread``), so ingesting a large series does not
    stall the loop.

    Example:
        >>> import asyncio
        >>> from lungsearch.client import AsyncLungSearchClient
        >>> async def main():
        ...     async with AsyncLungSearchClient("localhost:9000", timeout=10) as client:
        ...         results = await asyncio.gather(*(client.search(image=p, top_k=5) for p in ["a.png", "b.png"]))
        ...         return [r.hits[0].case.case_key for r in results]
        >>> asyncio.run(main())  # doctest: +SKIP
    """

    def __init__(
        self,
        target: str,
        *,
        tls: bool | grpc.ChannelCredentials | None = None,
        ca_file: str | os.PathLike | None = None,
        cert_file: str | os.PathLike | None = None,
        key_file: str | os.PathLike | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        retries: RetryPolicy | None = None,
        options: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(
            target,
            tls=tls,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            token=token,
            timeout=timeout,
            retries=retries,
            options=options,
            metadata=metadata,
        )
        if self._credentials is not None:
            self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self.options)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=self.options)
        self._stub = gateway_pb2_grpc.LungSearchStub(self._channel)
        self._health = self._channel.unary_unary(rq.HEALTH_CHECK_METHOD)
        self._serve_healthz = self._channel.unary_unary(rq.SERVE_HEALTHZ_METHOD)

    async def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> "AsyncLungSearchClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, plan: Plan, timeout: float | None, callable_=None) -> Any:
        attempts = Attempts(self.retries, self.timeout if timeout is None else timeout)
        method = callable_ or getattr(self._stub, plan.rpc)
        while True:
            attempts.attempt += 1
            remaining = attempts.remaining()
            if remaining <= 0:
                raise DeadlineExceeded("deadline passed before the call could be made", method=plan.rpc)
            request = _offloaded(plan.make_request) if plan.streaming else plan.make_request()
            try:
                response = await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, plan.rpc)
                delay = attempts.next_delay(error, pushback_ms(_trailing(exc)))
                if delay is None:
                    raise error from exc
                await asyncio.sleep(delay)
                continue
            return plan.convert(response)

    async def ingest(
        self,
        images: rq.ImageLike | Sequence[rq.ImageLike],
        *,
        report: str | Mapping[str, str] | None = None,
        labels: Sequence[str] | None = None,
        source_id: str | None = None,
        model: str | ModelRef | None = None,
        timeout: float | None = None,
    ) -> IngestResult:
        """See :meth:`LungSearchClient.ingest`."""
        plan = await asyncio.to_thread(
            self._ingest_plan, images, report=report, labels=labels, source_id=source_id, model=model
        )
        return await self._run(plan, timeout)

    async def ingest_series(
        self,
        folder_or_files: str | os.PathLike | Sequence[rq.ImageLike],
        *,
        report: str | Mapping[str, str] | None = None,
        labels: Sequence[str] | None = None,
        source_id: str | None = None,
        model: str | ModelRef | None = None,
        timeout: float | None = None,
        chunk_bytes: int = rq.CHUNK_BYTES,
    ) -> IngestResult:
        """See :meth:`LungSearchClient.ingest_series`."""
        plan = await asyncio.to_thread(
            self._ingest_series_plan,
            folder_or_files,
            report=report,
            labels=labels,
            source_id=source_id,
            model=model,
            chunk_bytes=chunk_bytes,
        )
        return await self._run(plan, timeout)

    async def search(
        self,
        *,
        image: rq.ImageLike | None = None,
        images: Sequence[rq.ImageLike] | None = None,
        report: str | Mapping[str, str] | None = None,
        top_k: int = 10,
        filters: Filter | Mapping[str, Any] | None = None,
        model: str | ModelRef | None = None,
        timeout: float | None = None,
    ) -> SearchResult:
        """See :meth:`LungSearchClient.search`."""
        plan = await asyncio.to_thread(
            self._search_plan, image=image, images=images, report=report, top_k=top_k, filters=filters, model=model
        )
        return await self._run(plan, timeout)

    async def classify(
        self,
        *,
        image: rq.ImageLike | None = None,
        images: Sequence[rq.ImageLike] | None = None,
        report: str | Mapping[str, str] | None = None,
        knn_k: int = 10,
        model: str | ModelRef | None = None,
        timeout: float | None = None,
    ) -> Classification:
        """See :meth:`LungSearchClient.classify`."""
        plan = await asyncio.to_thread(
            self._classify_plan, image=image, images=images, report=report, knn_k=knn_k, model=model
        )
        return await self._run(plan, timeout)

    async def explain(
        self,
        *,
        image: rq.ImageLike | None = None,
        images: Sequence[rq.ImageLike] | None = None,
        report: str | Mapping[str, str] | None = None,
        label: str | None = None,
        model: str | ModelRef | None = None,
        timeout: float | None = None,
    ) -> ExplainResult:
        """See :meth:`LungSearchClient.explain`."""
        plan = await asyncio.to_thread(
            self._explain_plan, image=image, images=images, report=report, label=label, model=model
        )
        return await self._run(plan, timeout)

    async def explain_match(
        self,
        case_key: str,
        *,
        image: rq.ImageLike | None = None,
        images: Sequence[rq.ImageLike] | None = None,
        report: str | Mapping[str, str] | None = None,
        label: str | None = None,
        model: str | ModelRef | None = None,
        timeout: float | None = None,
    ) -> MatchExplanation:
        """See :meth:`LungSearchClient.explain_match`."""
        plan = await asyncio.to_thread(
            self._explain_match_plan, case_key, image=image, images=images, report=report, label=label, model=model
        )
        return await self._run(plan, timeout)

    async def get_case(
        self, case_key: str, *, model: str | ModelRef | None = None, timeout: float | None = None
    ) -> Case:
        """See :meth:`LungSearchClient.get_case`."""
        return await self._run(self._get_case_plan(case_key, model=model), timeout)

    async def delete_case(
        self, case_key: str, *, model: str | ModelRef | None = None, timeout: float | None = None
    ) -> bool:
        """See :meth:`LungSearchClient.delete_case`."""
        return await self._run(self._delete_case_plan(case_key, model=model), timeout)

    async def models(self, *, profile: str | None = None, timeout: float | None = None) -> list[ModelInfo]:
        """See :meth:`LungSearchClient.models`."""
        return await self._run(self._models_plan(profile=profile), timeout)

    async def activate_model(
        self, profile: str, version: str | None = None, *, timeout: float | None = None
    ) -> ActivateResult:
        """See :meth:`LungSearchClient.activate_model`."""
        return await self._run(self._activate_plan(profile, version), timeout)

    async def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """See :meth:`LungSearchClient.health`."""
        budget = self.timeout if timeout is None else timeout
        start = time.monotonic()
        plan = Plan(
            "Health",
            lambda: rq.health_request(service),
            lambda raw: HealthStatus(rq.parse_health_response(raw), service=service),
        )
        try:
            return await self._run(plan, budget, self._health)
        except NotFound:
            return HealthStatus("SERVICE_UNKNOWN", service=service)
        except LungSearchError as exc:
            if exc.status != grpc.StatusCode.UNIMPLEMENTED:
                raise
        serve = Plan(
            "Healthz",
            lambda: b"",
            lambda raw: HealthStatus(
                "SERVING", service=service, source="ray.serve", message=rq.parse_serve_healthz(raw)
            ),
        )
        try:
            return await self._run(serve, max(budget - (time.monotonic() - start), 1e-3), self._serve_healthz)
        except LungSearchError as exc:
            if exc.status == grpc.StatusCode.UNAVAILABLE and exc.details:
                return HealthStatus("NOT_SERVING", service=service, source="ray.serve", message=exc.details)
            raise
