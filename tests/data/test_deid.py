"""De-identification: keyed case keys, the PS3.15 subset, and no PHI in output or logs."""

from __future__ import annotations

import io
import logging
import os
import stat

import numpy as np
import pydicom
import pytest

from lungsearch.data import read_image, read_study
from lungsearch.data.deid import case_key, date_shift_days, deidentify, load_or_create_key, remap_uid
from lungsearch.errors import ConfigError, PHIRejectedError

KEY = b"0123456789abcdef-secret"


def _all_text(ds: pydicom.Dataset) -> str:
    """Every value of every element, file meta and nested sequences included, plus the bytes."""
    parts = [str(ds), str(getattr(ds, "file_meta", ""))]
    buf = io.BytesIO()
    ds.save_as(buf)
    parts.append(buf.getvalue().decode("latin-1"))
    return "\n".join(parts)


def test_key_file_created_0600_and_stable(tmp_path):
    path = tmp_path / "sub" / "hmac.key"
    k1 = load_or_create_key(path)
    assert len(k1) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path) == k1
    (tmp_path / "short.key").write_bytes(b"abc")
    with pytest.raises(ConfigError):
        load_or_create_key(tmp_path / "short.key")


def test_case_key_properties():
    a = case_key(KEY, "PAT1", "1.2.3")
    assert len(a) == 32 and int(a, 16) >= 0
    assert a == case_key(KEY, "PAT1", "1.2.3")
    assert a != case_key(b"another-key-xxxxxxxx", "PAT1", "1.2.3")
    assert case_key(KEY, "ab", "c") != case_key(KEY, "a", "bc")
    assert remap_uid(KEY, "1.2.3").startswith("2.25.") and len(remap_uid(KEY, "1.2.3")) <= 64
    assert 1 <= date_shift_days(KEY, "PAT1") <= 365
    with pytest.raises(ConfigError):
        case_key(b"", "x")


def test_no_phi_in_deidentified_dataset_or_logs(dicom_factory, phi_values, caplog):
    extra = {
        "OtherPatientIDs": "OTHER-4242",
        "PatientAddress": "12 Example Street",
        "StationName": "CT-ROOM-7",
        "OperatorsName": "Tech^Tina",
        "StudyDescription": "CT CHEST for Jane Doe",
    }
    ds = pydicom.dcmread(io.BytesIO(dicom_factory(np.zeros((8, 8), np.uint16), extra=extra)))
    # A private tag and a nested sequence carrying a name and a UID.
    block = ds.private_block(0x0011, "ACME", create=True)
    block.add_new(0x01, "LO", "MRN-99887766")
    item = pydicom.Dataset()
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.PerformingPhysicianName = "Nested^Doctor"
    ds.ReferencedImageSequence = pydicom.Sequence([item])
    secrets = list(phi_values.values()) + list(extra.values()) + ["Nested^Doctor", "Jane", "Doe"]
    with caplog.at_level(logging.DEBUG):
        clean = deidentify(ds, KEY)
        read_image(dicom_factory(np.zeros((8, 8), np.uint16), extra=extra), hmac_key=KEY)
    text = _all_text(clean)
    for value in secrets:
        if value in (phi_values["StudyDate"],):
            continue  # checked as shifted below
        assert value not in text, value
        assert value not in caplog.text, value
    assert phi_values["StudyDate"] not in str(clean.StudyDate)
    assert clean.PatientIdentityRemoved == "YES" and "StudyTime" not in clean
    assert clean.PatientID == case_key(KEY, "patient", phi_values["PatientID"])
    assert str(clean.SOPClassUID) == str(ds.SOPClassUID)  # standard UIDs kept
    assert str(clean.ReferencedImageSequence[0].ReferencedSOPInstanceUID) == str(clean.SOPInstanceUID)
    assert str(clean.file_meta.MediaStorageSOPInstanceUID) == str(clean.SOPInstanceUID)
    # The input is untouched.
    assert ds.PatientName == phi_values["PatientName"]


def test_uids_and_dates_consistent_across_a_series(dicom_factory):
    uid = "1.2.826.0.1.3680043.99.5.5"
    a = deidentify(
        pydicom.dcmread(io.BytesIO(dicom_factory(np.zeros((2, 2), np.uint16), series_uid=uid, instance=1))), KEY
    )
    b = deidentify(
        pydicom.dcmread(io.BytesIO(dicom_factory(np.zeros((2, 2), np.uint16), series_uid=uid, instance=2))), KEY
    )
    assert a.SeriesInstanceUID == b.SeriesInstanceUID != uid
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.StudyDate == b.StudyDate and len(a.StudyDate) == 8


def test_deidentified_series_still_reads(dicom_factory):
    uid = "1.2.826.0.1.3680043.99.6.6"
    files = []
    for z in range(3):
        ds = deidentify(
            pydicom.dcmread(
                io.BytesIO(
                    dicom_factory(
                        np.full((4, 4), 1000 + z, np.uint16), series_uid=uid, position=float(2 - z), instance=z + 1
                    )
                )
            ),
            KEY,
        )
        buf = io.BytesIO()
        ds.save_as(buf)
        files.append(buf.getvalue())
    study = read_study(files, hmac_key=KEY)
    assert [float(im.pixels[0, 0]) for im in study.images] == [-22.0, -23.0, -24.0]


def test_burned_in_rejected_when_not_allowed(dicom_factory):
    ds = pydicom.dcmread(io.BytesIO(dicom_factory(np.zeros((2, 2), np.uint16), extra={"BurnedInAnnotation": "YES"})))
    with pytest.raises(PHIRejectedError):
        deidentify(ds, KEY, allow_burned_in=False)
    assert deidentify(ds, KEY).BurnedInAnnotation == "YES"


def test_pydicom_log_lines_are_redacted(caplog):
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Doe^Jane'")
    assert "Doe^Jane" not in caplog.text
