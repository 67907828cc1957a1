"""MIMIC-CXR-JPG through torchxrayvision's ``MIMIC_Dataset``, with MIMIC-CXR report text.

Layout: ``<root>/mimic-cxr-2.0.0-chexpert.csv[.gz]``, ``<root>/mimic-cxr-2.0.0-metadata.csv[.gz]``
and ``<root>/files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg``; reports, when present, at
``<root>/files/pXX/pSUBJECT/sSTUDY.txt`` (or under ``<root>/reports/files/``). Frontal views;
uncertain labels count as negative; groups are the subject ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lungsearch.data.datasets._base import DatasetAdapter, map_labels, require_root
from lungsearch.data.datasets._xrv import first_existing, positive_labels, xrv_datasets
from lungsearch.data.types import CaseRecord
from lungsearch.errors import ConfigError

if TYPE_CHECKING:
    from lungsearch.config import DataConfig

__all__ = ["MimicCxrAdapter"]


class MimicCxrAdapter(DatasetAdapter):
    name = "mimic-cxr"
    description = (
        "MIMIC-CXR-JPG: <root>/mimic-cxr-2.0.0-{chexpert,metadata}.csv.gz + files/pXX/.../*.jpg (+ sSTUDY.txt reports)"
    )

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:
        root = require_root(cfg, self.name)
        chex = first_existing(root, ["mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"])
        meta = first_existing(root, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"])
        if chex is None or meta is None:
            raise ConfigError(f"mimic-cxr: needs mimic-cxr-2.0.0-chexpert.csv.gz and -metadata.csv.gz under {root}")
        files = root / "files"
        ds = xrv_datasets().MIMIC_Dataset(
            imgpath=str(files), csvpath=str(chex), metacsvpath=str(meta), views=["PA", "AP"], unique_patients=False
        )
        records, dropped, missing = [], 0, 0
        no_finding = ds.csv["No Finding"].tolist() if "No Finding" in ds.csv else [None] * len(ds.csv)
        cols = zip(ds.csv["subject_id"], ds.csv["study_id"], ds.csv["dicom_id"], ds.csv["view"])
        for i, (subject, study, dicom_id, view) in enumerate(cols):
            sub = f"p{str(subject)[:2]}/p{subject}"
            path = files / sub / f"s{study}" / f"{dicom_id}.jpg"
            if not path.is_file():
                missing += 1
                continue
            raw = positive_labels(ds.pathologies, ds.labels[i])
            if no_finding[i] == 1:  # "No Finding" with only non-lung labels (e.g. support devices) is normal
                raw.append("No Finding")
            labels = map_labels(raw or ["No Finding"], cfg.targets)
            if labels is None:
                dropped += 1
                continue
            report = None
            for rp in (files / sub / f"s{study}.txt", root / "reports" / "files" / sub / f"s{study}.txt"):
                if rp.is_file():
                    report = _read_report(rp)
                    break
            records.append(
                CaseRecord(
                    case_id=str(dicom_id),
                    image_paths=(str(path),),
                    labels=labels,
                    group=f"mimic-{subject}",
                    report=report,
                    modality="cxr",
                    view=str(view).upper(),
                    extra={"study_id": str(study)},
                )
            )
        return self._finish(records, dropped, missing)


def _read_report(path: Path) -> str:
    """The FINDINGS and IMPRESSION sections when marked, else the whole text (whitespace folded)."""
    text = path.read_text(errors="replace")
    up = text.upper()
    parts = []
    for sec in ("FINDINGS:", "IMPRESSION:"):
        i = up.find(sec)
        if i >= 0:
            j = min(
                [k for k in (up.find(s, i + len(sec)) for s in ("FINDINGS:", "IMPRESSION:", "RECOMMENDATION")) if k > i]
                or [len(text)]
            )
            parts.append(" ".join(text[i:j].split()))
    return " ".join(parts) if parts else " ".join(text.split())
