from lungsearch._proto.v1 import common_pb2 as _common_pb2
from lungsearch._proto.v1 import encoding_pb2 as _encoding_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FuseRequest(_message.Message):
    __slots__ = ("model", "features")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    features: _encoding_pb2.Features
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., features: _Optional[_Union[_encoding_pb2.Features, _Mapping]] = ...) -> None: ...

class FuseResponse(_message.Message):
    __slots__ = ("model", "embedding", "probabilities")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    embedding: _common_pb2.Tensor
    probabilities: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., embedding: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., probabilities: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ...) -> None: ...
