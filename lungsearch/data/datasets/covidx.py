"""COVIDx CXR (one of paper 4's probe datasets): the COVID-Net label files and image folders.

Layout: ``<root>/{train,val,test}.txt`` (also ``train_COVIDx*.txt`` / ``test_COVIDx*.txt``), one
line per image, ``<patient id> <file name> <class> <data source>`` separated by spaces, and the
images at ``<root>/<train|val|test>/<file name>`` (else found by name anywhere under ``<root>``).
Classes are those of the 3-class releases (``COVID-19``, ``pneumonia``, ``normal``: paper 4's
"COVID-19, non-COVID-19 and normal"); the binary releases' ``positive`` is read as COVID-19 and
``negative`` is kept as it is (it maps to no 3-class target, so such rows are dropped and counted).
Groups are the COVIDx patient ids; the file a line came from is kept in ``extra["split"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lungsearch.data.datasets._base import DatasetAdapter, find_files, map_labels, require_root
from lungsearch.data.types import CaseRecord
from lungsearch.errors import ConfigError

if TYPE_CHECKING:
    from lungsearch.config import DataConfig

__all__ = ["CovidxAdapter", "label_files"]

#: COVIDx class word -> raw label handed to :func:`map_labels`.
_CLASSES = {
    "covid-19": "COVID-19",
    "covid": "COVID-19",
    "positive": "COVID-19",
    "pneumonia": "Pneumonia",
    "normal": "Normal",
    "negative": "negative",
}


def label_files(root: Path) -> list[tuple[str, Path]]:
    """(split name, label file) pairs found in ``root``: ``train.txt``-style names, else the
    release-stamped ``train_COVIDx9A.txt``-style ones."""
    out = []
    for split in ("train", "val", "test"):
        plain = root / f"{split}.txt"
        stamped = sorted(root.glob(f"{split}_COVIDx*.txt")) + sorted(root.glob(f"{split}_split*.txt"))
        path = plain if plain.is_file() else (stamped[-1] if stamped else None)
        if path is not None:
            out.append((split, path))
    return out


class CovidxAdapter(DatasetAdapter):
    name = "covidx"
    description = (
        "COVIDx CXR: <root>/{train,val,test}.txt ('<patient> <file> <class> <source>') + <root>/<split>/<file>"
    )

    def load(self, cfg: "DataConfig") -> list[CaseRecord]:
        root = require_root(cfg, self.name)
        files = label_files(root)
        if not files:
            raise ConfigError(f"covidx: no train.txt / test.txt (or train_COVIDx*.txt) under {root}")
        by_name: dict[str, Path] | None = None
        records, dropped, missing = [], 0, 0
        for split, path in files:
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) < 4:
                    continue
                # file names have held spaces in some releases: the class and source are the last two words
                pid, name, cls = parts[0], " ".join(parts[1:-2]), parts[-2]
                img = root / split / name
                if not img.is_file():
                    if by_name is None:
                        by_name = {p.name: p for p in find_files(root)}
                    img = by_name.get(name)
                if img is None:
                    missing += 1
                    continue
                labels = map_labels([_CLASSES.get(cls.lower(), cls)], cfg.targets)
                if labels is None:
                    dropped += 1
                    continue
                records.append(
                    CaseRecord(
                        case_id=Path(name).stem,
                        image_paths=(str(img),),
                        labels=labels,
                        group=f"covidx-{pid}",
                        modality="cxr",
                        extra={"split": split},
                    )
                )
        return self._finish(records, dropped, missing)
