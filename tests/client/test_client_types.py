"""Pure parts of the SDK: model references, filters, results' to_dict, chunking, the health wire format,
the retry policy's arithmetic, and the status -> exception map."""

from __future__ import annotations

import json

import grpc
import pytest

from lungsearch._proto.v1 import common_pb2, gateway_pb2
from lungsearch.client import (
    Case,
    DeadlineExceeded,
    Filter,
    Internal,
    InvalidArgument,
    LungSearchError,
    ModelInfo,
    ModelRef,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    SearchResult,
    Unauthenticated,
    Unavailable,
    error_from_rpc,
)
from lungsearch.client import _requests as rq
from lungsearch.client._retry import Attempts


@pytest.mark.parametrize(
    "text, ref",
    [
        ("cxr-report", ModelRef("cxr-report")),
        ("ct-ild@v3", ModelRef("ct-ild", "v3")),
        ("", ModelRef()),
        (None, ModelRef()),
    ],
)
def test_model_ref_parse(text, ref):
    assert ModelRef.parse(text) == ref
    assert ModelRef.parse(str(ref)) == ref


@pytest.mark.parametrize("bad", ["a@", "@v1", "a@b@c"])
def test_model_ref_rejects_malformed(bad):
    with pytest.raises(ValueError):
        ModelRef.parse(bad)


def test_filter_parse_and_proto():
    f = Filter.parse(
        ["modality=ct", "view=axial", "label=ggo, reticular", "labels_all=a", "label!=normal", "labels_none=x"]
    )
    assert f == Filter("ct", "AXIAL", ("ggo", "reticular"), ("a",), ("normal", "x"))
    p = f.to_proto()
    assert (p.modality, p.view) == (common_pb2.MODALITY_CT, common_pb2.VIEW_AXIAL)
    assert list(p.labels_none) == ["normal", "x"]
    assert Filter(labels_any="Nodule").labels_any == ("Nodule",)  # a lone string is one label
    assert Filter(modality="CR", view="lat") == Filter(modality="cxr", view="LATERAL")  # canonical spellings
    for bad in (["colour=red"], ["modality"], ["view!=PA"], ["modality=pet"]):
        with pytest.raises(ValueError):
            Filter.parse(bad)
    with pytest.raises(ValueError):
        Filter.coerce({"modalty": "ct"})


def test_results_from_proto_and_to_dict_are_json_ready():
    msg = gateway_pb2.SearchResponse(
        model=common_pb2.ModelRef(profile="cxr-hash", version="v1"),
        hits=[
            gateway_pb2.SearchHit(
                case=common_pb2.Case(
                    case_key="k1",
                    modality=common_pb2.MODALITY_CXR,
                    view=common_pb2.VIEW_LATERAL,
                    labels=["A"],
                    num_images=1,
                ),
                score=0.5,
                rank=1,
                hamming_distance=3,
            )
        ],
    )
    res = SearchResult.from_proto(msg)
    assert res.hits[0].hamming_distance == 3 and res.hits[0].case.view == "LATERAL"
    assert res.hits[0].case.ingested_at is None
    d = json.loads(json.dumps(res.to_dict()))
    assert d["model"] == {"profile": "cxr-hash", "version": "v1"} and d["hits"][0]["case"]["labels"] == ["A"]
    info = ModelInfo.from_proto(gateway_pb2.ModelInfo(model=common_pb2.ModelRef(profile="p"), metrics={"b": 1, "a": 2}))
    assert list(info.metrics) == ["a", "b"] and info.created_at is None
    assert Case.from_proto(common_pb2.Case(case_key="x")).modality == ""


def test_stream_messages_chunking():
    head = gateway_pb2.IngestRequest(labels=["x"])
    srcs = [rq.Source(data=b"\x00" * 128 + b"DICM" + b"a" * 96), rq.Source(data=b"b" * 10)]  # 228 and 10 bytes
    msgs = list(rq.stream_messages(head, srcs, chunk_bytes=100))
    assert msgs[0].WhichOneof("part") == "header" and msgs[0].header.labels == ["x"]
    chunks = [m.chunk for m in msgs[1:]]
    assert [(c.image_index, len(c.data), c.last) for c in chunks] == [
        (0, 100, False),
        (0, 100, False),
        (0, 28, True),
        (1, 10, True),
    ]
    assert chunks[0].format == common_pb2.IMAGE_FORMAT_DICOM and chunks[1].format == 0
    assert b"".join(c.data for c in chunks[:3]) == srcs[0].data


def test_health_wire_format_matches_grpc_health():
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    for service in ("", "lungsearch.v1.LungSearch", "x" * 300):
        assert rq.health_request(service) == health_pb2.HealthCheckRequest(service=service).SerializeToString()
    for status in range(4):
        raw = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        assert rq.parse_health_response(raw) == health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    assert rq.parse_health_response(b"\x12\x03abc\x08\x01") == "SERVING"  # unknown fields are skipped
    with pytest.raises(ValueError):
        rq.parse_health_response(b"\x08")


def test_backoff_is_full_jitter_under_an_exponential_cap():
    p = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, multiplier=2, seed=0)
    for retry, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        draws = [p.backoff(retry) for _ in range(200)]
        assert 0 <= min(draws) and max(draws) <= cap and max(draws) > cap * 0.8


def test_attempts_stop_before_the_deadline():
    now = [0.0]
    err = Unavailable("down")
    a = Attempts(RetryPolicy(max_attempts=10, initial_backoff=1.0, max_backoff=1.0, seed=0), 1.0, clock=lambda: now[0])
    a.attempt = 1
    now[0] = 0.999  # no time left for any sleep
    assert a.next_delay(err) is None
    a = Attempts(RetryPolicy(max_attempts=2), 10.0, clock=lambda: now[0])
    a.attempt = 2
    assert a.next_delay(err) is None  # out of attempts
    a.attempt = 1
    assert a.next_delay(err, pushback_ms=500) == 0.5


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailing=()):
        self._c, self._d, self._t = code, details, trailing

    def code(self):
        return self._c

    def details(self):
        return self._d

    def trailing_metadata(self):
        return self._t


@pytest.mark.parametrize(
    "code, cls",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, Internal),
        (grpc.StatusCode.UNKNOWN, Internal),
        (grpc.StatusCode.FAILED_PRECONDITION, LungSearchError),
    ],
)
def test_status_to_exception(code, cls):
    detail = common_pb2.ErrorDetail(
        reason=common_pb2.ERROR_REASON_STORE_UNAVAILABLE, message="m", retriable=True, field="f", code="c"
    )
    err = error_from_rpc(
        _FakeRpcError(code, "server says why", (("lungsearch-error-bin", detail.SerializeToString()),)), "Search"
    )
    assert type(err) is cls and err.status == code and err.details == "server says why"
    assert (err.reason, err.field, err.code, err.retriable) == ("STORE_UNAVAILABLE", "f", "c", True)
    bare = error_from_rpc(_FakeRpcError(code, "", (("lungsearch-error-bin", b"\xff\xff"),)))  # malformed detail
    assert type(bare) is cls and bare.detail is None and bare.reason == code.name


@pytest.mark.parametrize(
    "module",
    ["lungsearch.client._types", "lungsearch.client._retry", "lungsearch.client._sync", "lungsearch.client._async"],
)
def test_docstring_examples_run(module):
    """The runnable docstring examples (network ones are marked +SKIP) are correct."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
