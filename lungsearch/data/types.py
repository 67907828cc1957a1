"""The data layer's value types: what every reader returns and every consumer takes.

These are the contract between ``lungsearch.data`` (readers, de-identification, phantoms,
dataset adapters), the model library, the training jobs and the serving deployments.
Nothing here carries PHI: identifiers are keyed hashes (see ``lungsearch.data.deid``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ImageMeta", "DecodedImage", "Study", "CaseRecord"]


@dataclass(frozen=True)
class ImageMeta:
    """De-identified, PHI-free facts about one decoded image.

    Attributes:
        modality: "cxr", "ct" or "mr" (DICOM CR/DX -> "cxr").
        view: "PA", "AP", "LATERAL", "AXIAL" or "" when unknown.
        source_format: "dicom", "png" or "jpeg".
        spacing: (row, column) pixel spacing in mm, when known.
        slice_position: position along the slice normal in mm (CT), for sorting.
        instance_number: DICOM InstanceNumber, when present.
        series_key: keyed hash of the SeriesInstanceUID ("" for PNG/JPEG).
        hu: True when ``pixels`` are Hounsfield units (CT after rescale).
    """

    modality: str
    view: str = ""
    source_format: str = "dicom"
    spacing: tuple[float, float] | None = None
    slice_position: float | None = None
    instance_number: int | None = None
    series_key: str = ""
    hu: bool = False


@dataclass
class DecodedImage:
    """One 2-D image ready for preprocessing.

    ``pixels`` is float32 [H, W]: Hounsfield units for CT (``meta.hu``), otherwise intensities
    scaled to [0, 1] with MONOCHROME1 already inverted (air dark, bone bright).
    ``study_key`` is the keyed hash of the patient/study identifiers (None when the source carries
    none, e.g. PNG; the caller's ``source_id`` is hashed instead).
    """

    pixels: np.ndarray
    meta: ImageMeta
    study_key: str | None = None


@dataclass
class Study:
    """One case's images: a single radiograph, or a CT series sorted by slice position."""

    images: list[DecodedImage]
    study_key: str | None = None

    @property
    def modality(self) -> str:
        return self.images[0].meta.modality

    @property
    def view(self) -> str:
        return self.images[0].meta.view

    def volume(self) -> np.ndarray:
        """[S, H, W] float32 stack (all slices must share a shape)."""
        return np.stack([im.pixels for im in self.images]).astype(np.float32, copy=False)


@dataclass(frozen=True)
class CaseRecord:
    """One row of a dataset, before any pixel is read.

    Attributes:
        case_id: stable id within the dataset (a file stem, or a hash for real data).
        image_paths: the case's image files (one CXR; the slices of a CT series).
        labels: diagnoses in the dataset's vocabulary, mapped to the profile's targets.
        group: the patient key; splits and folds never put one group on two sides.
        report: the radiology report text, when the dataset has one.
        modality: "cxr" or "ct". view: "PA", "AP", "LATERAL", "AXIAL" or "".
        synthetic: True for phantom data (every number computed on it must say so).
    """

    case_id: str
    image_paths: tuple[str, ...]
    labels: tuple[str, ...]
    group: str
    report: str | None = None
    modality: str = "cxr"
    view: str = ""
    synthetic: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)
