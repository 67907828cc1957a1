"""What every dataset adapter shares: the adapter interface, label mapping, file discovery."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from lungsearch.data.types import CaseRecord
from lungsearch.errors import ConfigError

if TYPE_CHECKING:
    from lungsearch.config import DataConfig

__all__ = ["DatasetAdapter", "SYNONYMS", "find_files", "map_labels", "require_root", "stable_id"]

log = logging.getLogger(__name__)

#: Raw dataset label (normalised: lower case, single spaces) -> candidate targets, first match wins.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "no finding": ("Normal", "normal"),
    "normal": ("Normal", "normal"),
    "lung opacity": ("Lung_Opacity", "Opacity"),
    "opacity": ("Opacity", "Lung_Opacity"),
    "consolidation": ("Opacity", "Lung_Opacity", "consolidation"),
    "infiltration": ("Opacity", "Lung_Opacity"),
    "infiltrate": ("Opacity", "Lung_Opacity"),
    "pneumonia": ("Opacity", "Lung_Opacity"),
    "edema": ("Opacity",),
    "airspace disease": ("Opacity",),
    "pleural effusion": ("Effusion",),
    "effusion": ("Effusion",),
    "mass": ("Nodule",),
    "lung lesion": ("Nodule",),
    "lesion": ("Nodule",),
    "calcified granuloma": ("Nodule",),
    "granuloma": ("Nodule",),
    "covid": ("COVID",),
    "covid 19": ("COVID",),
    "viral pneumonia": ("Viral_Pneumonia",),
    "ground glass": ("ggo",),
    "ground glass opacity": ("ggo",),
    "honeycombing": ("reticular",),
    "reticulation": ("reticular",),
    "fibrosis": ("reticular",),
    "healthy": ("Normal", "normal"),
}
_NORMAL_WORDS = {"no finding", "normal", "healthy"}


def norm_label(s: str) -> str:
    return re.sub(r"[\s_\-/]+", " ", str(s).strip().lower())


def map_labels(raw: Iterable[str], targets: list[str] | tuple[str, ...]) -> tuple[str, ...] | None:
    """Map a dataset's labels to the profile's targets.

    A raw label equal to a target (ignoring case, spaces, ``_``/``-``) maps to it; otherwise
    :data:`SYNONYMS` proposes targets. Findings win over "Normal". Labels come back in the cxr
    priority order (:data:`lungsearch.data.phantoms._reports.PRIORITY`: ``labels[0]`` is the
    single-label class), then in ``targets`` order. With no targets the raw labels are kept.

    Returns:
        The mapped labels; ("Normal",)-like when there are no findings and a normal target exists;
        None when nothing maps (the caller drops the case and counts it).
    """
    from lungsearch.data.phantoms._reports import PRIORITY

    raw = [r for r in raw if str(r).strip()]
    if not targets:
        return tuple(dict.fromkeys(raw)) or None
    by_norm = {norm_label(t): t for t in targets}
    out: list[str] = []
    for r in raw:
        n = norm_label(r)
        hit = by_norm.get(n)
        if hit is None:
            hit = next((by_norm[norm_label(c)] for c in SYNONYMS.get(n, ()) if norm_label(c) in by_norm), None)
        if hit is not None and hit not in out:
            out.append(hit)
    normal = next((t for t in targets if norm_label(t) in _NORMAL_WORDS), None)
    findings = [t for t in out if t != normal]
    if findings:
        order = {t: i for i, t in enumerate(PRIORITY)}
        pos = {t: i for i, t in enumerate(targets)}
        return tuple(sorted(findings, key=lambda t: (order.get(t, len(order)), pos[t])))
    if normal is not None and (not raw or all(norm_label(r) in _NORMAL_WORDS for r in raw) or normal in out):
        return (normal,)
    return None


def stable_id(*parts: str, n: int = 16) -> str:
    """Unkeyed short hash for ids of local (possibly hospital) data, so folder names such as a
    patient's name never become a case id, a log line or a metric label."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:n]


def require_root(cfg: "DataConfig", name: str) -> Path:
    if not cfg.root:
        raise ConfigError(f"data.source {name!r} needs data.root (the dataset folder)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root for {name!r} is not a folder: {root}")
    return root


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


def _is_dicom_file(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def find_files(
    folder: Path, suffixes: set[str] | None = None, *, skip_dirs: Iterable[str] = (), dicom_without_suffix: bool = False
) -> list[Path]:
    """Image files under ``folder`` (sorted, hidden files and ``skip_dirs`` folders left out).

    Symlinked folders are not followed (a loop or an escape from the dataset root).
    """
    suffixes = suffixes or _IMAGE_SUFFIXES
    skip = {s.lower() for s in skip_dirs}
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in skip)
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            suf = p.suffix.lower()
            if suf in suffixes or (dicom_without_suffix and suf == "" and _is_dicom_file(p)):
                out.append(p)
    return out


class DatasetAdapter:
    """One dataset layout -> :class:`CaseRecord` list. Subclasses set ``name`` and implement
    :meth:`load`; they are registered in :mod:`lungsearch.data.datasets` by ``data.source`` name.

    Example::

        class MyAdapter(DatasetAdapter):
            name = "my-dataset"
            def load(self, cfg):
                root = require_root(cfg, self.name)
                return [CaseRecord(case_id=p.stem, image_paths=(str(p),), labels=("Normal",), group=p.stem)
                        for p in find_files(root)]
    """

    name: str = ""
    #: One line for ``lungsearch data sources`` and the docs.
    description: str = ""

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:  # pragma: no cover - interface
        raise NotImplementedError

    def _finish(self, records: list[CaseRecord], dropped: int, missing: int = 0) -> list[CaseRecord]:
        if dropped or missing:
            log.info(
                "%s: %d cases kept, %d without a target label, %d image files missing",
                self.name,
                len(records),
                dropped,
                missing,
            )
        if not records:
            raise ConfigError(f"data.source {self.name!r}: no usable cases found (check data.root and data.targets)")
        return records
