import asyncio
import pickle

import grpc
import pytest

from lungsearch import errors
from lungsearch._proto.v1 import common_pb2
from lungsearch.serving.status import ERROR_METADATA_KEY, apply_status, status_for


class _Ctx:
    def __init__(self):
        self.code = self.details = None
        self.trailing = []

    def set_code(self, c):
        self.code = c

    def set_details(self, d):
        self.details = d

    def set_trailing_metadata(self, md):
        self.trailing = md


@pytest.mark.parametrize("cls", [getattr(errors, n) for n in errors.__all__ if n != "LungsearchError"])
def test_library_errors_keep_their_status_reason_and_message(cls):
    exc = cls("safe message", code="component_code", field="images[1]")
    st = status_for(exc)
    assert st.code == getattr(grpc.StatusCode, cls.grpc_status)
    assert st.details == "safe message"
    assert st.detail.reason == common_pb2.ErrorReason.Value(f"ERROR_REASON_{cls.reason}")
    assert (st.detail.code, st.detail.field, st.detail.retriable) == ("component_code", "images[1]", cls.retriable)


def test_unexpected_exception_is_internal_without_its_message():
    st = status_for(ValueError("Patient name DOE^JANE in header"))
    assert st.code == grpc.StatusCode.INTERNAL
    assert "DOE" not in st.details and "ValueError" not in st.details and "ref " in st.details


def test_wrapped_cause_is_unwrapped():
    class FakeRayTaskError(Exception):
        def __init__(self, cause):
            super().__init__("Traceback ... secret")
            self.cause = cause

    st = status_for(FakeRayTaskError(errors.NotFoundError("no such case")))
    assert st.code == grpc.StatusCode.NOT_FOUND and st.details == "no such case"


def test_serve_failures_by_type_name():
    BackPressureError = type("BackPressureError", (Exception,), {})
    ActorDiedError = type("ActorDiedError", (Exception,), {})
    assert status_for(BackPressureError("x")).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(BackPressureError("x")).reason == "OVERLOADED"
    assert status_for(ActorDiedError("x")).code == grpc.StatusCode.UNAVAILABLE
    assert status_for(asyncio.TimeoutError()).code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_details_are_bounded():
    st = status_for(errors.InvalidRequestError("x" * 10000))
    assert len(st.details) <= 1024


def test_apply_status_sets_code_details_and_binary_trailer():
    ctx = _Ctx()
    apply_status(ctx, status_for(errors.InvalidImageError("not a DICOM", code="bad_magic")))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and ctx.details == "not a DICOM"
    ((key, value),) = ctx.trailing
    assert key == ERROR_METADATA_KEY and key.endswith("-bin")
    detail = common_pb2.ErrorDetail.FromString(value)
    assert detail.reason == common_pb2.ERROR_REASON_INVALID_IMAGE and detail.code == "bad_magic"
    apply_status(None, status_for(errors.NotFoundError("x")))  # handle calls: no context, no effect


def test_status_detail_is_readable_by_the_sdk():
    from lungsearch.client._errors import parse_error_detail

    st = status_for(errors.StoreUnavailableError("store down"))
    d = parse_error_detail([(ERROR_METADATA_KEY, st.detail.SerializeToString())])
    assert d.reason == "STORE_UNAVAILABLE" and d.retriable
    assert pickle.loads(pickle.dumps(st.detail)) == st.detail
