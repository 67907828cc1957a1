"""ILD CT folders (paper 3's layout): ``<root>/<class>/<patient>/[<series>/]*.dcm``.

Each folder holding DICOM files is one case (one series); the ``<patient>`` folder is its split
group. DICOM files without a suffix are recognised by their ``DICM`` magic. Case ids and groups
are hashes: patient folder names of hospital exports are often identifying.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from lungsearch.data.datasets._base import DatasetAdapter, find_files, map_labels, require_root, stable_id
from lungsearch.data.types import CaseRecord

if TYPE_CHECKING:
    from lungsearch.config import DataConfig

__all__ = ["IldCtAdapter"]


class IldCtAdapter(DatasetAdapter):
    name = "ild-ct"
    description = "ILD CT series: <root>/<class>/<patient>/[<series>/]*.dcm"

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:
        root = require_root(cfg, self.name)
        records, dropped = [], 0
        for cdir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
            labels = map_labels([cdir.name], cfg.targets)
            for pdir in sorted(d for d in cdir.iterdir() if d.is_dir() and not d.name.startswith(".")):
                series: dict[Path, list[Path]] = defaultdict(list)
                for f in find_files(pdir, {".dcm", ".dicom"}, dicom_without_suffix=True):
                    series[f.parent].append(f)
                if labels is None:
                    dropped += len(series)
                    continue
                group = stable_id(self.name, cdir.name, pdir.name)
                for sdir, files in sorted(series.items()):
                    rel = sdir.relative_to(root).as_posix()
                    records.append(
                        CaseRecord(
                            case_id=stable_id(self.name, rel),
                            image_paths=tuple(str(f) for f in files),
                            labels=labels,
                            group=group,
                            modality="ct",
                            view="AXIAL",
                        )
                    )
        return self._finish(records, dropped)
