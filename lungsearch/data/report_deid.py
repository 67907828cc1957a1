"""Free-text report de-identification before storage (Microsoft Presidio, pattern recognizers only).

Radiology reports carry names (signatures, "discussed with Dr. X", "called to ..."), medical record
numbers and other identifiers, accession numbers, dates, phone numbers, addresses and ages.
:func:`scrub_report` finds them with Presidio's analyzer and replaces them with Presidio's
anonymizer; it returns the clean text and a count per category, and never logs what it removed.

Why Presidio and not philter-lite (measured on the IU X-ray reports, see ``benchmarks/report_deid.py``
and SECURITY.md): philter-lite 0.6 cannot run offline (its part-of-speech step calls
``nltk.pos_tag``, which needs NLTK's ``averaged_perceptron_tagger_eng`` data, a download);
Presidio 2.2 runs with no model at all when given a blank spaCy tokenizer (``spacy.blank("en")``),
and its predefined date/phone/e-mail/SSN/URL recognizers plus the lungsearch patterns below reach the
recall target. No NER model is used, so **a bare name with no context** ("... seen. Smith John
agrees") is not found; names are found by their report contexts: titles (Dr., Mr., Mrs., Ms.),
credentials after the name (", MD", ", RN"), and the phrases reports use before a name (patient,
name, discussed with, called to, signed by, dictated by, ...).

Categories (the ``counts`` keys and the only metric label, bounded): ``name``, ``identifier``,
``accession``, ``date``, ``phone``, ``address``, ``age``, ``contact`` (e-mail, URL, IP address).

Dates: with ``date_shift_days`` the date is moved back by that many days and written in its own
format, the same rule as the DICOM dates (:func:`lungsearch.data.deid.date_shift_days` of the
patient), so a report and its images keep their interval; without it, or when a date cannot be
parsed, it becomes ``[DATE]``. Ages over 89 become ``[AGE>89]`` (HIPAA Safe Harbor); younger ages stay.
The IU X-ray reports' own ``XXXX`` redaction marks are left as they are.

Example::

    r = scrub_report("Called to Dr. Jane Roe at 317-555-0100 on 03/14/2019.", date_shift_days=30)
    r.text    # 'Called to [NAME] at [PHONE] on 02/12/2019.'
    r.counts  # {'name': 1, 'phone': 1, 'date': 1}
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # presidio and spaCy are imported lazily: `import lungsearch.data` stays light
    from presidio_analyzer import AnalyzerEngine
    from presidio_anonymizer import AnonymizerEngine

__all__ = ["CATEGORIES", "ScrubResult", "scrub_report", "shift_date_text"]

log = logging.getLogger(__name__)

#: Every category :func:`scrub_report` counts (the metric label's whole value set).
CATEGORIES: tuple[str, ...] = ("name", "identifier", "accession", "date", "phone", "address", "age", "contact")

#: Presidio entity type -> lungsearch category.
_CATEGORY = {
    "PERSON": "name",
    "LS_PERSON": "name",
    "LS_MRN": "identifier",
    "LS_ID": "identifier",
    "US_SSN": "identifier",
    "LS_ACCESSION": "accession",
    "DATE_TIME": "date",
    "LS_DATE": "date",
    "PHONE_NUMBER": "phone",
    "LS_PHONE": "phone",
    "LS_ADDRESS": "address",
    "LS_AGE": "age",
    "LS_CONTACT": "contact",
    "IP_ADDRESS": "contact",
}
_PLACEHOLDER = {
    "name": "[NAME]",
    "identifier": "[ID]",
    "accession": "[ACCESSION]",
    "date": "[DATE]",
    "phone": "[PHONE]",
    "address": "[ADDRESS]",
    "age": "[AGE>89]",
    "contact": "[CONTACT]",
}
#: Presidio's predefined recognizers that are used (the others are country-specific card/licence
#: numbers that fire on clinical numbers, or need an NER model).
#: E-mail and URL are lungsearch patterns: Presidio's validate them with tldextract, which fetches the
#: public suffix list from the internet on first use.
_PREDEFINED = ("DateRecognizer", "PhoneRecognizer", "UsSsnRecognizer", "IpRecognizer")

# --- lungsearch patterns (case-sensitive where capitalisation is the evidence of a name) ----------
_TITLE_WORDS = r"(?:Dr|Mr|Mrs|Ms|Miss|Mx|Prof|Doctor)"
_NAME_WORD = rf"(?!{_TITLE_WORDS}\b)(?:[A-Z]'[A-Z][a-z]+|[A-Z][a-z]+(?:[A-Z][a-z]+)?(?:[-'][A-Z]?[a-z]+)?)"
_INITIAL = r"[A-Z]\."
_FULL_NAME = rf"(?:{_NAME_WORD}|{_INITIAL})(?:\s+(?:{_NAME_WORD}|{_INITIAL})){{0,2}}"
_CAPS_WORD = r"(?:[A-Z]'[A-Z]{2,}|[A-Z]{2,}(?:[-'][A-Z]+)?)"
_CAPS_NAME = rf"{_CAPS_WORD},\s*{_CAPS_WORD}"  # SMITH, JOHN
_LAST_FIRST = rf"{_NAME_WORD},\s+{_NAME_WORD}(?:\s+{_INITIAL})?"  # Smith, John A.
_NAME_CONTEXT = (
    r"(?i:patient(?:'s)?\s+name|patient|pt|name|discussed\s+with|called\s+to|communicated\s+to|"
    r"reviewed\s+with|notified|informed|paged|telephoned|spoke\s+with|conveyed\s+to|"
    r"dictated\s+by|signed\s+by|electronically\s+signed\s+by|read\s+by|reported\s+by|"
    r"interpreted\s+by|attending|resident|radiologist|referring\s+(?:physician|provider|doctor)|"
    r"ordered\s+by|ordering\s+(?:physician|provider)|physician|provider|technologist|tech|"
    r"requested\s+by|cc|copy\s+to|by)"
)
_TITLE = rf"{_TITLE_WORDS}\.?"
# After a comma any credential; without one only those that are not also report words (PA = posteroanterior).
_CREDENTIAL = r"(?:,\s*(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PA|MBBS|PhD|RT|RRA|FRCR)|\s+(?:MD|M\.D\.|MBBS|PhD|FRCR))"

_ID_LABEL = (
    r"(?i:mrn|mr\s*#|mr\s+no\.?|medical\s+record(?:\s+(?:number|no\.?|#))?|patient\s+id|pt\s+id|"
    r"patient\s+number|hospital\s+number|chart(?:\s+(?:number|no\.?|#))?|account(?:\s+(?:number|no\.?|#))?|"
    r"acct\.?(?:\s*#)?|encounter(?:\s+(?:number|no\.?|id|#))?|visit(?:\s+(?:number|no\.?|id|#))?|"
    r"fin|csn|har|id|insurance(?:\s+(?:number|no\.?|id|#))?|member\s+id|ssn|social\s+security(?:\s+number)?)"
)
_ACC_LABEL = (
    r"(?i:accession(?:\s+(?:number|no\.?|#))?|acc(?:ession)?\.?\s*(?:no\.?|#)|acc\.?|order(?:\s+(?:number|no\.?|#)))"
)
_SEP = r"\s*(?:[:#=]|no\.?|number)?\s*[:#]?\s*"
_ID_VALUE = r"(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{3,}"

_STREET = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|"
    r"Circle|Cir|Parkway|Pkwy|Highway|Hwy|Trail|Trl|Square|Sq)"
)
_ADDRESS = (
    rf"\b\d{{1,6}}\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-z]+\s+){{1,3}}{_STREET}\b\.?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[A-Za-z0-9-]+)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2})?(?:,?\s*[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?"
)
_CITY_STATE_ZIP = r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2},\s*[A-Z]{2}\s+\d{5}(?:-\d{4})?\b"
_PO_BOX = r"\b(?i:p\.?\s*o\.?\s+box)\s+\d+\b"

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DATES = (
    r"\b\d{1,2}[/-]\d{1,2}[/-](?:\d{4}|\d{2})\b",  # 03/14/2019, 3-14-19
    r"\b\d{4}[/-]\d{1,2}[/-]\d{1,2}\b",  # 2019-03-14
    r"\b\d{1,2}\.\d{1,2}\.\d{4}\b",  # 14.03.2019
    rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b",  # March 14, 2019
    rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+\d{{4}}\b",  # 14 March 2019
    rf"\b\d{{1,2}}-{_MONTH}-\d{{2,4}}\b",  # 14-Mar-2019
    rf"\b{_MONTH}\.?\s+\d{{4}}\b",  # March 2019
    rf"\b{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?\b(?!\s*(?:mm|cm|views?|%))",  # March 14
    r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b",  # 20190314 (DICOM DA)
)

_AGE = (
    r"\b(?:9\d|1[0-4]\d)(?=\s*(?:-|\s)?\s*(?i:years?|yrs?|y/?o|y\.o\.|year-old|yr-old)\b)",
    r"(?<=\b(?i:age|aged|age:)\s*)(?:9\d|1[0-4]\d)\b",
)

_PHONE = (
    r"(?<!\d)(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}(?!\d)(?:\s*(?i:x|ext\.?)\s*\d{1,5})?",
    r"(?<=(?i:pager|page|beeper|ext\.?|extension|x)\s*#?\s*)\d{4,5}\b",
)

_CONTACT = (r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b", r"\b(?i:https?://|www\.)[^\s<>\"]+")

_DATE_FORMATS = (
    "%m/%d/%Y",
    "%m/%d/%y",
    "%m-%d-%Y",
    "%m-%d-%y",
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%d.%m.%Y",
    "%B %d, %Y",
    "%B %d %Y",
    "%b %d, %Y",
    "%b %d %Y",
    "%b. %d, %Y",
    "%b. %d %Y",
    "%d %B %Y",
    "%d %b %Y",
    "%d %B, %Y",
    "%d %b, %Y",
    "%d-%b-%Y",
    "%d-%b-%y",
    "%Y%m%d",
    "%B %Y",
    "%b %Y",
)


@dataclass(frozen=True)
class ScrubResult:
    """What :func:`scrub_report` returns: the clean text and how many items of each category it
    replaced (categories with zero are absent). Never holds the removed values."""

    text: str
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def shift_date_text(value: str, days: int) -> str | None:
    """``value`` (a date as written in a report) moved back by ``days``, in the same format; None if
    it is not a full date this module can parse (a month and year alone shift by month start)."""
    s = " ".join(re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", value.strip()).split())
    for fmt in _DATE_FORMATS:
        try:
            d = _dt.datetime.strptime(s, fmt).date()
        except ValueError:
            continue
        if fmt == "%Y%m%d" and not 1900 <= d.year <= 2100:
            return None
        out = d - _dt.timedelta(days=int(days))
        text = out.strftime(fmt)
        # strftime pads; keep the writer's unpadded style (3/4/2019) when the input had it.
        if re.match(r"^\d[/.-]", s) or re.search(r"[/.-]\d[/.-]", s):
            text = re.sub(r"(?<![\d])0(\d)", r"\1", text)
        return text
    return None


class _Engines:
    """The analyzer and anonymizer, built once per process on first use (spaCy import ~2 s)."""

    _lock = threading.Lock()
    analyzer: "AnalyzerEngine | None" = None
    anonymizer: "AnonymizerEngine | None" = None

    @classmethod
    def get(cls) -> tuple["AnalyzerEngine", "AnonymizerEngine"]:
        if cls.analyzer is None:
            with cls._lock:
                if cls.analyzer is None:
                    cls.anonymizer = _build_anonymizer()
                    cls.analyzer = _build_analyzer()
        return cls.analyzer, cls.anonymizer


def _blank_nlp_engine():
    """A Presidio NLP engine on ``spacy.blank("en")``: a tokenizer, no model, nothing downloaded.
    Presidio's default engine would try to download ``en_core_web_lg``."""
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class _BlankSpacyEngine(SpacyNlpEngine):
        def load(self) -> None:  # no spacy.load(model): a blank English pipeline
            self.nlp = {"en": spacy.blank("en")}

    engine = _BlankSpacyEngine(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    return engine


def _build_analyzer() -> "AnalyzerEngine":
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry

    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"])
    registry.recognizers = [r for r in registry.recognizers if r.name in _PREDEFINED]
    # Case-sensitive: capitalisation is what tells a name from a word here.
    cs = re.DOTALL | re.MULTILINE

    def rec(entity: str, patterns: list[tuple[str, str, float]], *, flags: int = cs) -> PatternRecognizer:
        return PatternRecognizer(
            supported_entity=entity,
            name=f"lungsearch_{entity.lower()}",
            patterns=[Pattern(n, p, s) for n, p, s in patterns],
            global_regex_flags=flags,
        )

    registry.add_recognizer(
        rec(
            "LS_PERSON",
            [
                ("title_name", rf"(?<=\b{_TITLE}\s+){_FULL_NAME}\b", 0.9),
                ("title_caps", rf"(?<=\b{_TITLE}\s+)[A-Z]{{2,}}(?:[-'][A-Z]+)?\b", 0.9),
                ("name_credential", rf"\b{_FULL_NAME}(?={_CREDENTIAL}(?![A-Za-z]))", 0.8),
                ("last_first_credential", rf"\b{_LAST_FIRST}(?={_CREDENTIAL}(?![A-Za-z]))", 0.85),
                ("context_name", rf"(?<=\b{_NAME_CONTEXT}\s*[:#-]?\s*(?:{_TITLE}\s+)?){_FULL_NAME}\b", 0.7),
                ("context_last_first", rf"(?<=\b{_NAME_CONTEXT}\s*[:#-]?\s*){_LAST_FIRST}\b", 0.8),
                ("context_caps", rf"(?<=\b{_NAME_CONTEXT}\s*[:#-]?\s*){_CAPS_NAME}\b", 0.8),
            ],
        )
    )
    registry.add_recognizer(
        rec(
            "LS_MRN",
            [
                ("labelled_id", rf"(?<=\b{_ID_LABEL}{_SEP}){_ID_VALUE}\b", 0.9),
            ],
        )
    )
    registry.add_recognizer(
        rec(
            "LS_ACCESSION",
            [
                ("labelled_accession", rf"(?<=\b{_ACC_LABEL}{_SEP}){_ID_VALUE}\b", 0.95),
            ],
        )
    )
    # Long digit runs and letter-prefixed numbers are identifiers in a report (no measurement has 6+ digits).
    registry.add_recognizer(
        rec(
            "LS_ID",
            [
                ("long_number", r"(?<![\d.,])\d{6,}(?![\d.,]\d)", 0.6),
                ("prefixed_number", r"\b[A-Z]{1,4}-?\d{5,}\b", 0.6),
            ],
        )
    )
    registry.add_recognizer(
        rec(
            "LS_ADDRESS",
            [
                ("street", _ADDRESS, 0.8),
                ("city_state_zip", _CITY_STATE_ZIP, 0.8),
                ("po_box", _PO_BOX, 0.8),
            ],
        )
    )
    registry.add_recognizer(rec("LS_CONTACT", [(f"contact_{i}", p, 0.9) for i, p in enumerate(_CONTACT)]))
    registry.add_recognizer(rec("LS_DATE", [(f"date_{i}", p, 0.8) for i, p in enumerate(_DATES)]))
    registry.add_recognizer(rec("LS_AGE", [(f"age_{i}", p, 0.9) for i, p in enumerate(_AGE)]))
    registry.add_recognizer(rec("LS_PHONE", [(f"phone_{i}", p, 0.8) for i, p in enumerate(_PHONE)]))
    return AnalyzerEngine(
        registry=registry, nlp_engine=_blank_nlp_engine(), supported_languages=["en"], log_decision_process=False
    )


def _build_anonymizer() -> "AnonymizerEngine":
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


#: Presidio's low-confidence date patterns (score 0.1: "12/33", "2/24") fire on ratios and measurements
#: ("CT ratio 12/33", "16.2/24.7"); the full date formats are covered by the LS_DATE patterns.
_MIN_PRESIDIO_DATE_SCORE = 0.3


def _keep(text: str, r) -> bool:
    span = text[r.start : r.end]
    if "XXXX" in span:  # the IU X-ray collection's own redaction mark: never part of an entity
        return False
    if r.entity_type == "DATE_TIME" and r.score < _MIN_PRESIDIO_DATE_SCORE:
        return False
    # A match that starts or ends inside a number ("16.2/24.7") is a measurement, not PHI.
    before, after = text[max(0, r.start - 2) : r.start], text[r.end : r.end + 2]
    if re.search(r"\d[.,]?$", before) or re.match(r"^[.,]?\d", after):
        return False
    return True


def scrub_report(text: str, *, date_shift_days: int | None = None) -> ScrubResult:
    """De-identify one free-text report.

    Args:
        text: the report as submitted (findings, impression, or all of it).
        date_shift_days: move dates back by this many days (the patient's DICOM date shift,
            :func:`lungsearch.data.deid.date_shift_days`); None replaces every date with ``[DATE]``.

    Returns:
        :class:`ScrubResult` with the clean text and a count per category (see :data:`CATEGORIES`).
    """
    if not text or not text.strip():
        return ScrubResult(text or "", {})
    from presidio_anonymizer.entities import OperatorConfig

    analyzer, anonymizer = _Engines.get()
    found = analyzer.analyze(text=text, language="en", entities=sorted(_CATEGORY), score_threshold=0.0)
    found = [r for r in found if _keep(text, r)]

    def _date(value: str) -> str:
        if date_shift_days is None:
            return _PLACEHOLDER["date"]
        return shift_date_text(value, date_shift_days) or _PLACEHOLDER["date"]

    operators = {ent: OperatorConfig("replace", {"new_value": _PLACEHOLDER[cat]}) for ent, cat in _CATEGORY.items()}
    operators["DATE_TIME"] = operators["LS_DATE"] = OperatorConfig("custom", {"lambda": _date})
    out = anonymizer.anonymize(text=text, analyzer_results=found, operators=operators)
    counts = Counter(_CATEGORY[item.entity_type] for item in out.items)
    # Counts only: what was removed is never logged.
    log.debug("report scrubbed: %d items", sum(counts.values()))
    return ScrubResult(out.text, dict(counts))
