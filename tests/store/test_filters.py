"""SearchFilter validation and the Milvus expressions built from it (pure; the store tests run them)."""

import json

import pytest

from lungsearch.errors import InvalidRequestError
from lungsearch.store import SearchFilter, to_milvus_expr


def test_empty_filter_builds_no_expression():
    assert SearchFilter().is_empty
    assert to_milvus_expr(None) == ""
    assert to_milvus_expr(SearchFilter()) == ""


def test_all_clauses_are_joined_with_and():
    f = SearchFilter(modality="cxr", view="PA", labels_any=("A", "B"), labels_all=("C",), labels_none=("D",))
    assert to_milvus_expr(f) == (
        'modality == "cxr" and view == "PA" and array_contains_any(labels, ["A", "B"]) '
        'and array_contains_all(labels, ["C"]) and not array_contains_any(labels, ["D"])'
    )


@pytest.mark.parametrize("label", ['x" or 1==1 or "', "back\\slash", "it's", "é ü 肺", '"]) or (["'])
def test_labels_are_json_string_literals(label):
    expr = to_milvus_expr(SearchFilter(labels_any=(label,)))
    literal = expr[len("array_contains_any(labels, [") : -2]
    # The literal decodes back to exactly the label: no way to close the string early.
    assert json.loads(literal) == label


@pytest.mark.parametrize("bad", ["a\x00b", "line\nbreak", "x" * 129])
def test_control_characters_and_long_values_are_rejected(bad):
    with pytest.raises(InvalidRequestError) as e:
        SearchFilter(labels_any=(bad,))
    assert bad not in str(e.value)  # the message never echoes the value


def test_bare_string_is_one_label_and_duplicates_collapse():
    assert SearchFilter(labels_any="Nodule").labels_any == ("Nodule",)
    assert SearchFilter(labels_all=("A", "A", "B")).labels_all == ("A", "B")


def test_too_many_labels_rejected():
    with pytest.raises(InvalidRequestError):
        SearchFilter(labels_none=tuple(f"l{i}" for i in range(65)))
