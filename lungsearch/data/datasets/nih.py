"""NIH ChestX-ray14 through torchxrayvision's ``NIH_Dataset``.

Layout: the PNGs anywhere under ``<root>`` (flat ``images/`` or Kaggle's ``images_001/images/``),
and ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``) in ``<root>``; without one, the
label file bundled with torchxrayvision is used. Frontal views (PA, AP); groups are the NIH
patient ids; images listed in the CSV but absent on disk are skipped (and counted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lungsearch.data.datasets._base import DatasetAdapter, find_files, map_labels, require_root
from lungsearch.data.datasets._xrv import first_existing, positive_labels, xrv_datasets
from lungsearch.data.types import CaseRecord

if TYPE_CHECKING:
    from lungsearch.config import DataConfig

__all__ = ["NihAdapter"]


class NihAdapter(DatasetAdapter):
    name = "nih"
    description = "NIH ChestX-ray14: <root>/**/*.png + Data_Entry_2017_v2020.csv (torchxrayvision NIH_Dataset)"

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:
        root = require_root(cfg, self.name)
        xds = xrv_datasets()
        csv = first_existing(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv"])
        ds = xds.NIH_Dataset(
            imgpath=str(root),
            csvpath=str(csv) if csv else xds.USE_INCLUDED_FILE,
            views=["PA", "AP"],
            unique_patients=False,
        )
        files = {p.name: p for p in find_files(root, {".png"})}
        records, dropped, missing = [], 0, 0
        names = ds.csv["Image Index"].tolist()
        pids = ds.csv["patientid"].tolist()
        views = ds.csv["view"].tolist()
        for i, name in enumerate(names):
            path = files.get(name)
            if path is None:
                missing += 1
                continue
            labels = map_labels(positive_labels(ds.pathologies, ds.labels[i]) or ["No Finding"], cfg.targets)
            if labels is None:
                dropped += 1
                continue
            records.append(
                CaseRecord(
                    case_id=path.stem,
                    image_paths=(str(path),),
                    labels=labels,
                    group=f"nih-{pids[i]}",
                    modality="cxr",
                    view=str(views[i]).upper(),
                )
            )
        return self._finish(records, dropped, missing)
