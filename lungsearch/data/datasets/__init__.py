"""Dataset adapters, one module per dataset, one interface (:class:`DatasetAdapter`), a registry
by ``data.source`` name. Adapters are imported on first use (several need torchxrayvision, hence
torch).

=====================  ==========================================================================
``data.source``        layout
=====================  ==========================================================================
phantom                generated and cached (see :mod:`lungsearch.data.phantoms`)
nih                    NIH ChestX-ray14 PNGs + Data_Entry_2017_v2020.csv
openi                  OpenI / NLMCXR PNGs + NLMCXR_reports.tgz (reports as text)
covid19-radiography    <Class>/[images/]*.png (COVID, Lung_Opacity, Normal, Viral Pneumonia)
chexpert               train.csv + JPEGs
mimic-cxr              MIMIC-CXR-JPG files/ + chexpert/metadata CSVs (+ report .txt files)
ild-ct                 <class>/<patient>/[<series>/]*.dcm
rsna-pneumonia         stage_2_train_labels.csv + <patientId>.dcm (binary: Pneumonia / No Pneumonia)
covidx                 {train,val,test}.txt ('<patient> <file> <class> <source>') + <split>/<file>
folder                 <class>/[<patient>/]<image>
=====================  ==========================================================================

Example::

    records = load_records(cfg.data)
    parts = split_records(records, cfg.data.split, seed=cfg.data.seed)
    study = load_study(parts["train"][0], hmac_key=key)
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lungsearch.data.datasets._base import DatasetAdapter, map_labels
from lungsearch.data.types import CaseRecord, Study
from lungsearch.errors import ConfigError, InvalidImageError

if TYPE_CHECKING:
    from lungsearch.config import DataConfig, LimitsConfig

__all__ = [
    "DatasetAdapter",
    "get_adapter",
    "list_adapters",
    "load_records",
    "load_study",
    "map_labels",
    "register_adapter",
]

_REGISTRY: dict[str, str | Callable[[], DatasetAdapter]] = {
    "phantom": "lungsearch.data.datasets.phantom:PhantomAdapter",
    "nih": "lungsearch.data.datasets.nih:NihAdapter",
    "openi": "lungsearch.data.datasets.openi:OpeniAdapter",
    "covid19-radiography": "lungsearch.data.datasets.covid19_radiography:Covid19RadiographyAdapter",
    "chexpert": "lungsearch.data.datasets.chexpert:ChexpertAdapter",
    "mimic-cxr": "lungsearch.data.datasets.mimic_cxr:MimicCxrAdapter",
    "ild-ct": "lungsearch.data.datasets.ild_ct:IldCtAdapter",
    "rsna-pneumonia": "lungsearch.data.datasets.rsna_pneumonia:RsnaPneumoniaAdapter",
    "covidx": "lungsearch.data.datasets.covidx:CovidxAdapter",
    "folder": "lungsearch.data.datasets.folder:FolderAdapter",
}


def register_adapter(name: str, factory: Callable[[], DatasetAdapter]) -> None:
    """Add (or replace) an adapter under a ``data.source`` name."""
    _REGISTRY[name] = factory


def list_adapters() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter registered as ``name``.

    Raises:
        ConfigError: unknown name (the message lists close matches).
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(_REGISTRY))}"
        raise ConfigError(f"unknown data.source {name!r}{hint}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        return getattr(importlib.import_module(module), attr)()
    return entry()


def load_records(data_cfg: "DataConfig") -> list[CaseRecord]:
    """The cases of the profile's dataset (phantoms are generated on first use and cached).

    Labels are mapped to ``data_cfg.targets`` (``labels[0]`` is the single-label class); cases
    with no target label are dropped and counted in the log.

    Raises:
        ConfigError: unknown source, missing root, or no usable case.
    """
    return get_adapter(data_cfg.source).load(data_cfg)


def load_study(record: CaseRecord, *, hmac_key: bytes | None = None, limits: "LimitsConfig | None" = None) -> Study:
    """Read and decode a record's images (:func:`lungsearch.data.read_study`).

    For sources without DICOM identifiers (PNG/JPEG) the study key is the keyed hash of the
    record's case id (when ``hmac_key`` is given).

    Raises:
        InvalidImageError: ``missing_file`` when an image path cannot be read, or any decode reason.
        LimitExceededError: over the limits.
    """
    from lungsearch.data.deid import case_key
    from lungsearch.data.io import read_study

    blobs = []
    for p in record.image_paths:
        try:
            blobs.append(Path(p).read_bytes())
        except OSError:
            # the path may carry a local folder name: keep it out of the message
            raise InvalidImageError("a case image file cannot be read", code="missing_file") from None
    study = read_study(blobs, limits=limits, hmac_key=hmac_key)
    if study.study_key is None and hmac_key:
        study.study_key = case_key(hmac_key, "record", record.case_id)
    return study
