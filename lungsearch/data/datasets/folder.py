"""Generic class folders: ``<root>/<class>/**/<image>`` (PNG, JPEG or DICOM).

When images sit one level deeper (``<root>/<class>/<patient>/<image>``) the middle folder is the
patient (split group); otherwise each image is its own group. Case ids and groups are hashes of
the relative paths (folder names of local data may be identifying). Folders named ``masks`` are
skipped (segmentation masks beside images, as in COVID-19 Radiography). One image per case,
modality "cxr"; CT series use the ``ild-ct`` layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lungsearch.data.datasets._base import DatasetAdapter, find_files, map_labels, require_root, stable_id
from lungsearch.data.types import CaseRecord

if TYPE_CHECKING:
    from lungsearch.config import DataConfig

__all__ = ["FolderAdapter"]


class FolderAdapter(DatasetAdapter):
    name = "folder"
    description = "class folders <root>/<class>/[<patient>/]<image>; PNG, JPEG or DICOM"
    #: Sub-folders that never hold case images.
    skip_dirs: tuple[str, ...] = ("masks", "mask", "labels")
    hash_ids = True

    def class_dirs(self, root: Path) -> list[Path]:
        return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:
        root = require_root(cfg, self.name)
        records, dropped = [], 0
        for cdir in self.class_dirs(root):
            labels = map_labels([cdir.name], cfg.targets)
            files = find_files(cdir, skip_dirs=self.skip_dirs, dicom_without_suffix=True)
            if labels is None:
                dropped += len(files)
                continue
            for p in files:
                rel = p.relative_to(root).as_posix()
                parts = p.relative_to(cdir).parts
                # <class>/<patient>/<image>: group by patient, unless the middle folder is a
                # plain "images" container (<class>/images/<image>)
                patient = parts[0] if len(parts) >= 2 and parts[0].lower() not in ("images", "image") else None
                case_id = stable_id(self.name, rel) if self.hash_ids else p.stem
                group = stable_id(self.name, cdir.name, patient) if patient else case_id
                records.append(
                    CaseRecord(case_id=case_id, image_paths=(str(p),), labels=labels, group=group, modality="cxr")
                )
        return self._finish(records, dropped)
