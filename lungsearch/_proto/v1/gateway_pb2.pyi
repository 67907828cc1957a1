import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from lungsearch._proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IngestRequest(_message.Message):
    __slots__ = ("model", "images", "report", "labels", "source_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    report: _common_pb2.Report
    labels: _containers.RepeatedScalarFieldContainer[str]
    source_id: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., report: _Optional[_Union[_common_pb2.Report, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., source_id: _Optional[str] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("case_key", "created", "model", "radiomics_roi")
    CASE_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RADIOMICS_ROI_FIELD_NUMBER: _ClassVar[int]
    case_key: str
    created: bool
    model: _common_pb2.ModelRef
    radiomics_roi: _common_pb2.RadiomicsRoi
    def __init__(self, case_key: _Optional[str] = ..., created: _Optional[bool] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., radiomics_roi: _Optional[_Union[_common_pb2.RadiomicsRoi, _Mapping]] = ...) -> None: ...

class IngestStreamRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: IngestRequest
    chunk: ImageChunk
    def __init__(self, header: _Optional[_Union[IngestRequest, _Mapping]] = ..., chunk: _Optional[_Union[ImageChunk, _Mapping]] = ...) -> None: ...

class ImageChunk(_message.Message):
    __slots__ = ("image_index", "data", "last", "format")
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    image_index: int
    data: bytes
    last: bool
    format: _common_pb2.ImageFormat
    def __init__(self, image_index: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("model", "images", "report", "top_k", "filter")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    report: _common_pb2.Report
    top_k: int
    filter: _common_pb2.Filter
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., report: _Optional[_Union[_common_pb2.Report, _Mapping]] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("case", "score", "rank", "hamming_distance")
    CASE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    HAMMING_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    case: _common_pb2.Case
    score: float
    rank: int
    hamming_distance: int
    def __init__(self, case: _Optional[_Union[_common_pb2.Case, _Mapping]] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ..., hamming_distance: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("model", "hits", "radiomics_roi")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    RADIOMICS_ROI_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    radiomics_roi: _common_pb2.RadiomicsRoi
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., radiomics_roi: _Optional[_Union[_common_pb2.RadiomicsRoi, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "images", "report", "knn_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    KNN_K_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    report: _common_pb2.Report
    knn_k: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., report: _Optional[_Union[_common_pb2.Report, _Mapping]] = ..., knn_k: _Optional[int] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "probabilities", "knn_vote", "top_label", "radiomics_roi")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    KNN_VOTE_FIELD_NUMBER: _ClassVar[int]
    TOP_LABEL_FIELD_NUMBER: _ClassVar[int]
    RADIOMICS_ROI_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    probabilities: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    knn_vote: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    top_label: str
    radiomics_roi: _common_pb2.RadiomicsRoi
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., probabilities: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., knn_vote: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., top_label: _Optional[str] = ..., radiomics_roi: _Optional[_Union[_common_pb2.RadiomicsRoi, _Mapping]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "images", "report", "label")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    report: _common_pb2.Report
    label: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., report: _Optional[_Union[_common_pb2.Report, _Mapping]] = ..., label: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "label", "score", "heatmap_png", "overlay_png", "radiomics_roi")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    RADIOMICS_ROI_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    label: str
    score: float
    heatmap_png: bytes
    overlay_png: bytes
    radiomics_roi: _common_pb2.RadiomicsRoi
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., heatmap_png: _Optional[bytes] = ..., overlay_png: _Optional[bytes] = ..., radiomics_roi: _Optional[_Union[_common_pb2.RadiomicsRoi, _Mapping]] = ...) -> None: ...

class ExplainMatchRequest(_message.Message):
    __slots__ = ("model", "images", "report", "case_key", "label")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CASE_KEY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    report: _common_pb2.Report
    case_key: str
    label: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., report: _Optional[_Union[_common_pb2.Report, _Mapping]] = ..., case_key: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class TextSpan(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class SharedPhrase(_message.Message):
    __slots__ = ("phrase", "query_spans", "case_spans")
    PHRASE_FIELD_NUMBER: _ClassVar[int]
    QUERY_SPANS_FIELD_NUMBER: _ClassVar[int]
    CASE_SPANS_FIELD_NUMBER: _ClassVar[int]
    phrase: str
    query_spans: _containers.RepeatedCompositeFieldContainer[TextSpan]
    case_spans: _containers.RepeatedCompositeFieldContainer[TextSpan]
    def __init__(self, phrase: _Optional[str] = ..., query_spans: _Optional[_Iterable[_Union[TextSpan, _Mapping]]] = ..., case_spans: _Optional[_Iterable[_Union[TextSpan, _Mapping]]] = ...) -> None: ...

class ExplainMatchResponse(_message.Message):
    __slots__ = ("model", "label", "shared_labels", "case", "query_excerpt", "shared_phrases", "query_heatmap_png", "query_overlay_png", "case_heatmap_png", "case_overlay_png", "case_image_available", "query_labels", "radiomics_roi")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SHARED_LABELS_FIELD_NUMBER: _ClassVar[int]
    CASE_FIELD_NUMBER: _ClassVar[int]
    QUERY_EXCERPT_FIELD_NUMBER: _ClassVar[int]
    SHARED_PHRASES_FIELD_NUMBER: _ClassVar[int]
    QUERY_HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    QUERY_OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    CASE_HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    CASE_OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    CASE_IMAGE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    QUERY_LABELS_FIELD_NUMBER: _ClassVar[int]
    RADIOMICS_ROI_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    label: str
    shared_labels: _containers.RepeatedScalarFieldContainer[str]
    case: _common_pb2.Case
    query_excerpt: str
    shared_phrases: _containers.RepeatedCompositeFieldContainer[SharedPhrase]
    query_heatmap_png: bytes
    query_overlay_png: bytes
    case_heatmap_png: bytes
    case_overlay_png: bytes
    case_image_available: bool
    query_labels: _containers.RepeatedCompositeFieldContainer[_common_pb2.LabelScore]
    radiomics_roi: _common_pb2.RadiomicsRoi
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., label: _Optional[str] = ..., shared_labels: _Optional[_Iterable[str]] = ..., case: _Optional[_Union[_common_pb2.Case, _Mapping]] = ..., query_excerpt: _Optional[str] = ..., shared_phrases: _Optional[_Iterable[_Union[SharedPhrase, _Mapping]]] = ..., query_heatmap_png: _Optional[bytes] = ..., query_overlay_png: _Optional[bytes] = ..., case_heatmap_png: _Optional[bytes] = ..., case_overlay_png: _Optional[bytes] = ..., case_image_available: _Optional[bool] = ..., query_labels: _Optional[_Iterable[_Union[_common_pb2.LabelScore, _Mapping]]] = ..., radiomics_roi: _Optional[_Union[_common_pb2.RadiomicsRoi, _Mapping]] = ...) -> None: ...

class GetCaseRequest(_message.Message):
    __slots__ = ("model", "case_key")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CASE_KEY_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    case_key: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., case_key: _Optional[str] = ...) -> None: ...

class GetCaseResponse(_message.Message):
    __slots__ = ("case",)
    CASE_FIELD_NUMBER: _ClassVar[int]
    case: _common_pb2.Case
    def __init__(self, case: _Optional[_Union[_common_pb2.Case, _Mapping]] = ...) -> None: ...

class DeleteCaseRequest(_message.Message):
    __slots__ = ("model", "case_key")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CASE_KEY_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    case_key: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., case_key: _Optional[str] = ...) -> None: ...

class DeleteCaseResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: str
    def __init__(self, profile: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "live", "modality", "targets", "input_size", "embedding_dim", "code_bits", "metrics", "created_at", "num_cases", "synthetic_data")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    CODE_BITS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    NUM_CASES_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_DATA_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    live: bool
    modality: _common_pb2.Modality
    targets: _containers.RepeatedScalarFieldContainer[str]
    input_size: int
    embedding_dim: int
    code_bits: int
    metrics: _containers.ScalarMap[str, float]
    created_at: _timestamp_pb2.Timestamp
    num_cases: int
    synthetic_data: bool
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., live: _Optional[bool] = ..., modality: _Optional[_Union[_common_pb2.Modality, str]] = ..., targets: _Optional[_Iterable[str]] = ..., input_size: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., code_bits: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., num_cases: _Optional[int] = ..., synthetic_data: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ActivateModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class ActivateModelResponse(_message.Message):
    __slots__ = ("previous", "live")
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    previous: _common_pb2.ModelRef
    live: _common_pb2.ModelRef
    def __init__(self, previous: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., live: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...
