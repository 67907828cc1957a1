"""DICOMweb pull: find a study's series with QIDO-RS and retrieve them with WADO-RS (dicomweb-client),
then ingest each series through the SDK like any other upload.

This is the SDK-side equivalent of ``lungsearch ingest --dicomweb URL --study UID``. Instances are
written to a private temporary folder (mode 0700) and streamed from there with ``ingest_series``,
so a 500-slice CT is never held in memory twice; the folder is removed afterwards.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungsearch.pacs.config import MODALITY_KINDS

__all__ = ["SeriesIngest", "ingest_study", "dicomweb_client"]


@dataclass(frozen=True)
class SeriesIngest:
    """What happened to one series of the pulled study (no UIDs: the series' position and modality)."""

    index: int
    modality: str
    instances: int
    case_key: str = ""
    model: str = ""
    skipped: str = ""  # why a series was not ingested ("no_profile", "not_image")


def dicomweb_client(url: str, *, token: str | None = None, ca_file: str | None = None, timeout: float = 60.0):
    """A ``dicomweb_client.DICOMwebClient`` with a bearer token and CA bundle when given."""
    import requests
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session

    session: requests.Session = create_session()
    if ca_file:
        session.verify = ca_file
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return DICOMwebClient(url, session=session, headers=headers, timeout=timeout)


def ingest_study(
    client: Any,
    url: str,
    study_uid: str,
    *,
    profiles: dict[str, str] | None = None,
    web: Any = None,
    token: str | None = None,
    ca_file: str | None = None,
    timeout: float | None = None,
    audit: Any = None,
    who: str = "sdk",
) -> list[SeriesIngest]:
    """Pull one study from a DICOMweb server and ingest each image series.

    Args:
        client: a :class:`lungsearch.client.LungSearchClient`.
        url: DICOMweb base URL (e.g. ``http://orthanc:8042/dicom-web``).
        study_uid: the StudyInstanceUID to pull.
        profiles: modality kind ("ct", "cxr") -> profile (default ct-ild / cxr-hash).
        web: a ready ``DICOMwebClient`` (default: :func:`dicomweb_client` for ``url``).
        token, ca_file: for the DICOMweb server (not the lungsearch server).
        timeout: per Ingest call.
        audit: an :class:`~lungsearch.pacs.audit.AuditLog` to record each ingest in.

    Returns:
        One :class:`SeriesIngest` per series, in QIDO order.
    """
    import pydicom

    profiles = profiles or {"ct": "ct-ild", "cxr": "cxr-hash"}
    web = web or dicomweb_client(url, token=token, ca_file=ca_file)
    found = web.search_for_series(study_instance_uid=study_uid)
    out: list[SeriesIngest] = []
    for index, item in enumerate(found):
        meta = pydicom.Dataset.from_json(item)
        series_uid = str(meta.get("SeriesInstanceUID", ""))
        modality = str(meta.get("Modality", "") or "").upper()
        kind = MODALITY_KINDS.get(modality)
        if kind is None or kind not in profiles:
            out.append(SeriesIngest(index, modality[:8], 0, skipped="no_profile" if kind else "not_image"))
            continue
        instances = web.retrieve_series(study_uid, series_uid)
        with tempfile.TemporaryDirectory(prefix="lungsearch-dicomweb-") as tmp:
            files = []
            for i, ds in enumerate(instances):
                path = Path(tmp) / f"{i:05d}.dcm"
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                path.write_bytes(buf.getvalue())
                files.append(str(path))
            if not files:
                out.append(SeriesIngest(index, modality, 0, skipped="empty"))
                continue
            if len(files) == 1:
                res = client.ingest(files[0], model=profiles[kind], timeout=timeout)
            else:
                res = client.ingest_series(files, model=profiles[kind], timeout=timeout)
        model = f"{res.model.profile}@{res.model.version}"
        if audit is not None:
            audit.record(
                "ingest", "ok", who=who, case_key=res.case_key, model=model, instances=len(files), detail="dicomweb"
            )
        out.append(SeriesIngest(index, modality, len(files), case_key=res.case_key, model=model))
    return out
