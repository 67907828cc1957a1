"""What the sync and the async client share: channel settings, auth metadata and request plans.

A *plan* is one logical call: the RPC, how to (re)build its request for each attempt, and how to
turn the response into a result. The two clients differ only in how they run a plan.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from lungsearch import __version__
from lungsearch._proto.v1 import gateway_pb2
from lungsearch.client import _requests as rq
from lungsearch.client._errors import InvalidArgument
from lungsearch.client._retry import RetryPolicy
from lungsearch.client._types import (
    ActivateResult,
    Case,
    Classification,
    ExplainResult,
    Filter,
    IngestResult,
    MatchExplanation,
    ModelInfo,
    ModelRef,
    SearchResult,
)

__all__ = ["ClientBase", "Plan", "DEFAULT_OPTIONS", "MAX_MESSAGE_BYTES"]

#: Default send/receive limit: room for a large radiograph in one message (series stream anyway).
MAX_MESSAGE_BYTES = 64 << 20

#: Channel options applied unless the caller overrides the same key. Keepalive pings only while
#: calls are in flight (idle pings get a channel GOAWAY'd by servers' ping policing).
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.primary_user_agent", f"lungsearch-sdk/{__version__}"),
)


@dataclass
class Plan:
    """One logical call. ``request`` is rebuilt by ``make_request()`` on every attempt (a stream
    iterator can be consumed only once)."""

    rpc: str
    make_request: Callable[[], Any]
    convert: Callable[[Any], Any]
    streaming: bool = False


def _is_loopback(target: str) -> bool:
    t = target.strip()
    if t.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if t.startswith(scheme):
            t = t[len(scheme) :]
            break
    if t.startswith("["):
        host = t[1:].split("]", 1)[0]
    else:
        host = t.rsplit(":", 1)[0] if t.count(":") == 1 else t
    return host in ("localhost", "::1") or host.startswith("127.")


def _read(path: str | os.PathLike | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class ClientBase:
    """Settings common to :class:`LungSearchClient` and :class:`AsyncLungSearchClient`."""

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
        if not isinstance(target, str) or not target.strip():
            raise ValueError("target must be 'host:port' (e.g. 'localhost:9000')")
        if timeout is None or not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds: gRPC has no default deadline")
        self.target = target.strip()
        self.timeout = float(timeout)
        self.retries = retries if retries is not None else RetryPolicy()
        self._credentials = self._make_credentials(tls, ca_file, cert_file, key_file)
        self.tls = self._credentials is not None
        merged = dict(DEFAULT_OPTIONS)
        merged.update(dict(options.items() if isinstance(options, Mapping) else (options or ())))
        self.options: tuple[tuple[str, Any], ...] = tuple(merged.items())
        md = [(str(k).lower(), v) for k, v in metadata]
        if token:
            token = token.strip()
            if not token or any(c in token for c in "\r\n"):
                raise ValueError("token must be a single line")
            if not self.tls and not _is_loopback(self.target):
                warnings.warn(
                    "sending a bearer token without TLS to a non-loopback target; pass tls=True or ca_file=",
                    stacklevel=3,
                )
            md.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(md)

    @staticmethod
    def _make_credentials(tls, ca_file, cert_file, key_file) -> grpc.ChannelCredentials | None:
        if isinstance(tls, grpc.ChannelCredentials):
            if ca_file or cert_file or key_file:
                raise ValueError("pass either ready credentials as tls= or ca_file/cert_file/key_file, not both")
            return tls
        if bool(cert_file) != bool(key_file):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if tls is False and (ca_file or cert_file):
            raise ValueError("tls=False contradicts ca_file/cert_file")
        if tls or ca_file or cert_file:
            # root_certificates=None means the system roots (grpc's bundled roots / GRPC_DEFAULT_SSL_ROOTS_FILE_PATH).
            return grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file), private_key=_read(key_file), certificate_chain=_read(cert_file)
            )
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, tls={self.tls}, timeout={self.timeout})"

    # ---- plans ----------------------------------------------------------------------------

    @staticmethod
    def _query_images(image: Any, images: Any, method: str) -> list[rq.Source]:
        if image is not None and images is not None:
            raise InvalidArgument("pass image= or images=, not both", method=method, field="images")
        return rq.sources(image if image is not None else images, method)

    def _ingest_plan(self, images, *, report, labels, source_id, model) -> Plan:
        srcs = rq.sources(images, "ingest")
        if not srcs:
            raise InvalidArgument("ingest needs at least one image", method="ingest", field="images")
        ref = ModelRef.parse(model).to_proto()
        if sum(s.size() for s in srcs) > rq.STREAM_THRESHOLD_BYTES:
            return self._stream_plan(srcs, report=report, labels=labels, source_id=source_id, ref=ref)
        request = rq.header(model=ref, report=report, labels=labels, source_id=source_id, images=srcs)
        return Plan("Ingest", lambda: request, IngestResult.from_proto)

    def _ingest_series_plan(self, folder_or_files, *, report, labels, source_id, model, chunk_bytes) -> Plan:
        srcs = rq.series_sources(folder_or_files, "ingest_series")
        return self._stream_plan(
            srcs,
            report=report,
            labels=labels,
            source_id=source_id,
            ref=ModelRef.parse(model).to_proto(),
            chunk_bytes=chunk_bytes,
        )

    def _stream_plan(self, srcs, *, report, labels, source_id, ref, chunk_bytes: int = rq.CHUNK_BYTES) -> Plan:
        if not 0 < chunk_bytes <= rq.CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in (0, {rq.CHUNK_BYTES}]")
        head = rq.header(model=ref, report=report, labels=labels, source_id=source_id)

        def messages() -> Iterator[gateway_pb2.IngestStreamRequest]:
            return rq.stream_messages(head, srcs, chunk_bytes)

        return Plan("IngestStream", messages, IngestResult.from_proto, streaming=True)

    def _search_plan(self, *, image, images, report, top_k, filters, model) -> Plan:
        srcs = self._query_images(image, images, "search")
        if not srcs and not report:
            raise InvalidArgument("search needs an image, a report, or both", method="search", field="images")
        if not isinstance(top_k, int) or top_k < 1:
            raise InvalidArgument("top_k must be a positive integer", method="search", field="top_k")
        flt = Filter.coerce(filters)
        request = gateway_pb2.SearchRequest(
            model=ModelRef.parse(model).to_proto(),
            images=[s.to_proto() for s in srcs],
            report=rq.report_proto(report),
            top_k=top_k,
            filter=flt.to_proto() if flt else None,
        )
        return Plan("Search", lambda: request, SearchResult.from_proto)

    def _classify_plan(self, *, image, images, report, knn_k, model) -> Plan:
        srcs = self._query_images(image, images, "classify")
        if not srcs and not report:
            raise InvalidArgument("classify needs an image, a report, or both", method="classify", field="images")
        if not isinstance(knn_k, int) or knn_k < 1:
            raise InvalidArgument("knn_k must be a positive integer", method="classify", field="knn_k")
        request = gateway_pb2.ClassifyRequest(
            model=ModelRef.parse(model).to_proto(),
            images=[s.to_proto() for s in srcs],
            report=rq.report_proto(report),
            knn_k=knn_k,
        )
        return Plan("Classify", lambda: request, Classification.from_proto)

    def _explain_plan(self, *, image, images, report, label, model) -> Plan:
        srcs = self._query_images(image, images, "explain")
        if not srcs:
            raise InvalidArgument("explain needs an image", method="explain", field="images")
        request = gateway_pb2.ExplainRequest(
            model=ModelRef.parse(model).to_proto(),
            images=[s.to_proto() for s in srcs],
            report=rq.report_proto(report),
            label=label or "",
        )
        return Plan("Explain", lambda: request, ExplainResult.from_proto)

    def _explain_match_plan(self, case_key, *, image, images, report, label, model) -> Plan:
        srcs = self._query_images(image, images, "explain_match")
        if not srcs and not report:
            raise InvalidArgument(
                "explain_match needs the query: an image, a report, or both", method="explain_match", field="images"
            )
        request = gateway_pb2.ExplainMatchRequest(
            model=ModelRef.parse(model).to_proto(),
            images=[s.to_proto() for s in srcs],
            report=rq.report_proto(report),
            case_key=self._key(case_key, "explain_match"),
            label=label or "",
        )
        return Plan("ExplainMatch", lambda: request, MatchExplanation.from_proto)

    @staticmethod
    def _key(case_key: str, method: str) -> str:
        if not isinstance(case_key, str) or not case_key.strip():
            raise InvalidArgument("case_key must be a non-empty string", method=method, field="case_key")
        return case_key.strip()

    def _get_case_plan(self, case_key, *, model) -> Plan:
        request = gateway_pb2.GetCaseRequest(
            model=ModelRef.parse(model).to_proto(), case_key=self._key(case_key, "get_case")
        )
        return Plan("GetCase", lambda: request, lambda r: Case.from_proto(r.case))

    def _delete_case_plan(self, case_key, *, model) -> Plan:
        request = gateway_pb2.DeleteCaseRequest(
            model=ModelRef.parse(model).to_proto(), case_key=self._key(case_key, "delete_case")
        )
        return Plan("DeleteCase", lambda: request, lambda r: bool(r.deleted))

    def _models_plan(self, *, profile) -> Plan:
        request = gateway_pb2.ListModelsRequest(profile=profile or "")
        return Plan("ListModels", lambda: request, lambda r: [ModelInfo.from_proto(m) for m in r.models])

    def _activate_plan(self, profile, version) -> Plan:
        ref = ModelRef.parse(profile if version is None else ModelRef(profile, version))
        if not ref.profile or not ref.version:
            raise InvalidArgument(
                "activate_model needs a profile and a version ('profile@version')",
                method="activate_model",
                field="model",
            )
        request = gateway_pb2.ActivateModelRequest(model=ref.to_proto())
        return Plan("ActivateModel", lambda: request, ActivateResult.from_proto)
