import pickle

import grpc
import pytest

from lungsearch import errors
from lungsearch._proto.v1 import common_pb2

CLASSES = [getattr(errors, n) for n in errors.__all__]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_pickles_with_fields(cls):
    e = cls("bad thing", code="truncated", field="images[0]")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and back.message == "bad thing" and back.code == "truncated" and back.field == "images[0]"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_maps_to_real_status_and_reason(cls):
    assert hasattr(grpc.StatusCode, cls.grpc_status)
    assert common_pb2.ErrorReason.Value(f"ERROR_REASON_{cls.reason}")


def test_str_includes_code():
    assert str(errors.InvalidImageError("cannot decode", code="truncated")) == "cannot decode [truncated]"
