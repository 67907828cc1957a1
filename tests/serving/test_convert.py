import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lungsearch._proto.v1 import common_pb2, encoding_pb2, ranking_pb2
from lungsearch.errors import InvalidRequestError, LimitExceededError
from lungsearch.serving import convert


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float16, np.uint8, np.int64]),
        hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
    )
)
def test_tensor_round_trip(arr):
    back = convert.tensor_from_proto(convert.tensor_to_proto(arr))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_tensor_little_endian_on_the_wire():
    t = convert.tensor_to_proto(np.array([1.0], dtype=">f4"))
    assert t.data == np.array([1.0], dtype="<f4").tobytes()


def test_float64_and_torch_are_sent_as_float32():
    import torch

    assert convert.tensor_to_proto(np.ones(3)).dtype == common_pb2.DTYPE_FLOAT32
    t = convert.tensor_to_proto(torch.ones(2, 3))
    assert list(t.shape) == [2, 3] and t.dtype == common_pb2.DTYPE_FLOAT32


@pytest.mark.parametrize(
    "bad",
    [
        common_pb2.Tensor(shape=[2], dtype=common_pb2.DTYPE_FLOAT32, data=b"\0" * 7),
        common_pb2.Tensor(shape=[2], data=b"\0" * 8),
        common_pb2.Tensor(shape=[-1], dtype=common_pb2.DTYPE_UINT8, data=b""),
    ],
)
def test_malformed_tensors_are_invalid_argument(bad):
    with pytest.raises(InvalidRequestError):
        convert.tensor_from_proto(bad)


def test_huge_declared_tensor_is_refused_before_allocation():
    t = common_pb2.Tensor(shape=[1 << 20, 1 << 20], dtype=common_pb2.DTYPE_FLOAT32, data=b"")
    with pytest.raises(LimitExceededError):
        convert.tensor_from_proto(t)


def test_features_round_trip_and_unknown_name():
    feats = {"image_pooled": np.arange(4, dtype=np.float32), "logits": np.ones(6, np.float32)}
    back = convert.features_from_proto(convert.features_to_proto(feats))
    assert set(back) == set(feats)
    np.testing.assert_array_equal(back["image_pooled"], feats["image_pooled"])
    with pytest.raises(InvalidRequestError):
        convert.features_to_proto({"bogus": np.ones(2)})
    assert convert.features_from_proto(encoding_pb2.Features()) == {}


def test_codes():
    msg = convert.code_to_proto(b"\x01\x02", 16)
    assert convert.code_from_proto(msg, expected_bits=16) == b"\x01\x02"
    assert convert.code_from_proto(common_pb2.HashCode()) == b""
    with pytest.raises(InvalidRequestError):
        convert.code_from_proto(msg, expected_bits=64)
    with pytest.raises(InvalidRequestError):
        convert.code_from_proto(common_pb2.HashCode(packed=b"\x01", bits=16))
    with pytest.raises(InvalidRequestError):
        convert.code_to_proto(b"\x01", 12)


def test_enums_round_trip():
    for m in ("cxr", "ct", "mr"):
        assert convert.modality_from_proto(convert.modality_to_proto(m)) == m
    for v in ("PA", "AP", "LATERAL", "AXIAL"):
        assert convert.view_from_proto(convert.view_to_proto(v)) == v
    assert convert.modality_to_proto("xray?") == common_pb2.MODALITY_UNSPECIFIED
    assert convert.view_from_proto(common_pb2.VIEW_UNSPECIFIED) == ""


class _Case:
    case_key = "ab" * 16
    modality, view, labels = "cxr", "PA", ["Nodule", "Effusion"]
    report_excerpt, ingested_at, num_images, model_version = "small nodule", 1700000000.5, 1, "v1"


def test_case_and_record_round_trip():
    case = convert.case_to_proto(_Case(), profile="cxr-hash")
    assert case.model.profile == "cxr-hash" and case.model.version == "v1"
    assert case.ingested_at.seconds == 1700000000
    rec = ranking_pb2.CaseRecord(
        case=case, embedding=convert.tensor_to_proto(np.ones(8, np.float32)), code=convert.code_to_proto(b"\xff", 8)
    )
    fields = convert.case_fields_from_proto(rec, embedding_dim=8, code_bits=8)
    assert fields["labels"] == ["Nodule", "Effusion"] and fields["code"] == b"\xff"
    assert abs(fields["ingested_at"] - 1700000000.5) < 1e-3
    with pytest.raises(InvalidRequestError):
        convert.case_fields_from_proto(rec, embedding_dim=16, code_bits=8)
    rec.ClearField("code")
    with pytest.raises(InvalidRequestError):
        convert.case_fields_from_proto(rec, embedding_dim=8, code_bits=8)


def test_filter():
    f = convert.filter_from_proto(
        common_pb2.Filter(modality=common_pb2.MODALITY_CT, labels_any=["ggo"], labels_none=["normal"])
    )
    assert f == {"modality": "ct", "labels_any": ["ggo"], "labels_none": ["normal"]}
    assert f.matches("ct", "AXIAL", ["ggo"]) and not f.matches("ct", "", ["ggo", "normal"])
    assert not f.matches("cxr", "", ["ggo"])
    assert convert.filter_from_proto(common_pb2.Filter()) == {}
    with pytest.raises(LimitExceededError):
        convert.filter_from_proto(common_pb2.Filter(labels_all=[str(i) for i in range(65)]))
