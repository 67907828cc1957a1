"""Proto <-> domain conversion for the serving path (pure functions, no Ray, no torch needed).

Tensors travel as ``lungsearch.v1.Tensor`` (raw little-endian bytes, row-major); codes as
``HashCode`` (bit i of the code is bit i%8 of byte i/8, as ``lungsearch.models.hashing.pack_codes``);
modality and view as the proto enums, and as the data layer's strings ("cxr", "PA", ...) inside.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Mapping

import numpy as np

from lungsearch._proto.v1 import common_pb2, encoding_pb2
from lungsearch.errors import InvalidRequestError, LimitExceededError

__all__ = [
    "tensor_to_proto",
    "tensor_from_proto",
    "features_to_proto",
    "features_from_proto",
    "code_to_proto",
    "code_from_proto",
    "modality_to_proto",
    "modality_from_proto",
    "view_to_proto",
    "view_from_proto",
    "case_to_proto",
    "case_fields_from_proto",
    "filter_from_proto",
    "CaseFilter",
    "model_ref",
    "timestamp",
    "radiomics_roi_to_proto",
    "copy_radiomics_roi",
]

_DTYPES: dict[int, np.dtype] = {
    common_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    common_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
    common_pb2.DTYPE_UINT8: np.dtype("u1"),
    common_pb2.DTYPE_INT64: np.dtype("<i8"),
}
_BY_NUMPY = {
    np.dtype(np.float32): common_pb2.DTYPE_FLOAT32,
    np.dtype(np.float16): common_pb2.DTYPE_FLOAT16,
    np.dtype(np.uint8): common_pb2.DTYPE_UINT8,
    np.dtype(np.int64): common_pb2.DTYPE_INT64,
}
# Largest tensor accepted from a peer (a [512, 384] token tensor is 0.8 MB; images never travel as tensors).
_MAX_TENSOR_BYTES = 256 * 1024 * 1024

_MODALITY = {"cxr": common_pb2.MODALITY_CXR, "ct": common_pb2.MODALITY_CT, "mr": common_pb2.MODALITY_MR}
_MODALITY_BACK = {v: k for k, v in _MODALITY.items()}
_VIEW = {
    "PA": common_pb2.VIEW_PA,
    "AP": common_pb2.VIEW_AP,
    "LATERAL": common_pb2.VIEW_LATERAL,
    "AXIAL": common_pb2.VIEW_AXIAL,
}
_VIEW_BACK = {v: k for k, v in _VIEW.items()}


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; no torch import here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def tensor_to_proto(x: Any, *, dtype: str | None = None) -> common_pb2.Tensor:
    """A numpy array or torch tensor as a ``Tensor`` (float64 is sent as float32).

    Args:
        x: array-like.
        dtype: force "float32", "float16", "uint8" or "int64".
    """
    arr = _to_numpy(x)
    if dtype is not None:
        arr = arr.astype(np.dtype(dtype))
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    code = _BY_NUMPY.get(arr.dtype.newbyteorder("="))  # a big-endian input is still float32
    if code is None:
        raise InvalidRequestError(f"tensor dtype {arr.dtype} cannot be sent", code="tensor_dtype")
    le = arr.astype(_DTYPES[code], copy=False)
    return common_pb2.Tensor(shape=list(arr.shape), dtype=code, data=np.ascontiguousarray(le).tobytes())


def tensor_from_proto(t: common_pb2.Tensor, *, field: str = "tensor") -> np.ndarray:
    """The array a ``Tensor`` holds (a writable copy, native byte order).

    Raises:
        InvalidRequestError: unknown dtype, negative dims, or data length not matching the shape.
        LimitExceededError: a tensor over 256 MiB.
    """
    dt = _DTYPES.get(t.dtype)
    if dt is None:
        raise InvalidRequestError(f"{field}: dtype unspecified or unknown", code="tensor_dtype", field=field)
    shape = tuple(int(s) for s in t.shape)
    if any(s < 0 for s in shape) or len(shape) > 8:
        raise InvalidRequestError(f"{field}: bad shape", code="tensor_shape", field=field)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n * dt.itemsize > _MAX_TENSOR_BYTES:
        raise LimitExceededError(f"{field}: tensor too large", code="tensor_bytes", field=field)
    if len(t.data) != n * dt.itemsize:
        raise InvalidRequestError(
            f"{field}: {len(t.data)} bytes do not match shape {list(shape)}", code="tensor_size", field=field
        )
    return np.frombuffer(t.data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=True)


def features_to_proto(features: Mapping[str, Any]) -> encoding_pb2.Features:
    """A feature dict (keys of ``lungsearch.models.base.FEATURE_NAMES``, one study) as ``Features``."""
    msg = encoding_pb2.Features()
    fields = {f.name for f in encoding_pb2.Features.DESCRIPTOR.fields}
    for name, value in features.items():
        if value is None:
            continue
        if name not in fields:
            raise InvalidRequestError(f"unknown feature {name!r}", code="feature_name")
        getattr(msg, name).CopyFrom(tensor_to_proto(value, dtype="float32"))
    return msg


def features_from_proto(msg: encoding_pb2.Features) -> dict[str, np.ndarray]:
    """The set fields of a ``Features`` message as float32 arrays."""
    return {
        f.name: tensor_from_proto(getattr(msg, f.name), field=f"features.{f.name}").astype(np.float32, copy=False)
        for f in encoding_pb2.Features.DESCRIPTOR.fields
        if msg.HasField(f.name)
    }


def code_to_proto(packed: bytes | np.ndarray, bits: int) -> common_pb2.HashCode:
    data = packed.tobytes() if isinstance(packed, np.ndarray) else bytes(packed)
    if bits <= 0 or bits % 8 or len(data) != bits // 8:
        raise InvalidRequestError(f"code of {len(data)} bytes does not hold {bits} bits", code="code_size")
    return common_pb2.HashCode(packed=data, bits=bits)


def code_from_proto(code: common_pb2.HashCode, *, expected_bits: int = 0, field: str = "code") -> bytes:
    """Packed code bytes (b"" when the message is empty); checks the bit count."""
    if not code.packed and not code.bits:
        return b""
    if code.bits <= 0 or code.bits % 8 or len(code.packed) != code.bits // 8:
        raise InvalidRequestError(f"{field}: packed length does not match bits", code="code_size", field=field)
    if expected_bits and code.bits != expected_bits:
        raise InvalidRequestError(
            f"{field}: {code.bits} bits, the model uses {expected_bits}", code="code_bits", field=field
        )
    return bytes(code.packed)


def modality_to_proto(modality: str) -> int:
    return _MODALITY.get((modality or "").lower(), common_pb2.MODALITY_UNSPECIFIED)


def modality_from_proto(value: int) -> str:
    """ "cxr", "ct", "mr" or "" (unspecified)."""
    return _MODALITY_BACK.get(value, "")


def view_to_proto(view: str) -> int:
    return _VIEW.get((view or "").upper(), common_pb2.VIEW_UNSPECIFIED)


def view_from_proto(value: int) -> str:
    return _VIEW_BACK.get(value, "")


def model_ref(profile: str, version: str) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(profile=profile, version=version)


def radiomics_roi_to_proto(fallback: bool, reason: str) -> common_pb2.RadiomicsRoi | None:
    """The ``RadiomicsRoi`` an answer carries when radiomics read the whole thorax, else None
    (lungs read, or a profile without radiomics: the field stays unset)."""
    if not fallback:
        return None
    from lungsearch.inference import roi_fallback_message

    reason = reason or "empty"
    return common_pb2.RadiomicsRoi(whole_thorax=True, reason=reason, message=roi_fallback_message(reason))


def copy_radiomics_roi(src: Any, dst: Any) -> Any:
    """Carry ``radiomics_roi`` from an ``EncodeResponse`` to a public answer (when it is set); returns ``dst``."""
    if src is not None and src.HasField("radiomics_roi"):
        dst.radiomics_roi.CopyFrom(src.radiomics_roi)
    return dst


def timestamp(epoch: float):
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(_dt.datetime.fromtimestamp(float(epoch or 0.0), tz=_dt.timezone.utc))
    return ts


def case_to_proto(case: Any, *, profile: str) -> common_pb2.Case:
    """A stored case (``lungsearch.store.StoredCase`` or anything with its attributes) as ``Case``."""
    msg = common_pb2.Case(
        case_key=case.case_key,
        modality=modality_to_proto(case.modality),
        view=view_to_proto(case.view),
        labels=list(case.labels),
        report_excerpt=case.report_excerpt or "",
        model=common_pb2.ModelRef(profile=profile, version=case.model_version),
        num_images=int(case.num_images),
    )
    msg.ingested_at.CopyFrom(timestamp(case.ingested_at))
    return msg


def case_fields_from_proto(record: Any, *, embedding_dim: int, code_bits: int) -> dict[str, Any]:
    """The keyword arguments of ``StoredCase`` from a ``ranking_pb2.CaseRecord`` (validated).

    Raises:
        InvalidRequestError: missing key, wrong embedding size, wrong code size.
    """
    c = record.case
    if not c.case_key:
        raise InvalidRequestError("record without case_key", code="case_key", field="case.case_key")
    emb = tensor_from_proto(record.embedding, field="embedding").astype(np.float32).reshape(-1)
    if emb.shape[0] != embedding_dim:
        raise InvalidRequestError(
            f"embedding has {emb.shape[0]} values, the model uses {embedding_dim}",
            code="embedding_dim",
            field="embedding",
        )
    code = code_from_proto(record.code, expected_bits=code_bits) if code_bits else b""
    if code_bits and not code:
        raise InvalidRequestError("record without its hash code", code="code_missing", field="code")
    ingested = c.ingested_at.ToDatetime(tzinfo=_dt.timezone.utc).timestamp() if c.HasField("ingested_at") else 0.0
    return dict(
        case_key=c.case_key,
        modality=modality_from_proto(c.modality),
        view=view_from_proto(c.view),
        labels=list(c.labels),
        report_excerpt=c.report_excerpt,
        embedding=emb,
        code=code,
        ingested_at=ingested,
        num_images=int(c.num_images),
        model_version=c.model.version,
    )


class CaseFilter(dict):
    """Metadata filter as plain data: keys ``modality``, ``view`` (strings, "" = any),
    ``labels_any``, ``labels_all``, ``labels_none`` (lists). Empty = no filter."""

    def matches(self, modality: str, view: str, labels: list[str]) -> bool:
        if self.get("modality") and modality != self["modality"]:
            return False
        if self.get("view") and view != self["view"]:
            return False
        have = set(labels)
        if self.get("labels_any") and not have & set(self["labels_any"]):
            return False
        if self.get("labels_all") and not set(self["labels_all"]) <= have:
            return False
        if self.get("labels_none") and have & set(self["labels_none"]):
            return False
        return True


def filter_from_proto(f: common_pb2.Filter, *, max_labels: int = 64) -> CaseFilter:
    """A ``Filter`` message as a :class:`CaseFilter` (only the set fields)."""
    out = CaseFilter()
    if f.modality:
        out["modality"] = modality_from_proto(f.modality)
    if f.view:
        out["view"] = view_from_proto(f.view)
    for name in ("labels_any", "labels_all", "labels_none"):
        vals = list(getattr(f, name))
        if len(vals) > max_labels:
            raise LimitExceededError(
                f"filter.{name}: more than {max_labels} labels", code="filter_labels", field=f"filter.{name}"
            )
        if vals:
            out[name] = vals
    return out
