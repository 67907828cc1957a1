"""Shared phrases, predicted and shared labels, the explained label (pure functions)."""

from __future__ import annotations

import pytest

from lungsearch.web.match import Span, choose_label, predicted_labels, shared_labels, shared_phrases, tokens


def _text(t: str, spans: list[Span]) -> list[str]:
    return [t[s.start : s.end] for s in spans]


def test_trigram_with_spans_in_both():
    q = "Small left pleural effusion. No pneumothorax."
    c = "Left pleural effusion, stable. No pneumothorax seen. Heart size normal."
    got = {p.phrase: p for p in shared_phrases(q, c)}
    assert list(got) == ["left pleural effusion", "no pneumothorax"]
    assert _text(q, got["left pleural effusion"].query_spans) == ["left pleural effusion"]
    assert _text(c, got["left pleural effusion"].case_spans) == ["Left pleural effusion"]
    assert _text(c, got["no pneumothorax"].case_spans) == ["No pneumothorax"]


def test_shorter_phrases_inside_a_longer_one_are_dropped_but_kept_elsewhere():
    q = "Right lower lobe opacity. Opacity also at the left apex."
    c = "Right lower lobe opacity and left apex opacity."
    phrases = [p.phrase for p in shared_phrases(q, c)]
    assert "right lower lobe" in phrases and "lower lobe opacity" in phrases
    assert "lobe" not in phrases and "right" not in phrases  # covered everywhere by the trigrams
    assert "opacity left apex" in phrases  # "also at the" / "and" are skipped inside the phrase


def test_stopwords_are_skipped_not_matched():
    q = "There is an opacity in the left base."
    c = "Opacity of the left base is seen."
    phrases = {p.phrase: p for p in shared_phrases(q, c)}
    assert "opacity left base" in phrases  # "in the" / "of the" skipped inside a phrase
    assert not {"the", "is", "in", "there", "seen"} & set(phrases)
    assert _text(q, phrases["opacity left base"].query_spans) == ["opacity in the left base"]


def test_negation_is_part_of_the_phrase():
    got = [p.phrase for p in shared_phrases("No effusion.", "Large effusion.")]
    assert got == ["effusion"]
    assert "no effusion" in [p.phrase for p in shared_phrases("No effusion.", "no effusion")]


def test_boilerplate_and_lone_negations_are_not_phrases():
    got = [p.phrase for p in shared_phrases("FINDINGS: No XXXX. No effusion.", "IMPRESSION: No XXXX. No nodule.")]
    assert got == []


def test_phrases_do_not_cross_sentences():
    got = [p.phrase for p in shared_phrases("Heart normal. Lungs clear.", "Heart normal lungs clear")]
    assert "normal lungs" not in got and "heart normal" in got and "lungs clear" in got


def test_empty_and_disjoint():
    assert shared_phrases("", "anything") == []
    assert shared_phrases("cardiomegaly", "pneumothorax") == []


def test_every_occurrence_is_reported():
    p = shared_phrases("nodule", "Nodule right. Nodule left.")[0]
    assert len(p.case_spans) == 2 and len(p.query_spans) == 1


def test_limit():
    words = " ".join(f"w{i}" for i in range(50))
    assert len(shared_phrases(words, words, max_phrases=5)) == 5


def test_tokens_keep_hyphenated_words():
    assert [t[0] for t in tokens("Ground-glass opacity")] == ["ground-glass", "opacity"]


@pytest.mark.parametrize(
    "scores, expected",
    [
        ({"A": 0.9, "B": 0.6, "C": 0.1}, ["A", "B"]),
        ({"A": 0.2, "B": 0.4, "C": 0.3}, ["B"]),  # softmax over several classes: none above 0.5
        ({}, []),
        ({"A": 0.0, "B": 0.0}, []),  # a kNN vote with no neighbours
        ([("x", 0.5), ("y", 0.7)], ["y", "x"]),
    ],
)
def test_predicted_labels(scores, expected):
    assert [lab for lab, _ in predicted_labels(scores)] == expected


def test_shared_and_chosen_label():
    targets = ["Normal", "Opacity", "Effusion"]
    assert shared_labels(["Effusion", "Opacity"], ["Opacity", "Effusion", "Other"]) == ["Effusion", "Opacity"]
    assert choose_label("", ["Effusion"], ["Opacity"], targets) == "Effusion"
    assert choose_label("Normal", ["Effusion"], ["Opacity"], targets) == "Normal"
    assert choose_label("", [], ["Other", "Opacity"], targets) == "Opacity"  # the case's first known label
    assert choose_label("", [], ["Other"], targets, "Normal") == "Normal"  # else the query's top label
    assert choose_label("", [], [], []) == ""
