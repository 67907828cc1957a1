import asyncio

import grpc
import pytest

from lungsearch._proto.v1 import common_pb2, gateway_pb2
from lungsearch.errors import InvalidImageError, LungsearchError
from lungsearch.serving.auth import Authenticator
from lungsearch.serving.metrics import ServingMetrics
from lungsearch.serving.rpc import rpc
from lungsearch.serving.status import ERROR_METADATA_KEY


class Ctx:
    def __init__(self, md=()):
        self.md, self.code, self.details, self.trailing = list(md), None, None, []

    def invocation_metadata(self):
        return self.md

    def set_code(self, c):
        self.code = c

    def set_details(self, d):
        self.details = d

    def set_trailing_metadata(self, t):
        self.trailing = t


class Svc:
    def __init__(self, auth=None):
        self.metrics = ServingMetrics("gateway", ray_export=False)
        self.auth = auth

    @rpc("Search", gateway_pb2.SearchResponse)
    async def Search(self, request, grpc_context=None, *, fail=None):
        if fail is not None:
            raise fail
        return gateway_pb2.SearchResponse(hits=[gateway_pb2.SearchHit(rank=1)])


def run(coro):
    return asyncio.run(coro)


def test_signature_still_names_grpc_context():
    import inspect

    # Serve passes grpc_context only when the method's signature names it.
    assert "grpc_context" in inspect.signature(Svc.Search).parameters


def test_success_and_metrics():
    s = Svc()
    resp = run(s.Search(gateway_pb2.SearchRequest(), grpc_context=Ctx()))
    assert resp.hits[0].rank == 1
    assert 'code="OK"' in s.metrics.render()


def test_error_through_proxy_sets_status_and_returns_empty():
    s, ctx = Svc(), Ctx()
    resp = run(s.Search(gateway_pb2.SearchRequest(), grpc_context=ctx, fail=InvalidImageError("bad pixels")))
    assert resp == gateway_pb2.SearchResponse()
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and ctx.details == "bad pixels"
    assert ctx.trailing[0][0] == ERROR_METADATA_KEY
    assert 'reason="INVALID_IMAGE"' in s.metrics.render()


def test_unexpected_error_through_proxy_hides_message():
    s, ctx = Svc(), Ctx()
    run(s.Search(gateway_pb2.SearchRequest(), grpc_context=ctx, fail=KeyError("PatientName=DOE^JOHN")))
    assert ctx.code == grpc.StatusCode.INTERNAL and "DOE" not in ctx.details


def test_handle_calls_raise_library_errors_and_sanitise_others():
    s = Svc()
    with pytest.raises(InvalidImageError):
        run(s.Search(gateway_pb2.SearchRequest(), fail=InvalidImageError("bad")))
    with pytest.raises(LungsearchError) as e:
        run(s.Search(gateway_pb2.SearchRequest(), fail=KeyError("PatientName=DOE^JOHN")))
    assert "DOE" not in str(e.value) and e.value.__cause__ is None and e.value.__suppress_context__


def test_cancellation_is_not_swallowed():
    with pytest.raises(asyncio.CancelledError):
        run(Svc().Search(gateway_pb2.SearchRequest(), grpc_context=Ctx(), fail=asyncio.CancelledError()))


def test_auth_applies_to_proxy_calls_only():
    s = Svc(Authenticator([], insecure_local=False))
    ctx = Ctx()
    run(s.Search(gateway_pb2.SearchRequest(), grpc_context=ctx))
    assert ctx.code == grpc.StatusCode.UNAUTHENTICATED
    assert common_pb2.ErrorDetail.FromString(ctx.trailing[0][1]).reason == common_pb2.ERROR_REASON_UNAUTHENTICATED
    assert 'lungsearch_auth_failures_total{reason="UNAUTHENTICATED"} 1.0' in s.metrics.render()
    assert run(s.Search(gateway_pb2.SearchRequest())).hits  # handle call from inside the graph
