"""lungsearch against a real Orthanc PACS (Debian's orthanc + orthanc-dicomweb): Orthanc pushes by
C-STORE, lungsearch pulls over DICOMweb, and the SR + Secondary Capture go back into Orthanc's study.
The platform here is the fake servicer of tests/client (see test_end_to_end.py for the real app)."""

from __future__ import annotations

import io

import _pacs
import pytest

from lungsearch.client import LungSearchClient
from lungsearch.pacs import dicomweb, results


def _upload(orthanc, blobs: list[bytes]) -> list[dict]:
    return [orthanc.upload(b) for b in blobs]


def _study_id(answers: list[dict]) -> str:
    return answers[0]["ParentStudy"]


@pytest.fixture
def clean_orthanc(orthanc):
    orthanc.clear()
    return orthanc


def test_orthanc_pushes_a_ct_series_and_a_radiograph(clean_orthanc, make_receiver, fresh_platform, tmp_path):
    orthanc = clean_orthanc
    r = make_receiver(settle_s=0.5)
    ct = _pacs.ct_series(tmp_path, slices=5)[0]
    cxr = _pacs.cxr_dicom(photometric="MONOCHROME1", bits=12)
    ct_study = _study_id(_upload(orthanc, ct))
    cxr_study = _study_id(_upload(orthanc, [cxr]))
    orthanc.push([ct_study, cxr_study])
    cases = _pacs.wait_for(
        lambda: len(fresh_platform.servicer.store) == 2 and list(fresh_platform.servicer.store.values()), 30
    )
    by_n = sorted(c.case.num_images for c in cases)
    assert by_n == [1, 5]
    profiles = sorted(c.case.model.profile for c in cases)
    assert profiles == ["ct-ild", "cxr-report"]  # the caller's profile per modality kind
    outcomes = [x["outcome"] for x in r.audit.read() if x["event"] == "ingest"]
    assert outcomes == ["ok", "ok"]


def test_orthanc_echo_reaches_the_scp(clean_orthanc, make_receiver):
    make_receiver()
    import urllib.request

    req = urllib.request.Request(clean_orthanc.url + "/modalities/lungsearch/echo", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def test_dicomweb_pull_of_a_study(clean_orthanc, fresh_platform, tmp_path):
    orthanc = clean_orthanc
    ct = _pacs.ct_series(tmp_path, slices=4, seed=3)[0]
    study_uid = str(_pacs.dataset(ct[0]).StudyInstanceUID)
    _upload(orthanc, ct)
    with LungSearchClient(fresh_platform.target, timeout=30) as client:
        out = dicomweb.ingest_study(client, orthanc.dicomweb_url, study_uid)
    assert [(o.modality, o.instances, o.model) for o in out] == [("CT", 4, "ct-ild@v1")]
    [case] = fresh_platform.servicer.store.values()
    got = sorted(str(_pacs.dataset(b).SOPInstanceUID) for b in case.images)
    assert got == sorted(str(_pacs.dataset(b).SOPInstanceUID) for b in ct)


def test_cli_ingest_dicomweb(clean_orthanc, fresh_platform, tmp_path, capsys):
    from lungsearch.cli import main

    cxr = _pacs.cxr_dicom(seed=5)
    study_uid = str(_pacs.dataset(cxr).StudyInstanceUID)
    _upload(clean_orthanc, [cxr])
    code = main(
        [
            "ingest",
            "--target",
            fresh_platform.target,
            "--dicomweb",
            clean_orthanc.dicomweb_url,
            "--study",
            study_uid,
            "--model",
            "cxr-report",
            "--json",
        ]
    )
    assert code == 0, capsys.readouterr()
    assert [c.case.num_images for c in fresh_platform.servicer.store.values()] == [1]
    assert '"model": "cxr-report@v1"' in capsys.readouterr().out


def _readback(orthanc, study_id: str):
    import highdicom as hd
    import pydicom

    series = orthanc.get(f"/studies/{study_id}/series")
    found = {}
    for s in series:
        modality = s["MainDicomTags"].get("Modality")
        for inst in s["Instances"]:
            raw = orthanc._request("GET", f"/instances/{inst}/file")
            found.setdefault(modality, []).append(pydicom.dcmread(io.BytesIO(raw)))
    sr = hd.sr.ComprehensiveSR.from_dataset(found["SR"][0]) if "SR" in found else None
    return found, sr


def _concepts(item, depth: int = 0, out=None):
    out = [] if out is None else out
    for child in getattr(item, "ContentSequence", []):
        out.append((depth, child.ConceptNameCodeSequence[0].CodeMeaning, child.ValueType))
        _concepts(child, depth + 1, out)
    return out


@pytest.mark.parametrize("via", ["dimse", "stow"])
def test_sr_and_secondary_capture_land_in_the_study(clean_orthanc, fresh_platform, tmp_path, via):
    import pydicom

    orthanc = clean_orthanc
    series = _pacs.ct_series(tmp_path, n=3, slices=4, seed=11)
    folders = []
    with LungSearchClient(fresh_platform.target, timeout=30) as client:
        for j, s in enumerate(series):
            d = tmp_path / f"s{j}"
            d.mkdir()
            for i, b in enumerate(s):
                (d / f"{i}.dcm").write_bytes(b)
            folders.append(sorted(str(p) for p in d.iterdir()))
            client.ingest_series(folders[-1], model="ct-ild", labels=[["ggo"], ["normal"], ["reticular"]][j])
        query = series[2]
        study_id = _study_id(_upload(orthanc, query))
        query_key = [k for k, v in fresh_platform.servicer.store.items() if v.case.labels == ["reticular"]][0]
        analysis = results.analyse(client, folders[2], "ct-ild", top_k=2, exclude_key=query_key)
    objs = results.build_results(
        [pydicom.dcmread(f) for f in folders[2]], analysis, accession_for=lambda key: "ACC-" + key[:6]
    )
    if via == "dimse":
        statuses = results.send_dimse(objs, host="127.0.0.1", port=orthanc.dicom_port, ae_title=_pacs.ORTHANC_AET)
        assert statuses == [0, 0]
    else:
        uids = results.send_stow(objs, orthanc.dicomweb_url, study_uid=str(objs[0].StudyInstanceUID))
        assert uids == [str(o.SOPInstanceUID) for o in objs]
    found, sr = _readback(orthanc, study_id)
    assert sorted(found) == ["CT", "OT", "SR"]  # highdicom's SC carries Modality OT
    assert len(found["CT"]) == 4  # same study in Orthanc: the results joined the images
    assert sr is not None
    tree = _concepts(sr)
    names = [n for _, n, _ in tree]
    assert names[:3] == ["Algorithm Name", "Algorithm Version", "Data provenance"]
    assert names.count("Similar case") == 2 and names.count("Case key") == 2 and "Grad-CAM overlay" in names
    similar = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Similar cases")
    case_keys = [
        str(x.TextValue)
        for c in similar.ContentSequence
        for x in c.ContentSequence
        if x.ConceptNameCodeSequence[0].CodeMeaning == "Case key"
    ]
    assert query_key not in case_keys and len(case_keys) == 2  # the query itself is not a prior case
    accessions = [
        str(x.TextValue)
        for c in similar.ContentSequence
        for x in c.ContentSequence
        if x.ConceptNameCodeSequence[0].CodeMeaning == "Accession Number"
    ]
    assert accessions == ["ACC-" + k[:6] for k in case_keys]
    probs = [
        float(x.MeasuredValueSequence[0].NumericValue)
        for x in sr.ContentSequence
        if x.ConceptNameCodeSequence[0].CodeMeaning == "Classification"
        for c in x.ContentSequence
        if c.ConceptNameCodeSequence[0].CodeMeaning == "Class probability"
        for x in c.ContentSequence
        if x.ValueType == "NUM"
    ]
    assert probs and abs(sum(probs) - 1.0) < 1e-3
    sc_modality = next(m for m in found if m not in ("CT", "SR"))
    sc = found[sc_modality][0]
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
    assert sc.StudyInstanceUID == found["CT"][0].StudyInstanceUID and sc.PatientID == found["CT"][0].PatientID
    assert sc.pixel_array.shape[-1] == 3
    # Orthanc's own REST view of the SR names its series
    sr_instance = [
        i
        for s in orthanc.get(f"/studies/{study_id}/series")
        for i in s["Instances"]
        if s["MainDicomTags"].get("Modality") == "SR"
    ][0]
    tags = orthanc.get(f"/instances/{sr_instance}/simplified-tags")
    assert tags["SeriesDescription"] == "lungsearch similar cases" and tags["CompletionFlag"] == "COMPLETE"


def test_receiver_sends_results_back_after_a_push(clean_orthanc, make_receiver, fresh_platform, tmp_path):
    """Orthanc pushes; lungsearch ingests, then answers with an SR + SC C-STOREd into the same study."""
    from lungsearch.pacs.config import Destination

    orthanc = clean_orthanc
    with LungSearchClient(fresh_platform.target, timeout=30) as client:
        prior = _pacs.ct_series(tmp_path / "prior", slices=4, seed=21)[0]
        client.ingest_series(prior, model="ct-ild", labels=["ggo"])
    holder = {}

    def hook(series, profile, case_key, model):
        holder["objs"] = results.report_back(
            LungSearchClient(fresh_platform.target, timeout=30),
            series.files,
            profile,
            Destination(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port, ae_title=_pacs.ORTHANC_AET),
            exclude_key=case_key,
            audit=holder["r"].audit,
            who="ae:ORTHANC",
        )

    holder["r"] = make_receiver(on_ingested=hook)
    ct = _pacs.ct_series(tmp_path, slices=4, seed=22)[0]
    study_id = _study_id(_upload(orthanc, ct))
    orthanc.push([study_id])
    _pacs.wait_for(lambda: any(x["event"] == "results_sent" for x in holder["r"].audit.read()), 30)
    assert len(orthanc.get(f"/studies/{study_id}/series")) == 3  # CT + SR + SC
    found, sr = _readback(orthanc, study_id)
    assert sr is not None and "CT" in found
    events = [(x["event"], x["outcome"]) for x in holder["r"].audit.read()]
    assert ("ingest", "ok") in events and ("results_sent", "ok") in events and ("search", "ok") in events
