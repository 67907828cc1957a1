"""The blocking client."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

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

__all__ = ["LungSearchClient"]


def _trailing(exc: grpc.RpcError):
    try:
        return exc.trailing_metadata()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - channel-level errors may carry no call state
        return None


class LungSearchClient(ClientBase):
    """Blocking client of the lungsearch gRPC API (thread-safe: share one per process).

    Args:
        target: ``"host:port"`` of the gateway (the Ray Serve gRPC proxy or the TLS proxy before it).
        tls: None/False for plaintext (local development), True for TLS with the system roots (or
            ``ca_file``), or ready ``grpc.ChannelCredentials``.
        ca_file: PEM CA bundle to verify the server (implies TLS).
        cert_file, key_file: PEM client certificate and key, for servers that require mTLS.
        token: bearer token, sent as ``authorization: Bearer <token>`` on every call.
        timeout: default deadline of each call in seconds, retries included (each method also
            takes ``timeout=``). gRPC itself has no default deadline; this client always sets one.
        retries: :class:`RetryPolicy` (default: 4 attempts, backoff from 0.1 s with full jitter,
            on UNAVAILABLE and retriable RESOURCE_EXHAUSTED only).
        options: extra gRPC channel options (a mapping or ``(key, value)`` pairs) overriding the
            defaults in ``lungsearch.client.DEFAULT_OPTIONS`` (64 MiB messages, keepalive).
        metadata: extra ``(key, value)`` metadata on every call, e.g. ``[("application", "lungsearch")]``
            to pick the application on a Ray Serve cluster running several.

    Example:
        >>> from lungsearch.client import LungSearchClient
        >>> with LungSearchClient("localhost:9000", timeout=10) as client:  # doctest: +SKIP
        ...     key = client.ingest("cxr.png", report="No acute findings.", labels=["Normal"]).case_key
        ...     for hit in client.search(image="query.png", top_k=5, filters={"modality": "cxr"}):
        ...         print(hit.rank, round(hit.score, 3), hit.case.labels)
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
            self._channel = grpc.secure_channel(self.target, self._credentials, options=self.options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=self.options)
        self._stub = gateway_pb2_grpc.LungSearchStub(self._channel)
        # Raw (bytes in, bytes out) callables: the SDK does not depend on grpcio-health-checking.
        self._health = self._channel.unary_unary(rq.HEALTH_CHECK_METHOD)
        self._serve_healthz = self._channel.unary_unary(rq.SERVE_HEALTHZ_METHOD)

    # ---- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        self._channel.close()

    def __enter__(self) -> "LungSearchClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport ------------------------------------------------------------------------------

    def _run(self, plan: Plan, timeout: float | None, callable_=None) -> Any:
        attempts = Attempts(self.retries, self.timeout if timeout is None else timeout)
        method = callable_ or getattr(self._stub, plan.rpc)
        while True:
            attempts.attempt += 1
            remaining = attempts.remaining()
            if remaining <= 0:
                raise DeadlineExceeded("deadline passed before the call could be made", method=plan.rpc)
            try:
                response = method(plan.make_request(), timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, plan.rpc)
                delay = attempts.next_delay(error, pushback_ms(_trailing(exc)))
                if delay is None:
                    raise error from exc
                time.sleep(delay)
                continue
            return plan.convert(response)

    # ---- API ------------------------------------------------------------------------------------

    def ingest(
        self,
        images: rq.ImageLike | Sequence[rq.ImageLike],
        *,
        report: str | Mapping[str, str] | None = None,
        labels: Sequence[str] | None = None,
        source_id: str | None = None,
        model: str | ModelRef | None = None,
        timeout: float | None = None,
    ) -> IngestResult:
        """Store one study (one image, or the images of one study) with its report and labels.

        Idempotent by case key: ingesting the same study again updates it (``created`` is False),
        which is why it is safe to retry. Payloads above 3 MiB go over the streaming RPC
        automatically.

        Args:
            images: a path, bytes, a binary file object, an :class:`Image`, or a list of them.
            report: the report text, or a mapping with ``text``/``findings``/``impression``.
            labels: known diagnoses of the case.
            source_id: your identifier of the study (e.g. accession number) for PNG/JPEG images that
                carry none; hashed by the server, never stored raw.
            model: ``"profile"`` or ``"profile@version"`` (default: the server's default profile).
            timeout: deadline in seconds for the whole call including retries (default: the client's).

        Returns:
            :class:`IngestResult` with the case key.

        Raises:
            InvalidArgument: the image or report was rejected (``error.detail.reason`` says why).
            ResourceExhausted: a size limit was exceeded.
            Unauthenticated, PermissionDenied, Unavailable, DeadlineExceeded: see the module doc.

        Example:
            >>> client.ingest("case1.dcm", report="Right lower lobe opacity.", labels=["Opacity"])  # doctest: +SKIP
            IngestResult(case_key='3f1c…', created=True, model=ModelRef(profile='cxr-report', version='…'))
        """
        plan = self._ingest_plan(images, report=report, labels=labels, source_id=source_id, model=model)
        return self._run(plan, timeout)

    def ingest_series(
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
        """Store a DICOM series (a CT study) by streaming its files: a header, then ≤ 1 MiB chunks.

        Args:
            folder_or_files: a folder (its image files, by name; hidden files, DICOMDIR and
                .txt/.json sidecars are skipped) or a list of paths/bytes.
            report, labels, source_id, model, timeout: as for :meth:`ingest`.
            chunk_bytes: chunk size, at most 1 MiB.

        Example:
            >>> client.ingest_series("studies/ct-0001/", labels=["ggo"], model="ct-ild")  # doctest: +SKIP
        """
        plan = self._ingest_series_plan(
            folder_or_files, report=report, labels=labels, source_id=source_id, model=model, chunk_bytes=chunk_bytes
        )
        return self._run(plan, timeout)

    def search(
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
        """The stored cases most similar to a query image, a query report, or both.

        Args:
            image: one query image (path, bytes, file or :class:`Image`); or ``images`` for a series.
            report: query report text (text-to-image search on profiles with a text encoder).
            top_k: number of hits.
            filters: a :class:`Filter` or a mapping such as ``{"modality": "ct", "labels_any": ["ggo"]}``.
            model, timeout: as for :meth:`ingest`.

        Returns:
            :class:`SearchResult`; iterate it for :class:`SearchHit` objects, best first.

        Example:
            >>> hits = client.search(report="bilateral pleural effusion", top_k=3)  # doctest: +SKIP
            >>> [h.case.labels for h in hits]  # doctest: +SKIP
        """
        return self._run(
            self._search_plan(image=image, images=images, report=report, top_k=top_k, filters=filters, model=model),
            timeout,
        )

    def classify(
        self,
        *,
        image: rq.ImageLike | None = None,
        images: Sequence[rq.ImageLike] | None = None,
        report: str | Mapping[str, str] | None = None,
        knn_k: int = 10,
        model: str | ModelRef | None = None,
        timeout: float | None = None,
    ) -> Classification:
        """Class probabilities from the profile's head plus the label vote of the ``knn_k`` nearest cases.

        Example:
            >>> c = client.classify(image="cxr.png")  # doctest: +SKIP
            >>> c.top_label, c.probabilities[c.top_label]  # doctest: +SKIP
        """
        return self._run(
            self._classify_plan(image=image, images=images, report=report, knn_k=knn_k, model=model), timeout
        )

    def explain(
        self,
        *,
        image: rq.ImageLike | None = None,
        images: Sequence[rq.ImageLike] | None = None,
        report: str | Mapping[str, str] | None = None,
        label: str | None = None,
        model: str | ModelRef | None = None,
        timeout: float | None = None,
    ) -> ExplainResult:
        """A Grad-CAM heat map (PNG bytes) for ``label`` (default: the top predicted label).

        Example:
            >>> client.explain(image="cxr.png").save("heatmap.png")  # doctest: +SKIP
        """
        return self._run(
            self._explain_plan(image=image, images=images, report=report, label=label, model=model), timeout
        )

    def explain_match(
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
        """Why the stored case ``case_key`` matches a query: Grad-CAM heat maps on the query and on the
        case for a label they share, the shared labels, and the report phrases both excerpts contain.

        Args:
            case_key: a retrieved case (``hit.case.case_key``).
            image, images, report: the query, as given to :meth:`search`.
            label: the label to explain (default: the first shared label, else the case's first label
                the model knows).
            model, timeout: as for :meth:`ingest`.

        Raises:
            NotFound: unknown case key. InvalidArgument: no query, or a label the model does not know.

        Example:
            >>> hit = client.search(image="query.png", top_k=1)[0]  # doctest: +SKIP
            >>> why = client.explain_match(hit.case.case_key, image="query.png")  # doctest: +SKIP
            >>> why.label, why.shared_labels, [p.phrase for p in why.shared_phrases]  # doctest: +SKIP
        """
        return self._run(
            self._explain_match_plan(case_key, image=image, images=images, report=report, label=label, model=model),
            timeout,
        )

    def get_case(self, case_key: str, *, model: str | ModelRef | None = None, timeout: float | None = None) -> Case:
        """The stored case with this key. Raises :class:`NotFound` for an unknown key."""
        return self._run(self._get_case_plan(case_key, model=model), timeout)

    def delete_case(self, case_key: str, *, model: str | ModelRef | None = None, timeout: float | None = None) -> bool:
        """Delete a case; True if it existed. Idempotent (deleting twice returns False the second time)."""
        return self._run(self._delete_case_plan(case_key, model=model), timeout)

    def models(self, *, profile: str | None = None, timeout: float | None = None) -> list[ModelInfo]:
        """The models the server knows (all profiles, or one), with their live flag and metrics."""
        return self._run(self._models_plan(profile=profile), timeout)

    def activate_model(
        self, profile: str, version: str | None = None, *, timeout: float | None = None
    ) -> ActivateResult:
        """Make ``version`` the live version of ``profile`` (admin). ``profile`` may be ``"profile@version"``."""
        return self._run(self._activate_plan(profile, version), timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> HealthStatus:
        """Ask the server whether it is serving.

        Uses the standard ``grpc.health.v1.Health/Check`` (spoken on the wire by the SDK itself, so
        grpcio-health-checking is not needed); if the server does not implement it, falls back to
        the Ray Serve proxy's ``RayServeAPIService/Healthz``. A reachable but unhealthy server gives
        a status with ``serving == False``; an unreachable one raises :class:`Unavailable`.

        Args:
            service: fully-qualified service name (e.g. ``"lungsearch.v1.LungSearch"``); "" = the server.
        """
        budget = self.timeout if timeout is None else timeout
        start = time.monotonic()
        plan = Plan(
            "Health",
            lambda: rq.health_request(service),
            lambda raw: HealthStatus(rq.parse_health_response(raw), service=service),
        )
        try:
            return self._run(plan, budget, self._health)
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
            # One deadline for both questions: the fallback gets only what is left.
            return self._run(serve, max(budget - (time.monotonic() - start), 1e-3), self._serve_healthz)
        except LungSearchError as exc:
            if exc.status == grpc.StatusCode.UNAVAILABLE and exc.details:
                # The proxy answered: it is up but reports itself unhealthy (the message says why).
                return HealthStatus("NOT_SERVING", service=service, source="ray.serve", message=exc.details)
            raise
