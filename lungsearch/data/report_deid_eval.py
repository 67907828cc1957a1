"""Measuring :func:`~lungsearch.data.report_deid.scrub_report` on real report text with synthetic PHI.

The reports are the 3,955 real Indiana University chest X-ray reports (OpenI, NLMCXR) that ship
inside torchxrayvision (``torchxrayvision/data/NLMCXR_reports.tgz``), already de-identified by
their publisher (their own ``XXXX`` marks). PHI is made up here (seeded) and inserted at random
sentence boundaries, in the phrasings radiology reports use (signatures, "called to", headers,
comparison dates, ...). Two numbers come out:

* **recall**: the share of inserted PHI items none of whose identifying parts (each name word,
  the number, the date string, ...) is left in the scrubbed text more often than it occurs in the
  PHI-free original;
* **kept**: the share of the PHI-free reports' tokens (whitespace tokens) that the scrubber leaves
  unchanged (difflib alignment of the token sequences).

Bare names with no context (``"Alvarez Mireille tolerated the exam"``) are measured separately
(``bare_name_recall``) and are *not* part of ``recall``: without an NER model nothing finds them.

Used by ``benchmarks/report_deid.py`` (all reports) and the tests (a sample).
"""

from __future__ import annotations

import difflib
import random
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = ["PhiItem", "iu_xray_reports", "insert_phi", "evaluate", "REPORT_SECTIONS"]

#: Report sections read from the XML, in this order.
REPORT_SECTIONS = ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION")

# Synthetic names (made up here; chosen not to be English words found in the reports).
_FIRST = (
    "Mireille",
    "Tobias",
    "Anneliese",
    "Dashiell",
    "Priyanka",
    "Oluwaseun",
    "Ingrid",
    "Mateo",
    "Siobhan",
    "Kenji",
    "Fernanda",
    "Radek",
    "Yusuf",
    "Henrike",
    "Ximena",
    "Bartholomew",
    "Leocadia",
    "Thaddeus",
    "Nkechi",
    "Soren",
    "Ludmila",
    "Ezequiel",
    "Marguerite",
    "Jovan",
    "Aurelio",
    "Kalani",
    "Wenonah",
    "Cornelius",
    "Esperanza",
    "Dimitrios",
    "Giselle",
    "Ravindra",
    "Tamsin",
    "Augustin",
    "Zofia",
    "Ignatius",
    "Benedetta",
    "Lysander",
    "Oksana",
    "Quentin",
)
_LAST = (
    "Alvarez",
    "Okonkwo",
    "Lindqvist",
    "Brzezinski",
    "Ramachandran",
    "Fitzgerald",
    "Nakamura",
    "Vanderbilt",
    "Castellanos",
    "Oyelaran",
    "Kowalczyk",
    "Thibodeaux",
    "Abernathy",
    "Mukherjee",
    "Szymanski",
    "Delacroix",
    "Haverford",
    "Pemberton",
    "Zielinski",
    "Achterberg",
    "Montgomery",
    "Quintanilla",
    "Rasmussen",
    "Whitacre",
    "Yamaguchi",
    "Ekwueme",
    "Bergstrom",
    "Donnelly",
    "Iacobelli",
    "Stavros",
    "Holloway",
    "Ferraro",
    "Kirkpatrick",
    "Lachance",
    "Novak-Smith",
    "O'Halloran",
    "Pettersen",
    "Sandoval",
    "Trevino",
    "Underhill",
)
_CREDENTIALS = ("MD", "M.D.", "DO", "RN", "NP", "PA-C")
_STREETS = ("Maple", "Kessler", "North Meridian", "Old Orchard", "Hawthorne", "Fall Creek", "Lafayette", "Brookside")
_STREET_TYPES = ("Street", "St.", "Avenue", "Ave", "Road", "Boulevard", "Lane", "Drive", "Court", "Way")
_CITIES = (
    ("Indianapolis", "IN"),
    ("Carmel", "IN"),
    ("Fishers", "IN"),
    ("Bloomington", "IN"),
    ("Terre Haute", "IN"),
    ("Springfield", "IL"),
    ("Louisville", "KY"),
    ("Columbus", "OH"),
)
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class PhiItem:
    """One inserted PHI item: its category, the inserted sentence and the parts that must go."""

    category: str
    sentence: str
    parts: tuple[str, ...]


def _torchxrayvision_tgz() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.origin:
        raise FileNotFoundError("torchxrayvision is not installed (it ships the IU X-ray reports)")
    return Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz"


def iu_xray_reports(path: str | Path | None = None, *, limit: int | None = None) -> list[str]:
    """The IU X-ray report texts (sections joined as ``"FINDINGS: ... IMPRESSION: ..."``), in file order.

    Reports with no text in any section are skipped.
    """
    out: list[str] = []
    with tarfile.open(path or _torchxrayvision_tgz()) as tar:
        for member in sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")), key=lambda m: m.name
        ):
            root = ET.fromstring(tar.extractfile(member).read())
            sections = {el.get("Label"): (el.text or "").strip() for el in root.iter("AbstractText")}
            text = " ".join(f"{s}: {sections[s]}" for s in REPORT_SECTIONS if sections.get(s))
            if text:
                out.append(text)
            if limit is not None and len(out) >= limit:
                break
    return out


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1995, 2024), rng.randint(1, 12), rng.randint(1, 28)
    fmt = rng.randrange(7)
    return [
        f"{m:02d}/{d:02d}/{y}",
        f"{m}/{d}/{y % 100:02d}",
        f"{y}-{m:02d}-{d:02d}",
        f"{_MONTHS[m - 1]} {d}, {y}",
        f"{d} {_MONTHS[m - 1][:3]} {y}",
        f"{m}-{d}-{y}",
        f"{_MONTHS[m - 1][:3]}. {d}, {y}",
    ][fmt]


def _phone(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), _digits(rng, 4)
    return [f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"1-{a}-{b}-{c}"][rng.randrange(5)]


def make_phi(rng: random.Random, category: str) -> PhiItem:
    """One synthetic PHI sentence of ``category`` (see :data:`lungsearch.data.report_deid.CATEGORIES`;
    ``bare_name`` is a name with no context)."""
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    names = (first, *re.split(r"[-']", last))
    if category == "name":
        t = rng.randrange(10)
        sentence = [
            f"Findings discussed with Dr. {first} {last} at the time of dictation.",
            f"Results were called to {first} {last}, {rng.choice(_CREDENTIALS)}.",
            f"Dictated by: {last}, {first}",
            f"Electronically signed by {first} {last}, {rng.choice(_CREDENTIALS)}.",
            f"Patient: {last.upper()}, {first.upper()}.",
            f"Critical result communicated to Dr. {last} by telephone.",
            f"Mr. {first} {last} was informed of the results.",
            f"Referring physician: {first} {last}.",
            f"Patient name: {first} {last}.",
            f"Reviewed with Ms. {last}, who agrees.",
        ][t]
        parts = tuple(p for p in (names if t not in (5, 9) else names[1:]) if p)
        if t in (4,):
            parts = tuple(p.upper() for p in parts)
        return PhiItem("name", sentence, parts)
    if category == "bare_name":
        return PhiItem("bare_name", f"{first} {last} tolerated the examination well.", tuple(p for p in names if p))
    if category == "identifier":
        mrn = _digits(rng, rng.randint(6, 10))
        alt = f"{rng.choice('ABEHKMZ')}{_digits(rng, 7)}"
        ssn = f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{_digits(rng, 4)}"
        value, sentence = [
            (mrn, f"MRN: {mrn}."),
            (mrn, f"Medical record number {mrn}."),
            (alt, f"Patient ID: {alt}"),
            (mrn, f"Acct # {mrn}"),
            (ssn, f"SSN {ssn}."),
            (mrn, f"MR# {mrn}"),
            (alt, f"Encounter number: {alt}."),
        ][rng.randrange(7)]
        return PhiItem("identifier", sentence, (value,))
    if category == "accession":
        acc = [
            _digits(rng, rng.randint(7, 10)),
            f"{rng.choice(['CT', 'XR', 'RAD', 'A'])}{_digits(rng, 8)}",
            f"{rng.randint(1995, 2024)}-{_digits(rng, 6)}",
        ][rng.randrange(3)]
        sentence = [f"Accession number: {acc}.", f"ACC# {acc}", f"Accession {acc}.", f"Accession No. {acc}"][
            rng.randrange(4)
        ]
        return PhiItem("accession", sentence, (acc,))
    if category == "date":
        d = _date(rng)
        sentence = [
            f"Comparison is made to the study of {d}.",
            f"Exam date: {d}.",
            f"Prior radiograph dated {d}.",
            f"Findings unchanged since {d}.",
            f"Date of service {d}.",
        ][rng.randrange(5)]
        return PhiItem("date", sentence, (d,))
    if category == "phone":
        p = _phone(rng)
        sentence = [
            f"Please call {p} with questions.",
            f"The reading room can be reached at {p}.",
            f"Contact the ordering clinic at {p}.",
            f"Callback number {p}.",
        ][rng.randrange(4)]
        return PhiItem("phone", sentence, (p,))
    if category == "address":
        city, state = rng.choice(_CITIES)
        addr = (
            f"{rng.randint(1, 19999)} {rng.choice(_STREETS)} {rng.choice(_STREET_TYPES)}, {city}, {state} "
            f"{rng.randint(46000, 47999)}"
        )
        sentence = [f"Patient resides at {addr}.", f"Home address: {addr}.", f"Mailing address {addr}."][
            rng.randrange(3)
        ]
        return PhiItem("address", sentence, (addr.split(",")[0], city, addr.rsplit(" ", 1)[1]))
    if category == "age":
        age = rng.randint(90, 109)
        sentence = [
            f"{age}-year-old female with shortness of breath.",
            f"{age} year old male with cough.",
            f"Age: {age}.",
            f"The patient is a {age} y/o with chest pain.",
            f"Aged {age}, fall at home.",
        ][rng.randrange(5)]
        return PhiItem("age", sentence, (str(age),))
    raise ValueError(f"unknown PHI category {category!r}")


#: Categories inserted for ``recall`` (bare names are measured apart).
RECALL_CATEGORIES = ("name", "identifier", "accession", "date", "phone", "address", "age")


def insert_phi(text: str, rng: random.Random, items: Sequence[PhiItem]) -> str:
    """``text`` with each item's sentence inserted at a random sentence boundary (start and end included)."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    for item in items:
        sentences.insert(rng.randint(0, len(sentences)), item.sentence)
    return " ".join(sentences)


def _items_for(rng: random.Random, i: int, n: int, *, bare: bool) -> list[PhiItem]:
    """The PHI items of report ``i``: ``n`` categories in rotation (plus a bare name), redrawn until no
    two items share a part (a surname used twice would make a leak impossible to attribute)."""
    cats = [RECALL_CATEGORIES[(i * n + j) % len(RECALL_CATEGORIES)] for j in range(n)] + (["bare_name"] if bare else [])
    items: list[PhiItem] = []
    for c in cats:
        for _ in range(50):
            item = make_phi(rng, c)
            if not any(p in q or q in p for other in items for p in item.parts for q in other.parts):
                break
        items.append(item)
    return items


def _occurrences(part: str, text: str) -> int:
    return len(re.findall(rf"(?<![A-Za-z0-9]){re.escape(part)}(?![A-Za-z0-9])", text))


def _kept_tokens(original: str, scrubbed: str) -> tuple[int, int]:
    a, b = original.split(), scrubbed.split()
    same = sum(block.size for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks())
    return same, len(a)


def evaluate(
    scrub: Callable[[str], str],
    reports: Sequence[str],
    *,
    seed: int = 0,
    items_per_report: int = 2,
    bare_names: int = 200,
) -> dict:
    """Recall of inserted PHI and tokens kept on PHI-free reports (see the module docstring).

    Args:
        scrub: text -> scrubbed text.
        reports: PHI-free report texts (e.g. :func:`iu_xray_reports`).
        seed: seeds the PHI values and where they go.
        items_per_report: PHI items inserted into each report (categories in rotation, then shuffled).
        bare_names: reports that get one context-free name (measured apart).

    Returns:
        ``{"recall", "recall_by_category", "kept", "reports_changed", "bare_name_recall", "n_items", ...}``
    """
    rng = random.Random(seed)
    found = {c: 0 for c in RECALL_CATEGORIES}
    total = {c: 0 for c in RECALL_CATEGORIES}
    kept = tokens = changed = 0
    bare_found = bare_total = 0
    for i, report in enumerate(reports):
        clean = scrub(report)
        same, n = _kept_tokens(report, clean)
        kept, tokens, changed = kept + same, tokens + n, changed + (clean != report)
        items = _items_for(rng, i, items_per_report, bare=i < bare_names)
        scrubbed = scrub(insert_phi(report, rng, items))
        for item in items:
            ok = all(_occurrences(p, scrubbed) <= _occurrences(p, report) for p in item.parts)
            if item.category == "bare_name":
                bare_found, bare_total = bare_found + ok, bare_total + 1
            else:
                found[item.category] += ok
                total[item.category] += 1
    n_items = sum(total.values())
    return {
        "n_reports": len(reports),
        "n_items": n_items,
        "recall": sum(found.values()) / max(1, n_items),
        "recall_by_category": {c: found[c] / total[c] for c in RECALL_CATEGORIES if total[c]},
        "missed_by_category": {c: total[c] - found[c] for c in RECALL_CATEGORIES if total[c]},
        "kept": kept / max(1, tokens),
        "n_tokens": tokens,
        "reports_changed": changed / max(1, len(reports)),
        "bare_name_recall": bare_found / max(1, bare_total),
        "n_bare_names": bare_total,
    }


def iter_missed(
    scrub: Callable[[str], str],
    reports: Sequence[str],
    *,
    seed: int = 0,
    items_per_report: int = 2,
    bare_names: int = 200,
) -> Iterator[tuple[str, str]]:
    """(category, inserted sentence) of each missed item, for debugging the patterns on synthetic PHI.
    The values are made up; never run this on real PHI."""
    rng = random.Random(seed)
    for i, report in enumerate(reports):
        items = _items_for(rng, i, items_per_report, bare=i < bare_names)
        scrubbed = scrub(insert_phi(report, rng, items))
        for item in items:
            if item.category != "bare_name" and not all(
                _occurrences(p, scrubbed) <= _occurrences(p, report) for p in item.parts
            ):
                yield item.category, item.sentence
