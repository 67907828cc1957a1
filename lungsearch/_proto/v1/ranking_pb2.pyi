from lungsearch._proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaseRecord(_message.Message):
    __slots__ = ("case", "embedding", "code")
    CASE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    case: _common_pb2.Case
    embedding: _common_pb2.Tensor
    code: _common_pb2.HashCode
    def __init__(self, case: _Optional[_Union[_common_pb2.Case, _Mapping]] = ..., embedding: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.HashCode, _Mapping]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("model", "records")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    records: _containers.RepeatedCompositeFieldContainer[CaseRecord]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., records: _Optional[_Iterable[_Union[CaseRecord, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("inserted", "updated")
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    inserted: int
    updated: int
    def __init__(self, inserted: _Optional[int] = ..., updated: _Optional[int] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("model", "embedding", "code", "top_k", "filter", "candidates")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    embedding: _common_pb2.Tensor
    code: _common_pb2.HashCode
    top_k: int
    filter: _common_pb2.Filter
    candidates: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., embedding: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.HashCode, _Mapping]] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ..., candidates: _Optional[int] = ...) -> None: ...

class RankedCase(_message.Message):
    __slots__ = ("case", "score", "hamming_distance")
    CASE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HAMMING_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    case: _common_pb2.Case
    score: float
    hamming_distance: int
    def __init__(self, case: _Optional[_Union[_common_pb2.Case, _Mapping]] = ..., score: _Optional[float] = ..., hamming_distance: _Optional[int] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("model", "results")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    results: _containers.RepeatedCompositeFieldContainer[RankedCase]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., results: _Optional[_Iterable[_Union[RankedCase, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("model", "case_key")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CASE_KEY_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    case_key: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., case_key: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("case",)
    CASE_FIELD_NUMBER: _ClassVar[int]
    case: _common_pb2.Case
    def __init__(self, case: _Optional[_Union[_common_pb2.Case, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("model", "case_key")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CASE_KEY_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    case_key: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., case_key: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("model", "num_cases", "index_bytes", "backend")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_CASES_FIELD_NUMBER: _ClassVar[int]
    INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    num_cases: int
    index_bytes: int
    backend: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., num_cases: _Optional[int] = ..., index_bytes: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...
