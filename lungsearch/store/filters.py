"""Typed metadata filters (``lungsearch.v1.Filter``) and their safe translation to Milvus expressions.

User-supplied labels never reach a Milvus expression as raw text: every value is validated (no
control characters, bounded length) and then written as a JSON string literal, whose escaping
(``\\"`` and ``\\\\``) the Milvus expression parser reads back exactly. A test feeds injection
attempts through this path against a real milvus-lite file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lungsearch.errors import InvalidRequestError

__all__ = ["SearchFilter", "to_milvus_expr", "MAX_FILTER_LABELS"]

#: Most labels accepted in one filter list.
MAX_FILTER_LABELS = 64
_MAX_VALUE_CHARS = 128


def _clean(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"filter {what} must be a string", code="bad_filter", field=f"filter.{what}")
    if len(value) > _MAX_VALUE_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidRequestError(
            f"filter {what} must be at most {_MAX_VALUE_CHARS} characters without control characters",
            code="bad_filter",
            field=f"filter.{what}",
        )
    return value


def _clean_labels(values, what: str) -> tuple[str, ...]:
    if isinstance(values, str):  # a bare string would otherwise be split into characters
        values = (values,)
    values = tuple(dict.fromkeys(_clean(v, what) for v in values))
    if len(values) > MAX_FILTER_LABELS:
        raise InvalidRequestError(
            f"filter {what} accepts at most {MAX_FILTER_LABELS} labels", code="bad_filter", field=f"filter.{what}"
        )
    return values


@dataclass(frozen=True)
class SearchFilter:
    """Metadata filter applied before top-k. Empty fields do not filter.

    Attributes:
        modality: keep cases of this modality ("cxr", "ct", ...).
        view: keep cases of this view ("PA", "AP", "LATERAL", "AXIAL").
        labels_any: keep cases carrying at least one of these labels.
        labels_all: keep cases carrying every one of these labels.
        labels_none: drop cases carrying any of these labels.

    Example:
        >>> SearchFilter(modality="cxr", labels_any=("Nodule",)).is_empty
        False
    """

    modality: str = ""
    view: str = ""
    labels_any: tuple[str, ...] = ()
    labels_all: tuple[str, ...] = ()
    labels_none: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", _clean(self.modality, "modality"))
        object.__setattr__(self, "view", _clean(self.view, "view"))
        for name in ("labels_any", "labels_all", "labels_none"):
            object.__setattr__(self, name, _clean_labels(getattr(self, name), name))

    @property
    def is_empty(self) -> bool:
        return not (self.modality or self.view or self.labels_any or self.labels_all or self.labels_none)


def _lit(value: str) -> str:
    # JSON string literal: double-quoted with \" and \\ escapes, which Milvus's parser accepts;
    # _clean has already rejected control characters, so no \uXXXX escapes are produced for them.
    return json.dumps(value, ensure_ascii=False)


def _list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_lit(v) for v in values) + "]"


def to_milvus_expr(flt: SearchFilter | None, *, labels_field: str = "labels") -> str:
    """Build the Milvus boolean expression for ``flt`` ("" when it does not filter).

    Args:
        flt: the typed filter (None = no filter).
        labels_field: name of the ARRAY<VARCHAR> labels field.

    Returns:
        An expression such as ``modality == "cxr" and array_contains_any(labels, ["Nodule"])``.
    """
    if flt is None or flt.is_empty:
        return ""
    parts: list[str] = []
    if flt.modality:
        parts.append(f"modality == {_lit(flt.modality)}")
    if flt.view:
        parts.append(f"view == {_lit(flt.view)}")
    if flt.labels_any:
        parts.append(f"array_contains_any({labels_field}, {_list(flt.labels_any)})")
    if flt.labels_all:
        parts.append(f"array_contains_all({labels_field}, {_list(flt.labels_all)})")
    if flt.labels_none:
        parts.append(f"not array_contains_any({labels_field}, {_list(flt.labels_none)})")
    return " and ".join(parts)
