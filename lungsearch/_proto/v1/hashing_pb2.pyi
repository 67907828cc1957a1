from lungsearch._proto.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HashRequest(_message.Message):
    __slots__ = ("model", "hash_logits", "embedding")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HASH_LOGITS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    hash_logits: _common_pb2.Tensor
    embedding: _common_pb2.Tensor
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., hash_logits: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., embedding: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class HashResponse(_message.Message):
    __slots__ = ("model", "code")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    code: _common_pb2.HashCode
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.HashCode, _Mapping]] = ...) -> None: ...
