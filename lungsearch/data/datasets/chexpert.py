"""CheXpert through torchxrayvision's ``CheX_Dataset``.

Layout: ``<root>/train.csv`` (or ``valid.csv``; also inside ``CheXpert-v1.0[-small]/``) and the
JPEGs at the CSV's relative paths under ``<root>``. Frontal views; uncertain labels (-1) count as
negative (U-zeros); groups are the CheXpert patient ids.
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

__all__ = ["ChexpertAdapter"]


class ChexpertAdapter(DatasetAdapter):
    name = "chexpert"
    description = "CheXpert: <root>/train.csv + JPEGs at its paths (torchxrayvision CheX_Dataset)"

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:
        root = require_root(cfg, self.name)
        base = first_existing(root, ["CheXpert-v1.0-small", "CheXpert-v1.0"]) or root
        csv = first_existing(base, ["train.csv", "valid.csv"])
        if csv is None:
            raise ConfigError(f"chexpert: no train.csv or valid.csv under {root}")
        ds = xrv_datasets().CheX_Dataset(imgpath=str(base), csvpath=str(csv), views=["PA", "AP"], unique_patients=False)
        records, dropped, missing = [], 0, 0
        no_finding = ds.csv["No Finding"].tolist() if "No Finding" in ds.csv else [None] * len(ds.csv)
        for i, (rel, pid, view) in enumerate(zip(ds.csv["Path"], ds.csv["patientid"], ds.csv["view"])):
            rel = str(rel).replace("CheXpert-v1.0-small/", "").replace("CheXpert-v1.0/", "")
            path = Path(base) / rel
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
            case_id = rel.replace("/", "_").rsplit(".", 1)[0]
            records.append(
                CaseRecord(
                    case_id=case_id,
                    image_paths=(str(path),),
                    labels=labels,
                    group=f"chexpert-{pid}",
                    modality="cxr",
                    view=str(view).upper(),
                )
            )
        return self._finish(records, dropped, missing)
