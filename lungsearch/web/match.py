"""Why a retrieved case matches a query, as pure functions (no Ray, no torch, no gRPC).

* :func:`shared_phrases`: the 1-3 word phrases (stop words removed, lower-case) that two
  de-identified report excerpts both contain, with their character spans in each, longest first,
  and a shorter phrase dropped where a longer shared phrase already covers every occurrence;
* :func:`predicted_labels`: the labels the model gives a query (probability >= 0.5, else the top
  one): the query's side of "the labels they share";
* :func:`shared_labels` and :func:`choose_label`: which label both heat maps explain.

Example:
    >>> [p.phrase for p in shared_phrases("Small left pleural effusion.", "Left pleural effusion, stable.")]
    ['left pleural effusion']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

__all__ = [
    "Span",
    "SharedPhrase",
    "STOPWORDS",
    "NEGATIONS",
    "tokens",
    "shared_phrases",
    "predicted_labels",
    "shared_labels",
    "choose_label",
    "MAX_NGRAM",
    "MAX_PHRASES",
]

#: Longest phrase compared (words).
MAX_NGRAM = 3
#: Most phrases returned (a page highlights a few, not every shared word).
MAX_PHRASES = 20

# Function words, section headers and report boilerplate that every report shares (a match on
# "the", "seen" or IU X-ray's de-identification mark "XXXX" says nothing). Negations ("no",
# "without") stay out of this list on purpose: "no effusion" and "effusion" are different
# findings, and keeping "no" lets the trigram tell them apart.
STOPWORDS = frozenset(
    """
a an and are as at be been being by for from has have in is it its of on or that the there these this to was were
with which while who will would than then into onto upon also both either each other such per via
may might can could should seen noted identified demonstrated appear appears appearing
findings impression comparison indication history technique xxxx
""".split()
)
# Kept inside phrases ("no pneumothorax") but never a phrase on their own.
NEGATIONS = frozenset({"no", "not", "without", "negative", "free"})

_WORD = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*")


@dataclass(frozen=True)
class Span:
    """Character offsets ``[start, end)`` into an excerpt."""

    start: int
    end: int


@dataclass
class SharedPhrase:
    """A phrase both excerpts contain, with where it occurs in each."""

    phrase: str
    query_spans: list[Span] = field(default_factory=list)
    case_spans: list[Span] = field(default_factory=list)


def tokens(text: str) -> list[tuple[str, int, int]]:
    """``(lower-case word, start, end)`` for every word of ``text``, stop words included (spans of a
    phrase run from its first word's start to its last word's end)."""
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text or "")]


def _ngrams(text: str, max_n: int) -> dict[str, list[Span]]:
    """Phrase -> spans. A phrase is a run of 1..max_n consecutive content words (stop words between
    them are skipped, so "opacity in the left base" yields "opacity left base"); it never starts or
    ends on a stop word, and never crosses a sentence end."""
    words = tokens(text)
    out: dict[str, list[Span]] = {}
    # split into sentences at . ; : ! ? so a phrase does not join two findings
    breaks = {m.start() for m in re.finditer(r"[.;:!?\n]", text or "")}
    sentence, current = [], 0
    bounds = sorted(breaks)
    bi = 0
    for _w, s, _e in words:
        while bi < len(bounds) and bounds[bi] < s:
            current += 1
            bi += 1
        sentence.append(current)
    content = [(i, w, s, e) for i, (w, s, e) in enumerate(words) if w not in STOPWORDS and len(w) > 1]
    for a in range(len(content)):
        for n in range(1, max_n + 1):
            if a + n > len(content):
                break
            run = content[a : a + n]
            if len({sentence[r[0]] for r in run}) != 1:
                break
            if n == 1 and run[0][1] in NEGATIONS:
                continue
            phrase = " ".join(r[1] for r in run)
            out.setdefault(phrase, []).append(Span(run[0][2], run[-1][3]))
    return out


def _covered(span: Span, by: Iterable[Span]) -> bool:
    return any(b.start <= span.start and span.end <= b.end for b in by)


def shared_phrases(
    query_text: str, case_text: str, *, max_n: int = MAX_NGRAM, max_phrases: int = MAX_PHRASES
) -> list[SharedPhrase]:
    """Phrases (1..``max_n`` content words) that both texts contain, with their spans in each.

    Longest phrases first (then by first position in the case excerpt); a shorter phrase is left out
    when every one of its occurrences, in both texts, lies inside a longer shared phrase.

    Args:
        query_text, case_text: de-identified report excerpts.
        max_n: longest phrase in words.
        max_phrases: most phrases returned.
    """
    q, c = _ngrams(query_text, max_n), _ngrams(case_text, max_n)
    common = sorted(set(q) & set(c), key=lambda p: (-len(p.split()), c[p][0].start, p))
    kept: list[SharedPhrase] = []
    q_taken: list[Span] = []
    c_taken: list[Span] = []
    for phrase in common:
        qs = [s for s in q[phrase] if not _covered(s, q_taken)]
        cs = [s for s in c[phrase] if not _covered(s, c_taken)]
        if not qs or not cs:
            continue
        kept.append(SharedPhrase(phrase, qs, cs))
        q_taken.extend(qs)
        c_taken.extend(cs)
        if len(kept) >= max_phrases:
            break
    return kept


def predicted_labels(
    scores: Mapping[str, float] | Sequence[tuple[str, float]], *, threshold: float = 0.5
) -> list[tuple[str, float]]:
    """Labels the model gives a query: every score >= ``threshold``, else the single top one (a
    softmax over four classes may put none above 0.5); highest first. Empty scores -> []."""
    items = list(scores.items()) if isinstance(scores, Mapping) else list(scores)
    if not items:
        return []
    above = [(lab, float(s)) for lab, s in items if s >= threshold]
    if not above:
        lab, s = max(items, key=lambda kv: kv[1])
        above = [(lab, float(s))] if s > 0 else []
    return sorted(above, key=lambda kv: -kv[1])


def shared_labels(query_labels: Iterable[str], case_labels: Iterable[str]) -> list[str]:
    """The case's labels that the query also has, in the query's order (most probable first)."""
    case = set(case_labels)
    return [lab for lab in dict.fromkeys(query_labels) if lab in case]


def choose_label(
    requested: str, shared: Sequence[str], case_labels: Sequence[str], targets: Sequence[str], query_top: str = ""
) -> str:
    """The label both heat maps explain: the requested one, else the first shared label, else the
    case's first label the model knows, else the query's top label; "" when the model has no targets
    (its heat map then explains the retrieval embedding)."""
    known = set(targets)
    for lab in ([requested] if requested else []) + list(shared) + list(case_labels) + [query_top]:
        if lab and lab in known:
            return lab
    return ""
