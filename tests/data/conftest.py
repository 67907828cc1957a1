"""Fixtures for the data-layer tests: small DICOM/PNG builders (no files from outside the repo)."""

from __future__ import annotations

import io

import numpy as np
import pytest

PHI = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "MRN-99887766",
    "PatientBirthDate": "19610304",
    "AccessionNumber": "ACC-55443322",
    "StudyInstanceUID": "1.2.826.0.1.3680043.99.1111.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.99.2222.1",
    "SOPInstanceUID": "1.2.826.0.1.3680043.99.3333.1",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20190412",
    "StudyTime": "101530",
}


def make_dicom(
    pixels: np.ndarray,
    *,
    modality: str = "CT",
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = -1024.0,
    position: float | None = 0.0,
    instance: int = 1,
    series_uid: str | None = None,
    extra: dict | None = None,
    ts: str = "1.2.840.10008.1.2.1",
) -> bytes:
    """Bytes of a minimal but valid single-frame DICOM image (uint16 stored values)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID

    meta = FileMetaDataset()
    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}.get(
        modality, "1.2.840.10008.5.1.4.1.1.1.1"
    )
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(PHI["SOPInstanceUID"] + f".{instance}")
    meta.TransferSyntaxUID = UID(ts)
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    arr = np.asarray(pixels)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.InstanceNumber = instance
    if modality == "CT":
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelSpacing = [0.7, 0.7]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        if position is not None:
            ds.ImagePositionPatient = [-100.0, -100.0, position]
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = arr.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def dicom_factory():
    return make_dicom


@pytest.fixture
def phi_values():
    return dict(PHI)
