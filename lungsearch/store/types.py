"""Value types of the store: what is written to Milvus and what searches return.

Nothing here carries PHI: a case is named by its keyed hash (``lungsearch.data.deid.case_key``),
report excerpts are de-identified before they reach the store.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from lungsearch.errors import InvalidRequestError

__all__ = [
    "StoredCase",
    "Hit",
    "UpsertResult",
    "CaseBatch",
    "validate_case_key",
    "MAX_KEY_CHARS",
    "MAX_LABELS",
    "MAX_LABEL_CHARS",
    "MAX_EXCERPT_BYTES",
]

#: Longest accepted case key (keyed hashes are 32 hex characters; room for prefixes).
MAX_KEY_CHARS = 128
#: Most labels one case may carry, and the longest label (Milvus ARRAY capacity / VARCHAR length).
MAX_LABELS = 64
MAX_LABEL_CHARS = 128
#: Report excerpts are cut to this many UTF-8 bytes (a Milvus VARCHAR's max_length counts bytes).
MAX_EXCERPT_BYTES = 2048

# Keys reach Milvus primary-key expressions built by pymilvus; a closed alphabet keeps those safe.
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,%d}$" % MAX_KEY_CHARS)


def validate_case_key(key: str) -> str:
    """Return ``key`` if it is a well-formed case key, else raise InvalidRequestError (PHI-free)."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise InvalidRequestError(
            f"case key must be 1-{MAX_KEY_CHARS} characters of [A-Za-z0-9_.:-]", code="bad_case_key", field="case_key"
        )
    return key


def _check_text(value: str, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{what} must be a string", code=f"bad_{what}", field=what)
    if len(value) > max_chars or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidRequestError(
            f"{what} must be at most {max_chars} characters without control characters", code=f"bad_{what}", field=what
        )
    return value


def _truncate_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    # Cut on a character boundary: decoding with "ignore" drops a split trailing sequence.
    return data[:max_bytes].decode("utf-8", errors="ignore")


@dataclass
class StoredCase:
    """One case as the store keeps it (the Milvus row and the in-memory index row).

    Attributes:
        case_key: keyed hash of the case (primary key); ``[A-Za-z0-9_.:-]``, at most 128 characters.
        modality: "cxr", "ct" or "mr" (as ``ImageMeta.modality``).
        view: "PA", "AP", "LATERAL", "AXIAL" or "".
        labels: diagnoses in the profile's vocabulary.
        report_excerpt: de-identified report excerpt, cut to 2048 UTF-8 bytes.
        embedding: float32 [D] (cosine is used, so the norm does not matter).
        code: packed binary code (``lungsearch.models.hashing.pack_codes`` layout: bit i is bit i%8 of
            byte i//8), or ``b""`` for profiles without codes.
        ingested_at: seconds since the epoch.
        num_images: images in the case (1 for a radiograph, the slice count of a CT series).
        model_version: version of the model that produced ``embedding`` and ``code``.

    Example:
        >>> c = StoredCase("ab12", "cxr", "PA", ["Nodule"], "small nodule", np.ones(4, np.float32))
        >>> c.validate(embedding_dim=4, code_bits=0).labels
        ['Nodule']
    """

    case_key: str
    modality: str
    view: str
    labels: list[str]
    report_excerpt: str
    embedding: np.ndarray
    code: bytes = b""
    ingested_at: float = field(default_factory=time.time)
    num_images: int = 1
    model_version: str = ""

    def validate(self, *, embedding_dim: int | None = None, code_bits: int | None = None) -> "StoredCase":
        """Check and normalise fields in place; returns self.

        Args:
            embedding_dim: expected embedding length (None: any).
            code_bits: expected code length in bits (None: any; 0: the code must be empty).

        Raises:
            InvalidRequestError: a field is malformed (the message names the field, never a value).
        """
        validate_case_key(self.case_key)
        _check_text(self.modality, "modality", 16)
        _check_text(self.view, "view", 16)
        labels = list(self.labels)
        if len(labels) > MAX_LABELS:
            raise InvalidRequestError(
                f"a case may carry at most {MAX_LABELS} labels", code="too_many_labels", field="labels"
            )
        for label in labels:
            _check_text(label, "label", MAX_LABEL_CHARS)
        # Order-preserving de-duplication: labels are a set semantically.
        self.labels = list(dict.fromkeys(labels))
        self.report_excerpt = _truncate_utf8(str(self.report_excerpt or ""), MAX_EXCERPT_BYTES)
        emb = np.asarray(self.embedding, dtype=np.float32).reshape(-1)
        if emb.size == 0 or not np.all(np.isfinite(emb)):
            raise InvalidRequestError(
                "embedding must be a non-empty finite vector", code="bad_embedding", field="embedding"
            )
        if embedding_dim is not None and emb.size != embedding_dim:
            raise InvalidRequestError(
                f"embedding has {emb.size} dimensions, the collection expects {embedding_dim}",
                code="embedding_dim_mismatch",
                field="embedding",
            )
        self.embedding = emb
        code = bytes(self.code or b"")
        if code_bits is not None and len(code) * 8 != code_bits:
            raise InvalidRequestError(
                f"code has {len(code) * 8} bits, the collection expects {code_bits}",
                code="code_bits_mismatch",
                field="code",
            )
        self.code = code
        if not math.isfinite(float(self.ingested_at)):
            raise InvalidRequestError("ingested_at must be finite", code="bad_ingested_at", field="ingested_at")
        self.ingested_at = float(self.ingested_at)
        self.num_images = int(self.num_images)
        if self.num_images < 0:
            raise InvalidRequestError("num_images must be >= 0", code="bad_num_images", field="num_images")
        _check_text(self.model_version, "model_version", 128)
        return self


class Hit(NamedTuple):
    """One result of :meth:`CaseIndex.search`: ``(key, score, hamming)``.

    ``score`` is the cosine similarity when an embedding was compared, else ``1 - hamming / bits``;
    ``hamming`` is -1 when codes were not used.
    """

    key: str
    score: float
    hamming: int


@dataclass(frozen=True)
class UpsertResult:
    """What an upsert did: keys that were new, and keys that replaced an existing row."""

    inserted: int
    updated: int


@dataclass
class CaseBatch:
    """A columnar batch of stored cases (what :meth:`MilvusStore.iter_batches` yields).

    Columnar so that rebuilding a million-case index does not build a million dataclasses.
    """

    keys: list[str]
    embeddings: np.ndarray  # float32 [n, D]
    codes: np.ndarray  # uint8 [n, code_bits // 8] (zero columns when the collection has no codes)
    modalities: list[str]
    views: list[str]
    labels: list[list[str]]
    report_excerpts: list[str] | None = None
    ingested_at: np.ndarray | None = None
    num_images: np.ndarray | None = None
    model_versions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def cases(self) -> list[StoredCase]:
        """The batch as :class:`StoredCase` rows."""
        n = len(self.keys)
        excerpts = self.report_excerpts or [""] * n
        times = self.ingested_at if self.ingested_at is not None else np.zeros(n)
        nimg = self.num_images if self.num_images is not None else np.ones(n, dtype=np.int64)
        versions = self.model_versions or [""] * n
        return [
            StoredCase(
                case_key=self.keys[i],
                modality=self.modalities[i],
                view=self.views[i],
                labels=list(self.labels[i]),
                report_excerpt=excerpts[i],
                embedding=self.embeddings[i].copy(),
                code=self.codes[i].tobytes(),
                ingested_at=float(times[i]),
                num_images=int(nimg[i]),
                model_version=versions[i],
            )
            for i in range(n)
        ]
