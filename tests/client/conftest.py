"""A real gRPC server on a free loopback port running a small in-memory LungSearch servicer.

The servicer is deliberately simple but honest: it stores what it is sent, reassembles streamed
chunks (and checks their order and size), filters and ranks deterministically, answers with
real PNG bytes, and can be told to be slow, to fail the next calls with a given status, or to
demand a bearer token. It records every call so tests can count attempts.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from lungsearch._proto.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
MAX_CHUNK = 1 << 20


def png_bytes(width: int = 8, height: int = 8, seed: int = 0, color: bool = False) -> bytes:
    """A real, decodable 8-bit PNG (gray or RGB) made with zlib only."""
    channels = 3 if color else 1
    raw = b"".join(
        b"\x00" + bytes((seed * 31 + x * 7 + y * 13 + c) % 256 for x in range(width) for c in range(channels))
        for y in range(height)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if color else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def fake_dicom(payload: bytes) -> bytes:
    """Bytes with the DICOM part-10 preamble (enough for format sniffing; this servicer decodes nothing)."""
    return b"\x00" * 128 + b"DICM" + payload


def _fmt(data: bytes) -> int:
    if data[128:132] == b"DICM":
        return common_pb2.IMAGE_FORMAT_DICOM
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return common_pb2.IMAGE_FORMAT_PNG
    if data[:3] == b"\xff\xd8\xff":
        return common_pb2.IMAGE_FORMAT_JPEG
    return common_pb2.IMAGE_FORMAT_UNSPECIFIED


@dataclass
class Stored:
    case: common_pb2.Case
    images: list[bytes]
    report: str


@dataclass
class Behaviour:
    delay: float = 0.0
    # Statuses to fail the next calls with, in order: (code, retriable or None for no ErrorDetail, pushback_ms).
    failures: list[tuple[grpc.StatusCode, bool | None, int | None]] = field(default_factory=list)
    token: str | None = None


class FakeLungSearch(gateway_pb2_grpc.LungSearchServicer):
    TARGETS = ("Normal", "Effusion", "Opacity")

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.calls: Counter[str] = Counter()
        self.call_times: dict[str, list[float]] = {}
        self.metadata: list[dict[str, str]] = []
        self.chunk_sizes: list[int] = []
        self.store: dict[str, Stored] = {}
        self.models = {"cxr-report": ["v1", "v2"], "ct-ild": ["v1"]}
        self.live = {"cxr-report": "v1", "ct-ild": "v1"}
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    # ---- plumbing ----
    def _abort(
        self,
        context,
        code: grpc.StatusCode,
        message: str,
        reason: int,
        *,
        retriable: bool = False,
        field: str = "",
        detail_code: str = "",
        pushback: int | None = None,
    ):
        md = [
            (
                "lungsearch-error-bin",
                common_pb2.ErrorDetail(
                    reason=reason, message=message, retriable=retriable, field=field, code=detail_code
                ).SerializeToString(),
            )
        ]
        if pushback is not None:
            md.append(("grpc-retry-pushback-ms", str(pushback)))
        context.set_trailing_metadata(tuple(md))
        context.abort(code, message)

    def _enter(self, method: str, context) -> None:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.calls[method] += 1
            self.call_times.setdefault(method, []).append(time.monotonic())
            self.metadata.append(md)
            failure = self.behaviour.failures.pop(0) if self.behaviour.failures else None
        if self.behaviour.token is not None:
            auth = md.get("authorization", "")
            if auth != f"Bearer {self.behaviour.token}":
                self._abort(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing bearer token" if not auth else "invalid bearer token",
                    common_pb2.ERROR_REASON_UNAUTHENTICATED,
                )
        if failure is not None:
            code, retriable, pushback = failure
            if retriable is None:
                if pushback is not None:
                    context.set_trailing_metadata((("grpc-retry-pushback-ms", str(pushback)),))
                context.abort(code, f"injected {code.name}")
            reason = (
                common_pb2.ERROR_REASON_OVERLOADED
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retriable
                else (
                    common_pb2.ERROR_REASON_LIMIT_EXCEEDED
                    if code == grpc.StatusCode.RESOURCE_EXHAUSTED
                    else common_pb2.ERROR_REASON_STORE_UNAVAILABLE
                    if code == grpc.StatusCode.UNAVAILABLE
                    else common_pb2.ERROR_REASON_INVALID_REQUEST
                )
            )
            self._abort(context, code, f"injected {code.name}", reason, retriable=retriable, pushback=pushback)
        if self.behaviour.delay:
            self.stopping.wait(self.behaviour.delay)

    def _model(self, ref: common_pb2.ModelRef, context) -> common_pb2.ModelRef:
        profile = ref.profile or "cxr-report"
        if profile not in self.models or (ref.version and ref.version not in self.models[profile]):
            self._abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                "unknown model",
                common_pb2.ERROR_REASON_MODEL_NOT_FOUND,
                field="model",
            )
        return common_pb2.ModelRef(profile=profile, version=ref.version or self.live[profile])

    def _check_images(self, images: list[bytes], context) -> None:
        for i, data in enumerate(images):
            if _fmt(data) == common_pb2.IMAGE_FORMAT_UNSPECIFIED:
                self._abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "image is not DICOM, PNG or JPEG",
                    common_pb2.ERROR_REASON_INVALID_IMAGE,
                    field=f"images[{i}]",
                    detail_code="unknown_format",
                )

    def _store(self, head: gateway_pb2.IngestRequest, images: list[bytes], context) -> gateway_pb2.IngestResponse:
        if not images:
            self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "no images",
                common_pb2.ERROR_REASON_INVALID_REQUEST,
                field="images",
            )
        self._check_images(images, context)
        model = self._model(head.model, context)
        key = hashlib.sha256(
            b"".join(hashlib.sha256(i).digest() for i in images) + head.source_id.encode()
        ).hexdigest()[:32]
        modality = (
            common_pb2.MODALITY_CT if len(images) > 1 or images[0][128:132] == b"DICM" else common_pb2.MODALITY_CXR
        )
        now = timestamp_pb2.Timestamp(seconds=1_700_000_000 + len(self.store))
        case = common_pb2.Case(
            case_key=key,
            modality=modality,
            view=common_pb2.VIEW_AXIAL if modality == common_pb2.MODALITY_CT else common_pb2.VIEW_PA,
            labels=list(head.labels),
            report_excerpt=head.report.text[:80],
            model=model,
            ingested_at=now,
            num_images=len(images),
        )
        with self.lock:
            created = key not in self.store
            self.store[key] = Stored(case, images, head.report.text)
        return gateway_pb2.IngestResponse(case_key=key, created=created, model=model)

    # ---- RPCs ----
    def Ingest(self, request, context):
        self._enter("Ingest", context)
        return self._store(request, [i.data for i in request.images], context)

    def IngestStream(self, request_iterator, context):
        self._enter("IngestStream", context)
        it = iter(request_iterator)
        first = next(it, None)
        if first is None or first.WhichOneof("part") != "header" or first.header.images:
            self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message must be a header without images",
                common_pb2.ERROR_REASON_INVALID_REQUEST,
            )
        parts: list[bytearray] = []
        closed: list[bool] = []
        for msg in it:
            if msg.WhichOneof("part") != "chunk":
                self._abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a second header",
                    common_pb2.ERROR_REASON_INVALID_REQUEST,
                )
            ch = msg.chunk
            self.chunk_sizes.append(len(ch.data))
            if len(ch.data) > MAX_CHUNK:
                self._abort(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "chunk over 1 MiB",
                    common_pb2.ERROR_REASON_LIMIT_EXCEEDED,
                )
            if ch.image_index == len(parts):  # a new image starts; earlier ones must be closed
                if closed and not closed[-1]:
                    self._abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "image not finished",
                        common_pb2.ERROR_REASON_INVALID_REQUEST,
                    )
                parts.append(bytearray())
                closed.append(False)
            elif ch.image_index != len(parts) - 1 or closed[-1]:
                self._abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "chunks out of order",
                    common_pb2.ERROR_REASON_INVALID_REQUEST,
                )
            parts[-1] += ch.data
            closed[-1] = ch.last
        if closed and not closed[-1]:
            self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "stream ended inside an image",
                common_pb2.ERROR_REASON_INVALID_REQUEST,
            )
        return self._store(first.header, [bytes(p) for p in parts], context)

    def _similar(self, request, context):
        model = self._model(request.model, context)
        query_imgs = [i.data for i in request.images]
        self._check_images(query_imgs, context)
        words = set(request.report.text.lower().split())
        scored = []
        for key, st in sorted(self.store.items()):
            if query_imgs:
                same = any(q in st.images for q in query_imgs)
                score = 1.0 if same else 0.9 / (1.0 + abs(len(query_imgs[0]) - len(st.images[0])) / 1000.0)
            else:
                other = set(st.report.lower().split())
                score = len(words & other) / max(len(words | other), 1)
            scored.append((round(score, 6), key))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return model, scored

    def Search(self, request, context):
        self._enter("Search", context)
        model, scored = self._similar(request, context)
        f = request.filter
        hits = []
        for score, key in scored:
            case = self.store[key].case
            labels = set(case.labels)
            if f.modality and case.modality != f.modality or f.view and case.view != f.view:
                continue
            if (
                f.labels_any
                and not labels & set(f.labels_any)
                or not set(f.labels_all) <= labels
                or labels & set(f.labels_none)
            ):
                continue
            hits.append(
                gateway_pb2.SearchHit(
                    case=case,
                    score=score,
                    rank=len(hits) + 1,
                    hamming_distance=len(hits) if model.profile == "cxr-hash" else -1,
                )
            )
            if len(hits) == (request.top_k or 10):
                break
        return gateway_pb2.SearchResponse(model=model, hits=hits)

    def Classify(self, request, context):
        self._enter("Classify", context)
        model, scored = self._similar(request, context)
        votes: Counter[str] = Counter()
        k = request.knn_k or 10
        for _, key in scored[:k]:
            votes.update(self.store[key].case.labels)
        n = sum(votes.values()) or 1
        raw = [1.0 + votes[t] for t in self.TARGETS]
        probs = [r / sum(raw) for r in raw]
        top = self.TARGETS[max(range(len(probs)), key=probs.__getitem__)]
        return gateway_pb2.ClassifyResponse(
            model=model,
            probabilities=[common_pb2.LabelScore(label=t, score=p) for t, p in zip(self.TARGETS, probs)],
            knn_vote=[common_pb2.LabelScore(label=lab, score=c / n) for lab, c in votes.most_common()],
            top_label=top,
        )

    def Explain(self, request, context):
        self._enter("Explain", context)
        if not request.images:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "no image", common_pb2.ERROR_REASON_INVALID_REQUEST)
        self._check_images([i.data for i in request.images], context)
        model = self._model(request.model, context)
        label = request.label or "Opacity"
        if label not in self.TARGETS:
            self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "unknown label",
                common_pb2.ERROR_REASON_INVALID_REQUEST,
                field="label",
            )
        return gateway_pb2.ExplainResponse(
            model=model,
            label=label,
            score=0.75,
            heatmap_png=png_bytes(16, 16, 1),
            overlay_png=png_bytes(16, 16, 2, color=True),
        )

    def GetCase(self, request, context):
        self._enter("GetCase", context)
        st = self.store.get(request.case_key)
        if st is None:
            self._abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                "unknown case key",
                common_pb2.ERROR_REASON_NOT_FOUND,
                field="case_key",
            )
        return gateway_pb2.GetCaseResponse(case=st.case)

    def DeleteCase(self, request, context):
        self._enter("DeleteCase", context)
        with self.lock:
            return gateway_pb2.DeleteCaseResponse(deleted=self.store.pop(request.case_key, None) is not None)

    def ListModels(self, request, context):
        self._enter("ListModels", context)
        out = []
        for profile, versions in sorted(self.models.items()):
            if request.profile and request.profile != profile:
                continue
            for v in versions:
                out.append(
                    gateway_pb2.ModelInfo(
                        model=common_pb2.ModelRef(profile=profile, version=v),
                        live=self.live[profile] == v,
                        modality=common_pb2.MODALITY_CT if profile == "ct-ild" else common_pb2.MODALITY_CXR,
                        targets=list(self.TARGETS),
                        input_size=224,
                        embedding_dim=128,
                        code_bits=0,
                        metrics={"auc": 0.9, "map_at_10": 0.5},
                        created_at=timestamp_pb2.Timestamp(seconds=1_700_000_000),
                        num_cases=sum(1 for s in self.store.values() if s.case.model.profile == profile),
                        synthetic_data=True,
                    )
                )
        return gateway_pb2.ListModelsResponse(models=out)

    def ActivateModel(self, request, context):
        self._enter("ActivateModel", context)
        ref = request.model
        if ref.profile not in self.models or ref.version not in self.models[ref.profile]:
            self._abort(context, grpc.StatusCode.NOT_FOUND, "unknown model", common_pb2.ERROR_REASON_MODEL_NOT_FOUND)
        previous = common_pb2.ModelRef(profile=ref.profile, version=self.live[ref.profile])
        self.live[ref.profile] = ref.version
        return gateway_pb2.ActivateModelResponse(previous=previous, live=ref)


def _serve_healthz_handler(message: bytes):
    """The Ray Serve proxy's own health RPC (ray.serve.RayServeAPIService/Healthz), raw bytes."""

    def healthz(request: bytes, context):
        if message is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "application is not running")
        return b"\x0a" + bytes([len(message)]) + message

    return grpc.method_handlers_generic_handler(
        "ray.serve.RayServeAPIService", {"Healthz": grpc.unary_unary_rpc_method_handler(healthz)}
    )


class Server:
    """A started grpc server; ``target`` is its loopback address."""

    def __init__(
        self,
        *,
        health: str = "standard",
        credentials: grpc.ServerCredentials | None = None,
        serve_message: bytes | None = b"success",
    ) -> None:
        self.servicer = FakeLungSearch()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.max_receive_message_length", 8 << 20)]
        )
        gateway_pb2_grpc.add_LungSearchServicer_to_server(self.servicer, self.server)
        self.health = None
        if health == "standard":
            from grpc_health.v1 import health as health_mod
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            self.health = health_mod.HealthServicer()
            self.health.set("", health_pb2.HealthCheckResponse.SERVING)
            self.health.set("lungsearch.v1.LungSearch", health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        elif health == "serve":
            self.server.add_generic_rpc_handlers((_serve_healthz_handler(serve_message),))
        addr = "127.0.0.1:0"
        port = self.server.add_secure_port(addr, credentials) if credentials else self.server.add_insecure_port(addr)
        self.target = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.servicer.stopping.set()
        self.server.stop(0).wait(5)


@pytest.fixture
def make_server():
    """Factory of extra servers (``make_server(health="serve", credentials=…)``), all stopped at teardown."""
    started: list[Server] = []

    def make(**kwargs) -> Server:
        started.append(Server(**kwargs))
        return started[-1]

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def server(make_server):
    return make_server()


@pytest.fixture
def servicer(server):
    return server.servicer


@pytest.fixture
def png():
    return png_bytes


@pytest.fixture
def dicom():
    return fake_dicom


@pytest.fixture
def tls_files(tmp_path_factory):
    """A self-signed CA + server certificate for 127.0.0.1/localhost (openssl CLI)."""
    from shutil import which

    if not which("openssl"):
        pytest.skip("openssl not available")
    d = tmp_path_factory.mktemp("tls")
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True, timeout=60)  # noqa: E731
    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.pem",
        "-extfile",
        "ext.cnf",
    )
    return d


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `lungsearch` command in a subprocess (no inherited LUNGSEARCH_TOKEN/TARGET)."""
    import os

    full_env = {k: v for k, v in os.environ.items() if k not in ("LUNGSEARCH_TOKEN", "LUNGSEARCH_TARGET")}
    full_env.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "lungsearch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )


@pytest.fixture
def cli():
    return run_cli
