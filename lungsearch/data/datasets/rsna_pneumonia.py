"""RSNA Pneumonia Detection Challenge (Kaggle; one of paper 4's probe datasets).

Layout: ``<root>/stage_2_train_labels.csv`` (or ``stage_1_train_labels.csv``; columns
``patientId,x,y,width,height,Target``, one row per box, ``Target`` 0 for images without one) and
the images named ``<patientId>.dcm`` (Kaggle's ``stage_2_train_images/``) or ``.png``/``.jpg``
(converted copies) anywhere under ``<root>``. Labels are binary, "Pneumonia" (any row with
``Target`` 1) or "No Pneumonia" (the challenge's "Normal" and "No Lung Opacity / Not Normal"
together). Each ``patientId`` is one image and its own split group (the challenge gives no other
patient key). Read with the standard library rather than torchxrayvision's
``RSNA_Pneumonia_Dataset``, which joins a bundled DICOM-header table and so keeps only the
challenge's own ids.
"""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING

from lungsearch.data.datasets._base import DatasetAdapter, find_files, map_labels, require_root
from lungsearch.data.datasets._xrv import first_existing
from lungsearch.data.types import CaseRecord
from lungsearch.errors import ConfigError

if TYPE_CHECKING:
    from lungsearch.config import DataConfig

__all__ = ["RsnaPneumoniaAdapter", "LABEL_FILES"]

LABEL_FILES = ["stage_2_train_labels.csv", "stage_1_train_labels.csv"]


class RsnaPneumoniaAdapter(DatasetAdapter):
    name = "rsna-pneumonia"
    description = (
        "RSNA Pneumonia: <root>/stage_2_train_labels.csv + <patientId>.dcm|png|jpg (binary Pneumonia / No Pneumonia)"
    )

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:
        root = require_root(cfg, self.name)
        csv_path = first_existing(root, LABEL_FILES)
        if csv_path is None:
            raise ConfigError(f"rsna-pneumonia: no {' or '.join(LABEL_FILES)} under {root}")
        positive: dict[str, bool] = {}
        with csv_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if not {"patientId", "Target"} <= set(reader.fieldnames or ()):
                raise ConfigError(f"rsna-pneumonia: {csv_path.name} lacks the patientId/Target columns")
            for row in reader:
                pid = row["patientId"].strip()
                positive[pid] = positive.get(pid, False) or row["Target"].strip() == "1"
        files = {p.stem: p for p in find_files(root, {".dcm", ".png", ".jpg", ".jpeg"})}
        records, dropped, missing = [], 0, 0
        for pid, pos in positive.items():
            path = files.get(pid)
            if path is None:
                missing += 1
                continue
            labels = map_labels(["Pneumonia" if pos else "No Pneumonia"], cfg.targets)
            if labels is None:
                dropped += 1
                continue
            records.append(
                CaseRecord(case_id=pid, image_paths=(str(path),), labels=labels, group=f"rsna-{pid}", modality="cxr")
            )
        return self._finish(records, dropped, missing)
