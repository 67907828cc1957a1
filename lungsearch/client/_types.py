"""Typed inputs and results of the SDK (plain dataclasses, not protobuf messages).

Enums travel as short strings: modality ``"cxr" | "ct" | "mr" | ""`` (as in
``lungsearch.data.ImageMeta``), view ``"PA" | "AP" | "LATERAL" | "AXIAL" | ""``, image format
``"dicom" | "png" | "jpeg" | ""``. Every result has ``to_dict()`` returning JSON-ready values
(datetimes as ISO 8601 strings, bytes as base64).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lungsearch._proto.v1 import common_pb2, gateway_pb2

__all__ = [
    "ModelRef",
    "Filter",
    "Image",
    "Case",
    "SearchHit",
    "SearchResult",
    "Classification",
    "ExplainResult",
    "ModelInfo",
    "IngestResult",
    "ActivateResult",
    "HealthStatus",
    "RadiomicsRoi",
]

_MODALITY_TO_PROTO = {
    "": common_pb2.MODALITY_UNSPECIFIED,
    "cxr": common_pb2.MODALITY_CXR,
    "ct": common_pb2.MODALITY_CT,
    "mr": common_pb2.MODALITY_MR,
}
_MODALITY_FROM_PROTO = {v: k for k, v in _MODALITY_TO_PROTO.items()}
_VIEW_TO_PROTO = {
    "": common_pb2.VIEW_UNSPECIFIED,
    "PA": common_pb2.VIEW_PA,
    "AP": common_pb2.VIEW_AP,
    "LATERAL": common_pb2.VIEW_LATERAL,
    "AXIAL": common_pb2.VIEW_AXIAL,
}
_VIEW_FROM_PROTO = {v: k for k, v in _VIEW_TO_PROTO.items()}
_FORMAT_TO_PROTO = {
    "": common_pb2.IMAGE_FORMAT_UNSPECIFIED,
    "dicom": common_pb2.IMAGE_FORMAT_DICOM,
    "png": common_pb2.IMAGE_FORMAT_PNG,
    "jpeg": common_pb2.IMAGE_FORMAT_JPEG,
}


def canonical_modality(value: str | None) -> str:
    """``"cxr" | "ct" | "mr" | ""`` from a user spelling (``CR``/``DX`` are radiographs)."""
    key = (value or "").strip().lower()
    key = {"cr": "cxr", "dx": "cxr", "xray": "cxr", "x-ray": "cxr"}.get(key, key)
    if key not in _MODALITY_TO_PROTO:
        raise ValueError(f"unknown modality {value!r}; expected one of cxr, ct, mr")
    return key


def canonical_view(value: str | None) -> str:
    """``"PA" | "AP" | "LATERAL" | "AXIAL" | ""`` from a user spelling."""
    key = (value or "").strip().upper()
    key = {"LAT": "LATERAL", "LL": "LATERAL", "AX": "AXIAL"}.get(key, key)
    if key not in _VIEW_TO_PROTO:
        raise ValueError(f"unknown view {value!r}; expected one of PA, AP, LATERAL, AXIAL")
    return key


def modality_to_proto(value: str | None) -> int:
    return _MODALITY_TO_PROTO[canonical_modality(value)]


def view_to_proto(value: str | None) -> int:
    return _VIEW_TO_PROTO[canonical_view(value)]


def format_to_proto(value: str | None) -> int:
    key = (value or "").strip().lower()
    key = {"dcm": "dicom", "jpg": "jpeg"}.get(key, key)
    if key not in _FORMAT_TO_PROTO:
        raise ValueError(f"unknown image format {value!r}; expected one of dicom, png, jpeg")
    return _FORMAT_TO_PROTO[key]


def sniff_format(data: bytes) -> str:
    """``"dicom" | "png" | "jpeg" | ""`` from the leading bytes (the server sniffs again and decides)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return ""


def _ts(msg) -> datetime | None:
    """A ``google.protobuf.Timestamp`` as an aware UTC datetime; None when unset."""
    if msg is None or (msg.seconds == 0 and msg.nanos == 0):
        return None
    return datetime.fromtimestamp(msg.seconds + msg.nanos / 1e9, tz=timezone.utc)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _Result:
    """Mixin: ``to_dict()`` over the dataclass fields, JSON-ready."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (datetimes ISO 8601, bytes base64, nested results as dicts)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelRef(_Result):
    """Which trained pipeline to use: a profile and optionally a version ("" = the live version).

    Example:
        >>> ModelRef.parse("ct-ild@20261124-1953-ab12cd")
        ModelRef(profile='ct-ild', version='20261124-1953-ab12cd')
        >>> str(ModelRef("cxr-report"))
        'cxr-report'
    """

    profile: str = ""
    version: str = ""

    @classmethod
    def parse(cls, ref: "str | ModelRef | None") -> "ModelRef":
        """``"profile"``, ``"profile@version"``, a ``ModelRef`` or None (the server's default profile)."""
        if ref is None:
            return cls()
        if isinstance(ref, ModelRef):
            return ref
        if not isinstance(ref, str):
            raise TypeError(f"model must be 'profile' or 'profile@version', not {type(ref).__name__}")
        profile, _, version = ref.strip().partition("@")
        if "@" in version or (_ and not version) or (not profile and version):
            raise ValueError(f"malformed model reference {ref!r}; expected 'profile' or 'profile@version'")
        return cls(profile, version)

    @classmethod
    def from_proto(cls, msg: common_pb2.ModelRef) -> "ModelRef":
        return cls(msg.profile, msg.version)

    def to_proto(self) -> common_pb2.ModelRef:
        return common_pb2.ModelRef(profile=self.profile, version=self.version)

    def __str__(self) -> str:
        return f"{self.profile}@{self.version}" if self.version else self.profile


@dataclass(frozen=True)
class Filter(_Result):
    """Metadata filter for :meth:`search`. Empty fields do not filter; set fields combine with AND.

    Attributes:
        modality: ``"cxr"``, ``"ct"`` or ``"mr"``.
        view: ``"PA"``, ``"AP"``, ``"LATERAL"`` or ``"AXIAL"``.
        labels_any: the case has at least one of these labels.
        labels_all: the case has every one of these labels.
        labels_none: the case has none of these labels.

    Example:
        >>> Filter(modality="ct", labels_none=("normal",))
        Filter(modality='ct', view='', labels_any=(), labels_all=(), labels_none=('normal',))
        >>> Filter.parse(["modality=ct", "label=ggo,reticular"]).labels_any
        ('ggo', 'reticular')
    """

    modality: str = ""
    view: str = ""
    labels_any: tuple[str, ...] = ()
    labels_all: tuple[str, ...] = ()
    labels_none: tuple[str, ...] = ()

    _KEYS = {
        "modality": "modality",
        "view": "view",
        "label": "labels_any",
        "labels": "labels_any",
        "labels_any": "labels_any",
        "labels_all": "labels_all",
        "labels_none": "labels_none",
    }

    def __post_init__(self) -> None:
        for name in ("labels_any", "labels_all", "labels_none"):
            value = getattr(self, name)
            if isinstance(value, str):  # a lone label, not its characters
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        # Validate early, with a clear message, and store the canonical spelling.
        object.__setattr__(self, "modality", canonical_modality(self.modality))
        object.__setattr__(self, "view", canonical_view(self.view))

    @classmethod
    def coerce(cls, value: "Filter | Mapping[str, Any] | None") -> "Filter | None":
        """A ``Filter`` from a ``Filter``, a mapping of its field names, or None."""
        if value is None or isinstance(value, Filter):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(
                    f"unknown filter field(s) {sorted(unknown)}; expected "
                    "modality, view, labels_any, labels_all, labels_none"
                )
            return cls(**value)
        raise TypeError(f"filters must be a Filter or a mapping, not {type(value).__name__}")

    @classmethod
    def parse(cls, expressions: Iterable[str]) -> "Filter":
        """Build a filter from ``key=value[,value…]`` expressions (the CLI's ``--filter``).

        Keys: ``modality``, ``view``, ``label`` (= ``labels_any``), ``labels_any``, ``labels_all``,
        ``labels_none``; ``label!=X`` is shorthand for ``labels_none=X``. Repeated keys accumulate.
        """
        acc: dict[str, Any] = {"modality": "", "view": "", "labels_any": [], "labels_all": [], "labels_none": []}
        for expr in expressions:
            if "!=" in expr:
                key, value = expr.split("!=", 1)
                if key.strip() not in ("label", "labels", "labels_any"):
                    raise ValueError(f"'!=' works with 'label' only, not in {expr!r}")
                name = "labels_none"
            elif "=" in expr:
                key, value = expr.split("=", 1)
                name = cls._KEYS.get(key.strip().lower(), "")
                if not name:
                    raise ValueError(
                        f"unknown filter key {key.strip()!r} in {expr!r}; expected one of {sorted(cls._KEYS)}"
                    )
            else:
                raise ValueError(f"filter {expr!r} is not key=value")
            value = value.strip()
            if name in ("modality", "view"):
                acc[name] = value
            else:
                acc[name].extend(v.strip() for v in value.split(",") if v.strip())
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in acc.items()})

    def to_proto(self) -> common_pb2.Filter:
        return common_pb2.Filter(
            modality=modality_to_proto(self.modality),
            view=view_to_proto(self.view),
            labels_any=list(self.labels_any),
            labels_all=list(self.labels_all),
            labels_none=list(self.labels_none),
        )


@dataclass(frozen=True)
class Image:
    """One image to send: the raw file bytes (DICOM part-10, PNG or JPEG) plus optional hints.

    Most calls accept a path or bytes directly; use ``Image`` to pass a modality or view hint for a
    PNG/JPEG (DICOM headers always win on the server).

    Example:
        >>> Image(b"\\x89PNG\\r\\n\\x1a\\n...", modality="cxr", view="PA").format
        'png'
    """

    data: bytes
    format: str = ""
    modality: str = ""
    view: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Image.data must be bytes, not {type(self.data).__name__}")
        object.__setattr__(self, "data", bytes(self.data))
        object.__setattr__(self, "format", (self.format or sniff_format(self.data)).lower())
        format_to_proto(self.format)
        object.__setattr__(self, "modality", canonical_modality(self.modality))
        object.__setattr__(self, "view", canonical_view(self.view))

    @classmethod
    def from_path(cls, path: str | os.PathLike, **hints: str) -> "Image":
        return cls(Path(path).read_bytes(), **hints)

    def to_proto(self) -> common_pb2.Image:
        return common_pb2.Image(
            data=self.data,
            format=format_to_proto(self.format),
            modality=modality_to_proto(self.modality),
            view=view_to_proto(self.view),
        )


@dataclass(frozen=True)
class Case(_Result):
    """A stored, de-identified case.

    Attributes:
        case_key: the server's keyed hash of the study (never a raw identifier).
        modality: ``"cxr"``, ``"ct"``, ``"mr"`` or "".
        view: ``"PA"``, ``"AP"``, ``"LATERAL"``, ``"AXIAL"`` or "".
        labels: the case's known diagnoses.
        report_excerpt: the start of its report, as stored.
        model: the model (profile@version) whose index holds it.
        ingested_at: when it was (last) ingested, UTC; None if the server did not say.
        num_images: 1 for a radiograph, the slice count for a CT series.
    """

    case_key: str
    modality: str = ""
    view: str = ""
    labels: tuple[str, ...] = ()
    report_excerpt: str = ""
    model: ModelRef = field(default_factory=ModelRef)
    ingested_at: datetime | None = None
    num_images: int = 0

    @classmethod
    def from_proto(cls, msg: common_pb2.Case) -> "Case":
        return cls(
            case_key=msg.case_key,
            modality=_MODALITY_FROM_PROTO.get(msg.modality, ""),
            view=_VIEW_FROM_PROTO.get(msg.view, ""),
            labels=tuple(msg.labels),
            report_excerpt=msg.report_excerpt,
            model=ModelRef.from_proto(msg.model),
            ingested_at=_ts(msg.ingested_at) if msg.HasField("ingested_at") else None,
            num_images=msg.num_images,
        )


@dataclass(frozen=True)
class RadiomicsRoi(_Result):
    """Radiomics read the whole thorax instead of the lungs: the lung mask of the query (or of the
    ingested study) failed its plausibility checks. Only profiles with radiomics (ct-ild) send it;
    results carry ``radiomics_roi=None`` when radiomics read the lungs or the profile has none.

    Attributes:
        whole_thorax: True (the flagged fallback of docs/masks.md).
        reason: the failed check: ``"empty"``, ``"components"``, ``"area"``, ``"position"``,
            ``"balance"`` or ``"modality"``.
        message: e.g. ``"radiomics read the whole thorax: lung mask empty"``.
    """

    whole_thorax: bool = True
    reason: str = ""
    message: str = ""

    @classmethod
    def from_response(cls, msg: Any) -> "RadiomicsRoi | None":
        """The ``radiomics_roi`` of a response, or None when the server did not set it."""
        if not msg.HasField("radiomics_roi"):
            return None
        r = msg.radiomics_roi
        return cls(whole_thorax=r.whole_thorax, reason=r.reason, message=r.message)


@dataclass(frozen=True)
class SearchHit(_Result):
    """One similar case.

    Attributes:
        case: the stored case.
        score: similarity (higher is closer; cosine for float embeddings).
        rank: 1-based position.
        hamming_distance: Hamming distance of the binary codes, or None when codes were not used.
    """

    case: Case
    score: float
    rank: int
    hamming_distance: int | None = None

    @classmethod
    def from_proto(cls, msg: gateway_pb2.SearchHit) -> "SearchHit":
        return cls(
            case=Case.from_proto(msg.case),
            score=float(msg.score),
            rank=msg.rank,
            hamming_distance=None if msg.hamming_distance < 0 else msg.hamming_distance,
        )


@dataclass(frozen=True)
class SearchResult(_Result):
    """The answer to :meth:`search`: the hits best first, and the model that produced them.

    Iterating a ``SearchResult`` iterates its hits; ``len()`` is the number of hits.
    """

    model: ModelRef
    hits: tuple[SearchHit, ...] = ()
    radiomics_roi: RadiomicsRoi | None = None  # set when the query's radiomics read the whole thorax

    @classmethod
    def from_proto(cls, msg: gateway_pb2.SearchResponse) -> "SearchResult":
        return cls(
            model=ModelRef.from_proto(msg.model),
            hits=tuple(SearchHit.from_proto(h) for h in msg.hits),
            radiomics_roi=RadiomicsRoi.from_response(msg),
        )

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> SearchHit:
        return self.hits[i]


@dataclass(frozen=True)
class Classification(_Result):
    """The answer to :meth:`classify`.

    Attributes:
        model: the model that answered.
        probabilities: label -> probability from the profile's head, in the model's target order.
        knn_vote: label -> share of the k nearest stored cases carrying it.
        top_label: the predicted label.
        radiomics_roi: set when the query's radiomics read the whole thorax (:class:`RadiomicsRoi`).
    """

    model: ModelRef
    probabilities: dict[str, float] = field(default_factory=dict)
    knn_vote: dict[str, float] = field(default_factory=dict)
    top_label: str = ""
    radiomics_roi: RadiomicsRoi | None = None

    @classmethod
    def from_proto(cls, msg: gateway_pb2.ClassifyResponse) -> "Classification":
        return cls(
            model=ModelRef.from_proto(msg.model),
            probabilities={s.label: float(s.score) for s in msg.probabilities},
            knn_vote={s.label: float(s.score) for s in msg.knn_vote},
            top_label=msg.top_label,
            radiomics_roi=RadiomicsRoi.from_response(msg),
        )

    @property
    def top_score(self) -> float:
        """Probability of ``top_label`` (its kNN share when the profile has no head; 0.0 if absent)."""
        return self.probabilities.get(self.top_label, self.knn_vote.get(self.top_label, 0.0))


@dataclass(frozen=True)
class ExplainResult(_Result):
    """A Grad-CAM explanation.

    Attributes:
        model: the model that answered.
        label: the explained label.
        score: the model's probability for it.
        heatmap_png: 8-bit gray heat map at the model's input size, PNG bytes.
        overlay_png: RGB heat map blended over the preprocessed input, PNG bytes ("" if not sent).
        radiomics_roi: set when the query's radiomics read the whole thorax (:class:`RadiomicsRoi`).
    """

    model: ModelRef
    label: str
    score: float
    heatmap_png: bytes
    overlay_png: bytes = b""
    radiomics_roi: RadiomicsRoi | None = None

    @classmethod
    def from_proto(cls, msg: gateway_pb2.ExplainResponse) -> "ExplainResult":
        return cls(
            model=ModelRef.from_proto(msg.model),
            label=msg.label,
            score=float(msg.score),
            heatmap_png=msg.heatmap_png,
            overlay_png=msg.overlay_png,
            radiomics_roi=RadiomicsRoi.from_response(msg),
        )

    def save(self, path: str | os.PathLike, *, overlay: bool = False) -> Path:
        """Write the heat map (or the overlay) PNG to ``path`` and return the path."""
        data = self.overlay_png if overlay else self.heatmap_png
        if not data:
            raise ValueError("the server sent no overlay" if overlay else "the server sent no heat map")
        out = Path(path)
        out.write_bytes(data)
        return out


@dataclass(frozen=True)
class SharedPhrase(_Result):
    """A report phrase both excerpts contain.

    Attributes:
        phrase: 1-3 lower-case words, stop words removed.
        query_spans: ``(start, end)`` character offsets into :attr:`MatchExplanation.query_excerpt`.
        case_spans: offsets into the case's ``report_excerpt``.
    """

    phrase: str
    query_spans: tuple[tuple[int, int], ...] = ()
    case_spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class MatchExplanation(_Result):
    """Why a retrieved case matches a query (:meth:`LungSearchClient.explain_match`).

    Attributes:
        model: the model that answered.
        label: the label both heat maps explain ("" when the model has none to explain).
        shared_labels: the case's labels the model also predicts for the query.
        case: the retrieved case as stored.
        query_excerpt: the query report as the server cuts it (what the spans index).
        shared_phrases: report phrases in both excerpts, with their spans.
        query_heatmap_png, query_overlay_png: Grad-CAM on the query (PNG; b"" without a query image).
        case_heatmap_png, case_overlay_png: Grad-CAM on the case's stored thumbnail (b"" when none is kept).
        case_image_available: the server keeps a thumbnail of the case.
        query_labels: the query's predicted labels and scores, most probable first.
        radiomics_roi: set when the query's radiomics read the whole thorax (:class:`RadiomicsRoi`).
    """

    model: ModelRef
    label: str
    shared_labels: tuple[str, ...]
    case: Case
    query_excerpt: str = ""
    shared_phrases: tuple[SharedPhrase, ...] = ()
    query_heatmap_png: bytes = b""
    query_overlay_png: bytes = b""
    case_heatmap_png: bytes = b""
    case_overlay_png: bytes = b""
    case_image_available: bool = False
    query_labels: dict[str, float] = field(default_factory=dict)
    radiomics_roi: RadiomicsRoi | None = None

    @classmethod
    def from_proto(cls, msg: gateway_pb2.ExplainMatchResponse) -> "MatchExplanation":
        phrases = tuple(
            SharedPhrase(
                p.phrase, tuple((s.start, s.end) for s in p.query_spans), tuple((s.start, s.end) for s in p.case_spans)
            )
            for p in msg.shared_phrases
        )
        return cls(
            model=ModelRef.from_proto(msg.model),
            label=msg.label,
            shared_labels=tuple(msg.shared_labels),
            case=Case.from_proto(msg.case),
            query_excerpt=msg.query_excerpt,
            shared_phrases=phrases,
            query_heatmap_png=msg.query_heatmap_png,
            query_overlay_png=msg.query_overlay_png,
            case_heatmap_png=msg.case_heatmap_png,
            case_overlay_png=msg.case_overlay_png,
            case_image_available=msg.case_image_available,
            query_labels={x.label: float(x.score) for x in msg.query_labels},
            radiomics_roi=RadiomicsRoi.from_response(msg),
        )


@dataclass(frozen=True)
class ModelInfo(_Result):
    """A trained model the server can use (from its model card).

    Attributes:
        model: profile and version.
        live: whether this is the live version of its profile.
        modality: ``"cxr"`` or ``"ct"``.
        targets: output label order.
        input_size, embedding_dim: model geometry.
        code_bits: binary-code length (0 when the profile does not hash).
        metrics: evaluation metrics from the model card.
        created_at: when it was trained (UTC).
        num_cases: cases in its index.
        synthetic_data: trained on phantom (synthetic) data: its metrics say nothing about real images.
    """

    model: ModelRef
    live: bool = False
    modality: str = ""
    targets: tuple[str, ...] = ()
    input_size: int = 0
    embedding_dim: int = 0
    code_bits: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: datetime | None = None
    num_cases: int = 0
    synthetic_data: bool = False

    @classmethod
    def from_proto(cls, msg: gateway_pb2.ModelInfo) -> "ModelInfo":
        return cls(
            model=ModelRef.from_proto(msg.model),
            live=msg.live,
            modality=_MODALITY_FROM_PROTO.get(msg.modality, ""),
            targets=tuple(msg.targets),
            input_size=msg.input_size,
            embedding_dim=msg.embedding_dim,
            code_bits=msg.code_bits,
            metrics={k: float(v) for k, v in sorted(msg.metrics.items())},
            created_at=_ts(msg.created_at) if msg.HasField("created_at") else None,
            num_cases=msg.num_cases,
            synthetic_data=msg.synthetic_data,
        )


@dataclass(frozen=True)
class IngestResult(_Result):
    """The answer to :meth:`ingest`: the case key, and whether the case is new (False: updated).

    ``radiomics_roi`` is set when the study's radiomics read the whole thorax (its lung mask
    failed): the stored vector was made from them. The store does not keep the flag (see
    docs/masks.md), so this answer is the one place it is reported for an ingested case.
    """

    case_key: str
    created: bool
    model: ModelRef = field(default_factory=ModelRef)
    radiomics_roi: RadiomicsRoi | None = None

    @classmethod
    def from_proto(cls, msg: gateway_pb2.IngestResponse) -> "IngestResult":
        return cls(
            case_key=msg.case_key,
            created=msg.created,
            model=ModelRef.from_proto(msg.model),
            radiomics_roi=RadiomicsRoi.from_response(msg),
        )


@dataclass(frozen=True)
class ActivateResult(_Result):
    """The answer to :meth:`activate_model`: the previously live and the now live version."""

    previous: ModelRef
    live: ModelRef

    @classmethod
    def from_proto(cls, msg: gateway_pb2.ActivateModelResponse) -> "ActivateResult":
        return cls(previous=ModelRef.from_proto(msg.previous), live=ModelRef.from_proto(msg.live))


@dataclass(frozen=True)
class HealthStatus(_Result):
    """The answer to :meth:`health`.

    Attributes:
        status: ``"SERVING"``, ``"NOT_SERVING"``, ``"UNKNOWN"`` or ``"SERVICE_UNKNOWN"``.
        service: the service asked about ("" = the whole server).
        source: which protocol answered: ``"grpc.health.v1"`` (standard) or ``"ray.serve"``
            (the Serve proxy's own ``Healthz``, used when the standard service is not registered).
        message: free text from the server, when it sent any.
    """

    status: str
    service: str = ""
    source: str = "grpc.health.v1"
    message: str = ""

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"
