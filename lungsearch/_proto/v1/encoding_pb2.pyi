from lungsearch._proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeRequest(_message.Message):
    __slots__ = ("model", "images", "report", "explain", "explain_label")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_LABEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    report: _common_pb2.Report
    explain: bool
    explain_label: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., report: _Optional[_Union[_common_pb2.Report, _Mapping]] = ..., explain: _Optional[bool] = ..., explain_label: _Optional[str] = ...) -> None: ...

class Features(_message.Message):
    __slots__ = ("image_pooled", "image_tokens", "report_pooled", "report_tokens", "radiomics", "hash_logits", "logits")
    IMAGE_POOLED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REPORT_POOLED_FIELD_NUMBER: _ClassVar[int]
    REPORT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RADIOMICS_FIELD_NUMBER: _ClassVar[int]
    HASH_LOGITS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    image_pooled: _common_pb2.Tensor
    image_tokens: _common_pb2.Tensor
    report_pooled: _common_pb2.Tensor
    report_tokens: _common_pb2.Tensor
    radiomics: _common_pb2.Tensor
    hash_logits: _common_pb2.Tensor
    logits: _common_pb2.Tensor
    def __init__(self, image_pooled: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., image_tokens: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., report_pooled: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., report_tokens: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., radiomics: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., hash_logits: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., logits: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("model", "features", "modality", "view", "heatmap", "heatmap_label", "radiomics_roi")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_LABEL_FIELD_NUMBER: _ClassVar[int]
    RADIOMICS_ROI_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    features: Features
    modality: _common_pb2.Modality
    view: _common_pb2.View
    heatmap: _common_pb2.Tensor
    heatmap_label: str
    radiomics_roi: _common_pb2.RadiomicsRoi
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., features: _Optional[_Union[Features, _Mapping]] = ..., modality: _Optional[_Union[_common_pb2.Modality, str]] = ..., view: _Optional[_Union[_common_pb2.View, str]] = ..., heatmap: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., heatmap_label: _Optional[str] = ..., radiomics_roi: _Optional[_Union[_common_pb2.RadiomicsRoi, _Mapping]] = ...) -> None: ...
