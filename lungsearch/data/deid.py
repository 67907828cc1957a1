"""De-identification: keyed case keys and a documented subset of the DICOM PS3.15 basic profile.

Nothing identifying leaves this module. The stable key of a case is an HMAC-SHA256 of the
original identifiers under a secret key (``LUNGSEARCH_HMAC_KEY_FILE``), so the same patient always
maps to the same key while the key alone reveals nothing. :func:`deidentify` returns a copy of a
DICOM dataset with the basic-profile subset below applied; it never logs values, only counts.

What :func:`deidentify` does (PS3.15 Annex E, Table E.1-1, basic profile, a subset):

* **Person names** (every PN element, at any depth): removed.
* **Identifiers** PatientID, OtherPatientIDs, AccessionNumber, StudyID, ... : PatientID is replaced
  by its keyed case key (a pseudonym), the others are removed.
* **Dates** (every DA and DT element): shifted back by a keyed per-patient offset of 1-365 days
  (the "retain longitudinal temporal information with modified dates" option keeps intervals
  within a patient). **Times** (TM) are removed. PatientBirthDate and PatientAge are removed.
* **UIDs** (every UI element except well-known DICOM UIDs under ``1.2.840.10008.``, e.g. SOP
  classes and transfer syntaxes): remapped consistently to ``2.25.<keyed hash>``, so series and
  references still match after de-identification. The file meta is remapped too.
* **Free text and places** (descriptions, comments, institution, station, addresses, phone
  numbers, device serials, ...): removed, see :data:`REMOVE_KEYWORDS`.
* **Private tags**: dropped (they often hide identifiers).
* **Burned-in annotation**: :func:`check_burned_in` raises PHIRejectedError when
  BurnedInAnnotation is YES (pixel text is not scrubbed) unless the caller allows it.
* PatientIdentityRemoved = YES and DeidentificationMethod record what was done.

Example::

    key = load_or_create_key(HMAC_KEY_FILE)
    clean = deidentify(pydicom.dcmread(path), key)
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from lungsearch.errors import ConfigError, PHIRejectedError

if TYPE_CHECKING:  # pydicom is imported lazily: `import lungsearch.data` stays light
    from collections.abc import Iterable

    import pydicom

    from lungsearch.data.types import Study

__all__ = [
    "DEID_METHOD",
    "REMOVE_KEYWORDS",
    "case_key",
    "check_burned_in",
    "date_shift_days",
    "deidentify",
    "load_or_create_key",
    "remap_uid",
    "study_case_key",
]

log = logging.getLogger(__name__)

#: Recorded in DeidentificationMethod (0012,0063; LO, at most 64 characters).
DEID_METHOD = "lungsearch: PS3.15 E.1 basic profile subset, dates shifted"

#: Attributes removed outright (PS3.15 Table E.1-1 actions X/Z/D for identifying free text). Checked against
#: dicognito 0.19 (tests/data/test_deid_reference.py): everything it removes or replaces is handled here.
REMOVE_KEYWORDS: tuple[str, ...] = (
    "AccessionNumber",
    "AdditionalPatientHistory",
    "AdmissionID",
    "AdmittingDiagnosesDescription",
    "Allergies",
    "BranchOfService",
    "ConsultingPhysicianName",
    "ContentCreatorName",
    "CountryOfResidence",
    "CurrentPatientLocation",
    "DerivationDescription",
    "DeviceSerialNumber",
    "EthnicGroup",
    "FillerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequestRetired",
    "FillerOrderNumberProcedure",
    "ImageComments",
    "InstitutionAddress",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "IssuerOfPatientID",
    "MedicalAlerts",
    "MedicalRecordLocator",
    "MilitaryRank",
    "NameOfPhysiciansReadingStudy",
    "Occupation",
    "OperatorsName",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAddress",
    "PatientAge",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientBirthTime",
    "PatientComments",
    "PatientInsurancePlanCodeSequence",
    "PatientMotherBirthName",
    "PatientName",
    "PatientReligiousPreference",
    "PatientSize",
    "PatientTelecomInformation",
    "PatientTelephoneNumbers",
    "PatientWeight",
    "PerformedProcedureStepDescription",
    "PerformedProcedureStepID",
    "PerformingPhysicianName",
    "PersonName",
    "PhysiciansOfRecord",
    "PlacerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequestRetired",
    "PlacerOrderNumberProcedure",
    "ReferencedPatientPhotoSequence",
    "ReferringPhysicianAddress",
    "ReferringPhysicianName",
    "ReferringPhysicianTelephoneNumbers",
    "RegionOfResidence",
    "RequestAttributesSequence",
    "RequestedProcedureDescription",
    "RequestedProcedureID",
    "RequestingPhysician",
    "RequestingService",
    "ResponsibleOrganization",
    "ResponsiblePerson",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "SeriesDescription",
    "StationName",
    "StudyDescription",
    "StudyID",
    "TextComments",
    "TextString",
)

_STANDARD_UID_PREFIX = "1.2.840.10008."
_MIN_KEY_BYTES = 16


def load_or_create_key(path: str | os.PathLike) -> bytes:
    """Read the HMAC secret at ``path``, creating a random 32-byte one (mode 0600) if absent.

    Creation is atomic (``O_EXCL``), so concurrent first calls agree on one key.

    Raises:
        ConfigError: the file exists but is unreadable or shorter than 16 bytes.
    """
    p = Path(path)
    try:
        key = p.read_bytes()
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        new = secrets.token_bytes(32)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its key
            return load_or_create_key(p)
        with os.fdopen(fd, "wb") as fh:
            fh.write(new)
        log.info("created a new HMAC key file (mode 0600)")
        return new
    except OSError as exc:
        raise ConfigError(f"HMAC key file {p}: cannot read ({exc.strerror or exc})") from None
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(f"HMAC key file {p}: key shorter than {_MIN_KEY_BYTES} bytes")
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("HMAC key file is readable by group/others; chmod 600 it")
    return key


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) < 1:
        raise ConfigError("HMAC key must be non-empty bytes")


def case_key(key: bytes, *parts: str) -> str:
    """Keyed hash of identifiers: HMAC-SHA256 over the parts, hex, 32 characters (128 bits).

    The parts are joined with a unit separator so ("ab", "c") and ("a", "bc") differ.

    >>> case_key(b"secret", "PAT1", "1.2.3")[:8]  # doctest: +SKIP
    'f3b2...'
    """
    _check_key(key)
    msg = "\x1f".join("" if p is None else str(p) for p in parts).encode("utf-8", "surrogatepass")
    return hmac.new(bytes(key), msg, hashlib.sha256).hexdigest()[:32]


def study_case_key(key: bytes, study: "Study", *, source_id: str = "", image_bytes: "Iterable[bytes]" = ()) -> str:
    """The store key of a study: one rule for every way a case enters the store.

    Gateway ingest and ``build_index`` both call this, so the same study indexed from a dataset and
    later ingested through the SDK is one case, not two. Precedence: the caller's ``source_id``
    (e.g. an accession number), then the DICOM study and series identifiers (already keyed by the
    reader), then a hash of the image bytes (so re-ingesting the same PNG is idempotent).
    """
    if source_id:
        return case_key(key, "source", source_id)
    first = study.images[0]
    if study.study_key or first.meta.series_key:
        return case_key(key, "dicom", study.study_key or "", first.meta.series_key or "")
    h = hashlib.sha256()
    for b in image_bytes:
        h.update(hashlib.sha256(b).digest())
    return case_key(key, "content", h.hexdigest())


def remap_uid(key: bytes, uid: str) -> str:
    """A consistent replacement UID: ``2.25.`` + the keyed 128-bit hash as a decimal integer."""
    _check_key(key)
    digest = hmac.new(bytes(key), b"uid\x1f" + str(uid).encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def date_shift_days(key: bytes, patient_id: str) -> int:
    """Keyed per-patient date offset in days, 1..365 (dates move back by this much)."""
    _check_key(key)
    digest = hmac.new(bytes(key), b"date\x1f" + str(patient_id).encode("utf-8", "replace"), hashlib.sha256).digest()
    return 1 + int.from_bytes(digest[:4], "big") % 365


def check_burned_in(ds: "pydicom.Dataset", *, allow: bool = False) -> None:
    """Reject a dataset whose pixels carry burned-in text (BurnedInAnnotation = YES).

    Raises:
        PHIRejectedError: the flag is YES and ``allow`` is False.
    """
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if value == "YES" and not allow:
        raise PHIRejectedError(
            "image has burned-in annotation (BurnedInAnnotation=YES); it may show patient identifiers",
            code="burned_in_annotation",
        )


def _shift_date(value: str, days: int) -> str:
    """Shift a DA (YYYYMMDD) or the date part of a DT; unparseable values become empty."""
    s = str(value).strip()
    if len(s) < 8 or not s[:8].isdigit():
        return ""
    try:
        d = _dt.date(int(s[:4]), int(s[4:6]), int(s[6:8])) - _dt.timedelta(days=days)
    except ValueError:
        return ""
    return d.strftime("%Y%m%d")


def deidentify(ds: "pydicom.Dataset", key: bytes, *, allow_burned_in: bool = True) -> "pydicom.Dataset":
    """A de-identified deep copy of ``ds`` (the input is not modified). See the module docstring.

    Args:
        ds: A pydicom Dataset (e.g. from ``pydicom.dcmread``), pixel data included or not.
        key: The HMAC secret (:func:`load_or_create_key`).
        allow_burned_in: When False, a dataset flagged BurnedInAnnotation = YES is rejected.

    Returns:
        The de-identified copy; PatientID is the keyed pseudonym of the original PatientID.

    Raises:
        PHIRejectedError: burned-in annotation and ``allow_burned_in`` is False.
        ConfigError: empty key.
    """
    from pydicom.dataelem import DataElement  # noqa: F401  (ensures pydicom is importable)
    from pydicom.uid import UID

    _check_key(key)
    check_burned_in(ds, allow=allow_burned_in)
    out = copy.deepcopy(ds)
    patient_id = str(ds.get("PatientID", "") or "")
    days = date_shift_days(key, patient_id)
    counts = {"removed": 0, "uids": 0, "dates": 0, "private": 0}
    remove = set(REMOVE_KEYWORDS)

    def walk(dataset: "pydicom.Dataset") -> None:
        n_priv = sum(1 for el in dataset if el.tag.is_private)
        if n_priv:
            dataset.remove_private_tags()
            counts["private"] += n_priv
        for elem in list(dataset):
            kw = elem.keyword
            if kw in remove or elem.VR == "PN" or elem.VR == "TM":
                del dataset[elem.tag]
                counts["removed"] += 1
            elif elem.VR == "SQ":
                for item in elem.value or []:
                    walk(item)
            elif elem.VR == "UI" and elem.value:
                vals = elem.value if elem.VM > 1 else [elem.value]
                new = [v if str(v).startswith(_STANDARD_UID_PREFIX) else UID(remap_uid(key, v)) for v in vals]
                counts["uids"] += sum(1 for a, b in zip(vals, new) if a != b)
                elem.value = new if elem.VM > 1 else new[0]
            elif elem.VR in ("DA", "DT") and elem.value:
                vals = elem.value if elem.VM > 1 else [elem.value]
                elem.value = [_shift_date(v, days) for v in vals] if elem.VM > 1 else _shift_date(vals[0], days)
                counts["dates"] += 1

    walk(out)
    if patient_id:
        out.PatientID = case_key(key, "patient", patient_id)
    meta = getattr(out, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        uid = str(meta.MediaStorageSOPInstanceUID)
        if not uid.startswith(_STANDARD_UID_PREFIX):
            meta.MediaStorageSOPInstanceUID = UID(remap_uid(key, uid))
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEID_METHOD
    out.LongitudinalTemporalInformationModified = "MODIFIED"
    # Counts only: never a value, a name or a UID in a log line.
    log.debug(
        "de-identified dataset: removed=%d uids=%d dates=%d private=%d",
        counts["removed"],
        counts["uids"],
        counts["dates"],
        counts["private"],
    )
    return out
