"""The real IU X-ray (OpenI / NLMCXR) reports bundled with torchxrayvision, parsed into labels and
located findings.

Labels come from each report's MeSH *major* terms (the same XML torchxrayvision's Openi_Dataset
reads); a term such as ``pulmonary atelectasis/base/left/mild`` gives the finding, the side, the
zone and the severity the phantom renders. The mapping to the cxr target vocabulary
(:data:`CXR_TARGETS`) is :data:`MESH_TO_TARGET`; reports whose terms are neither "normal" nor one
of the mapped findings (e.g. only degenerative spine) are left out, so every kept report has a
label the image can show.
"""

from __future__ import annotations

import functools
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

__all__ = [
    "CXR_TARGETS",
    "EXTRA_FINDINGS",
    "MESH_TO_TARGET",
    "PRIORITY",
    "Finding",
    "ReportCase",
    "iter_report_xml",
    "load_reports",
    "labels_from_mesh",
    "parse_mesh",
]

#: The cxr phantom's label vocabulary (= data.targets of the cxr-* profiles).
CXR_TARGETS = ("Normal", "Opacity", "Cardiomegaly", "Effusion", "Nodule", "Atelectasis")

#: Order used to pick one label for single-label profiles: the rarer, more specific finding wins
#: (a report with atelectasis and effusion is an "Effusion" case); ``labels[0]`` is that label.
PRIORITY = ("Effusion", "Nodule", "Atelectasis", "Opacity", "Cardiomegaly", "Normal")

#: MeSH major heading (lower case) -> (target label, rendered finding kind).
MESH_TO_TARGET: dict[str, tuple[str, str]] = {
    "opacity": ("Opacity", "opacity"),
    "airspace disease": ("Opacity", "opacity"),
    "infiltrate": ("Opacity", "opacity"),
    "consolidation": ("Opacity", "opacity"),
    "pneumonia": ("Opacity", "opacity"),
    "pulmonary edema": ("Opacity", "edema"),
    "cardiomegaly": ("Cardiomegaly", "cardiomegaly"),
    "pleural effusion": ("Effusion", "effusion"),
    "nodule": ("Nodule", "nodule"),
    "mass": ("Nodule", "mass"),
    "calcified granuloma": ("Nodule", "granuloma"),
    "granuloma": ("Nodule", "granuloma"),
    "granulomatous disease": ("Nodule", "granuloma"),
    "pulmonary atelectasis": ("Atelectasis", "atelectasis"),
}

#: Findings drawn for realism though they are not targets (the report mentions them).
EXTRA_FINDINGS: dict[str, str] = {
    "pneumothorax": "pneumothorax",
    "emphysema": "emphysema",
    "pulmonary emphysema": "emphysema",
    "bullous emphysema": "emphysema",
    "lung, hyperlucent": "emphysema",
    "catheters, indwelling": "device",
    "tube, inserted": "device",
    "implanted medical device": "device",
    "medical device": "device",
    "scoliosis": "scoliosis",
}

_ZONES = {
    "upper lobe": "upper",
    "apex": "upper",
    "apices": "upper",
    "upper": "upper",
    "middle lobe": "middle",
    "lingula": "middle",
    "hilum": "middle",
    "mid": "middle",
    "base": "lower",
    "lower lobe": "lower",
    "lower": "lower",
    "retrocardiac": "lower",
    "costophrenic angle": "lower",
}
_LUNG_HEADS = {
    "opacity",
    "density",
    "airspace disease",
    "infiltrate",
    "consolidation",
    "nodule",
    "mass",
    "calcified granuloma",
    "granuloma",
}
_NOT_LUNG = {
    "mediastinum",
    "paratracheal",
    "abdomen",
    "soft tissue",
    "soft tissues",
    "neck",
    "breast",
    "bone",
    "spine",
    "thoracic vertebrae",
    "diaphragm",
    "heart",
    "aorta",
    "shoulder",
    "ribs",
    "clavicle",
    "humerus",
    "trachea",
    "lymph nodes",
    "thorax",
    "pleura",
    "liver",
    "spleen",
    "axilla",
    "chest wall",
}
_SEVERITY = {
    "borderline": 0.45,
    "minimal": 0.5,
    "mild": 0.65,
    "small": 0.65,
    "moderate": 0.9,
    "severe": 1.15,
    "large": 1.15,
}


@dataclass(frozen=True)
class Finding:
    """One located finding from a MeSH major term."""

    kind: str  # rendered kind: opacity, edema, cardiomegaly, effusion, nodule, mass, granuloma, atelectasis, ...
    label: str | None  # target label, None for EXTRA_FINDINGS
    side: str = ""  # "left", "right", "bilateral" or "" (unstated: the renderer picks)
    zone: str = ""  # "upper", "middle", "lower" or ""
    severity: float = 0.8  # multiplier from mild/moderate/severe...
    multiple: bool = False
    pattern: str = ""  # "interstitial", "streaky", "patchy", "round" or ""


@dataclass(frozen=True)
class ReportCase:
    """One report: its id, text, MeSH terms, labels (PRIORITY order) and located findings."""

    uid: str
    text: str
    mesh: tuple[str, ...]
    labels: tuple[str, ...]
    findings: tuple[Finding, ...] = field(default_factory=tuple)


def parse_mesh(term: str) -> Finding | None:
    """A MeSH major term -> Finding (None when it maps to nothing drawable)."""
    parts = [p.strip().lower() for p in term.split("/") if p.strip()]
    if not parts:
        return None
    head = parts[0]
    mods = parts[1:]
    if head in _LUNG_HEADS and any(m in _NOT_LUNG for m in mods):
        return None  # e.g. "opacity/mediastinum/posterior": not a lung finding
    if head == "density":
        if not any(m in ("lung", "retrocardiac") for m in mods):
            return None
        label, kind = ("Nodule", "nodule") if "round" in mods else ("Opacity", "opacity")
    elif head == "costophrenic angle":
        if "blunted" not in mods:
            return None
        label, kind = "Effusion", "effusion"
    elif head in MESH_TO_TARGET:
        label, kind = MESH_TO_TARGET[head]
    elif head in EXTRA_FINDINGS:
        label, kind = None, EXTRA_FINDINGS[head]
    else:
        return None
    side = "bilateral" if "bilateral" in mods else "left" if "left" in mods else "right" if "right" in mods else ""
    zone = next((_ZONES[m] for m in mods if m in _ZONES), "")
    if head == "costophrenic angle":
        zone = "lower"
    severity = max([_SEVERITY[m] for m in mods if m in _SEVERITY], default=0.8)
    multiple = any(m in ("multiple", "scattered") for m in mods) or head == "granulomatous disease"
    pattern = next((m for m in mods if m in ("interstitial", "streaky", "patchy", "round", "diffuse")), "")
    return Finding(kind=kind, label=label, side=side, zone=zone, severity=severity, multiple=multiple, pattern=pattern)


def _reports_path() -> str:
    from lungsearch.data.phantoms._txv import txv_data_file

    return txv_data_file("NLMCXR_reports.tgz")


def labels_from_mesh(mesh: tuple[str, ...] | list[str]) -> tuple[str, ...] | None:
    """CXR target labels of a report's MeSH major terms, in :data:`PRIORITY` order; ("Normal",)
    for a report indexed "normal"; None when it has neither (nothing the image could show)."""
    found = {f.label for f in (parse_mesh(t) for t in mesh) if f is not None and f.label}
    if found:
        return tuple(lab for lab in PRIORITY if lab in found)
    if any(t.strip().lower() == "normal" for t in mesh):
        return ("Normal",)
    return None


def iter_report_xml(path: str | None = None):
    """Yield ``(uid, text, mesh_major_terms, image_ids)`` for every report XML in an NLMCXR
    tarball (default: the one bundled with torchxrayvision); text is "FINDINGS: ... IMPRESSION: ..."."""
    with tarfile.open(path or _reports_path(), "r:gz") as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".xml") or not member.isfile():
                continue
            fh = tar.extractfile(member)
            if fh is None:
                continue
            root = ET.parse(fh).getroot()
            uid_node = root.find("uId")
            uid = uid_node.attrib.get("id", "") if uid_node is not None else ""
            sections = {a.attrib.get("Label", ""): (a.text or "").strip() for a in root.findall(".//AbstractText")}
            text = " ".join(f"{k}: {sections[k]}" for k in ("FINDINGS", "IMPRESSION") if sections.get(k))
            mesh = tuple(n.text.strip() for n in root.findall(".//MeSH/major") if n.text)
            images = tuple(n.attrib.get("id", "") for n in root.findall(".//parentImage"))
            yield uid, text, mesh, images


@functools.lru_cache(maxsize=2)
def load_reports(path: str | None = None) -> tuple[ReportCase, ...]:
    """Every usable report, sorted by uid (deterministic), from the bundled NLMCXR tarball."""
    cases = []
    for uid, text, mesh, images in iter_report_xml(path):
        if not images or not uid or not text:
            continue  # reports without images are not in the image dataset either
        labels = labels_from_mesh(mesh)
        if labels is None:
            continue
        findings = tuple(f for f in (parse_mesh(t) for t in mesh) if f is not None)
        cases.append(ReportCase(uid=uid, text=text, mesh=mesh, labels=labels, findings=findings))
    cases.sort(key=lambda c: int("".join(ch for ch in c.uid if ch.isdigit()) or 0))
    return tuple(cases)
