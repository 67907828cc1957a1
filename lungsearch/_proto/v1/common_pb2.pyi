import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_UNSPECIFIED: _ClassVar[Modality]
    MODALITY_CXR: _ClassVar[Modality]
    MODALITY_CT: _ClassVar[Modality]
    MODALITY_MR: _ClassVar[Modality]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_DICOM: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]

class View(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIEW_UNSPECIFIED: _ClassVar[View]
    VIEW_PA: _ClassVar[View]
    VIEW_AP: _ClassVar[View]
    VIEW_LATERAL: _ClassVar[View]
    VIEW_AXIAL: _ClassVar[View]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_IMAGE: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_REPORT: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_REQUEST: _ClassVar[ErrorReason]
    ERROR_REASON_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_MODEL_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_MODEL_NOT_READY: _ClassVar[ErrorReason]
    ERROR_REASON_LIMIT_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_STORE_UNAVAILABLE: _ClassVar[ErrorReason]
    ERROR_REASON_UNAUTHENTICATED: _ClassVar[ErrorReason]
    ERROR_REASON_PERMISSION_DENIED: _ClassVar[ErrorReason]
    ERROR_REASON_INTERNAL: _ClassVar[ErrorReason]
    ERROR_REASON_OVERLOADED: _ClassVar[ErrorReason]
    ERROR_REASON_PHI_REJECTED: _ClassVar[ErrorReason]
MODALITY_UNSPECIFIED: Modality
MODALITY_CXR: Modality
MODALITY_CT: Modality
MODALITY_MR: Modality
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_DICOM: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
VIEW_UNSPECIFIED: View
VIEW_PA: View
VIEW_AP: View
VIEW_LATERAL: View
VIEW_AXIAL: View
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_UINT8: DType
DTYPE_INT64: DType
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_INVALID_IMAGE: ErrorReason
ERROR_REASON_INVALID_REPORT: ErrorReason
ERROR_REASON_INVALID_REQUEST: ErrorReason
ERROR_REASON_NOT_FOUND: ErrorReason
ERROR_REASON_MODEL_NOT_FOUND: ErrorReason
ERROR_REASON_MODEL_NOT_READY: ErrorReason
ERROR_REASON_LIMIT_EXCEEDED: ErrorReason
ERROR_REASON_STORE_UNAVAILABLE: ErrorReason
ERROR_REASON_UNAUTHENTICATED: ErrorReason
ERROR_REASON_PERMISSION_DENIED: ErrorReason
ERROR_REASON_INTERNAL: ErrorReason
ERROR_REASON_OVERLOADED: ErrorReason
ERROR_REASON_PHI_REJECTED: ErrorReason

class ErrorDetail(_message.Message):
    __slots__ = ("reason", "message", "retriable", "field", "code")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRIABLE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    reason: ErrorReason
    message: str
    retriable: bool
    field: str
    code: str
    def __init__(self, reason: _Optional[_Union[ErrorReason, str]] = ..., message: _Optional[str] = ..., retriable: _Optional[bool] = ..., field: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "format", "modality", "view")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: ImageFormat
    modality: Modality
    view: View
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., modality: _Optional[_Union[Modality, str]] = ..., view: _Optional[_Union[View, str]] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("text", "findings", "impression")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_FIELD_NUMBER: _ClassVar[int]
    text: str
    findings: str
    impression: str
    def __init__(self, text: _Optional[str] = ..., findings: _Optional[str] = ..., impression: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("profile", "version")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    profile: str
    version: str
    def __init__(self, profile: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class HashCode(_message.Message):
    __slots__ = ("packed", "bits")
    PACKED_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    packed: bytes
    bits: int
    def __init__(self, packed: _Optional[bytes] = ..., bits: _Optional[int] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("modality", "view", "labels_any", "labels_all", "labels_none")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    LABELS_ANY_FIELD_NUMBER: _ClassVar[int]
    LABELS_ALL_FIELD_NUMBER: _ClassVar[int]
    LABELS_NONE_FIELD_NUMBER: _ClassVar[int]
    modality: Modality
    view: View
    labels_any: _containers.RepeatedScalarFieldContainer[str]
    labels_all: _containers.RepeatedScalarFieldContainer[str]
    labels_none: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, modality: _Optional[_Union[Modality, str]] = ..., view: _Optional[_Union[View, str]] = ..., labels_any: _Optional[_Iterable[str]] = ..., labels_all: _Optional[_Iterable[str]] = ..., labels_none: _Optional[_Iterable[str]] = ...) -> None: ...

class Case(_message.Message):
    __slots__ = ("case_key", "modality", "view", "labels", "report_excerpt", "model", "ingested_at", "num_images")
    CASE_KEY_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REPORT_EXCERPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    case_key: str
    modality: Modality
    view: View
    labels: _containers.RepeatedScalarFieldContainer[str]
    report_excerpt: str
    model: ModelRef
    ingested_at: _timestamp_pb2.Timestamp
    num_images: int
    def __init__(self, case_key: _Optional[str] = ..., modality: _Optional[_Union[Modality, str]] = ..., view: _Optional[_Union[View, str]] = ..., labels: _Optional[_Iterable[str]] = ..., report_excerpt: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., num_images: _Optional[int] = ...) -> None: ...

class RadiomicsRoi(_message.Message):
    __slots__ = ("whole_thorax", "reason", "message")
    WHOLE_THORAX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    whole_thorax: bool
    reason: str
    message: str
    def __init__(self, whole_thorax: _Optional[bool] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
