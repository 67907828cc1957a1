"""End to end with the real platform: a real Orthanc C-STOREs a phantom CT series and a radiograph
to lungsearch's receiver, which ingests them through the real Serve app (gRPC, de-identification,
encoders, Milvus); both become searchable, and the SR (+ SC) come back into Orthanc's study.

One Serve app for the module (starting it is the expensive part: ~1-2 min here). Phantom (synthetic)
data and untrained tiny models: this checks the plumbing, not retrieval quality.
"""

from __future__ import annotations

import time

import _pacs
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def live(ray_cluster, tmp_path_factory):
    from ray import serve

    R = _pacs.reliability_module()
    work = tmp_path_factory.mktemp("pacs-app")
    cards = R.build_registry(work / "artifacts")
    args = {
        "profiles": ["ct-ild", "cxr-hash"],
        "artifacts_dir": str(work / "artifacts"),
        "milvus_uri": str(work / "store.db"),
        "hmac_key_file": str(work / "hmac.key"),
        "insecure_local": True,
        "torch_threads": 1,
    }
    t0 = time.perf_counter()
    try:
        app = R.start_serve_app(work, args, cards)
        print(f"\npacs e2e: app up in {time.perf_counter() - t0:.1f} s")
        yield app
    finally:
        serve.shutdown()


def test_orthanc_push_becomes_searchable_and_results_come_back(live, orthanc, tmp_path, scp_port, all_logs):
    from lungsearch.client import LungSearchClient
    from lungsearch.pacs.config import Destination, load_receiver_config
    from lungsearch.pacs.results import report_back
    from lungsearch.pacs.scp import Receiver

    orthanc.clear()
    sent = {}

    def back(series, profile, case_key, model):
        with LungSearchClient(live.target, timeout=120) as c:
            sent[profile] = report_back(
                c,
                series.files,
                profile,
                Destination(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port, ae_title=_pacs.ORTHANC_AET),
                exclude_key=case_key,
            )

    cfg = load_receiver_config(
        None,
        port=scp_port,
        spool_dir=str(tmp_path / "spool"),
        audit_log=str(tmp_path / "audit.jsonl"),
        settle_s=1.0,
        target=live.target,
        ingest_timeout_s=180,
        callers=[{"ae_title": _pacs.ORTHANC_AET, "site": "site-a", "profiles": {"ct": "ct-ild", "cxr": "cxr-hash"}}],
    )
    R = _pacs.reliability_module()
    ct = R.with_phi(_pacs.ct_series(tmp_path / "ct", slices=4, size=64, seed=31)[0])  # known PHI in every header
    cxr = _pacs.cxr_dicom(photometric="MONOCHROME1", bits=12, seed=32)
    ct_study = orthanc.upload(ct[0])["ParentStudy"]
    for b in ct[1:]:
        orthanc.upload(b)
    cxr_study = orthanc.upload(cxr)["ParentStudy"]
    with Receiver(cfg, on_ingested=back) as rx:
        t0 = time.perf_counter()
        orthanc.push([ct_study, cxr_study])
        _pacs.wait_for(lambda: len(sent) == 2, 240, 0.5)
        elapsed = time.perf_counter() - t0
        audit = rx.audit.read()
    print(f"pacs e2e: push -> ingested -> results back in {elapsed:.1f} s")
    ingests = {x["model"].split("@")[0]: x for x in audit if x["event"] == "ingest"}
    assert sorted(ingests) == ["ct-ild", "cxr-hash"] and all(x["outcome"] == "ok" for x in ingests.values())
    with LungSearchClient(live.target, timeout=120) as client:
        for profile, query in (("ct-ild", {"images": ct}), ("cxr-hash", {"image": cxr})):
            key = ingests[profile]["case_key"]
            assert client.get_case(key, model=profile).case_key == key  # stored
            hits = client.search(**query, top_k=3, model=profile)
            assert key in [h.case.case_key for h in hits]  # and searchable by its own images
    for study in (ct_study, cxr_study):
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in orthanc.get(f"/studies/{study}/series"))
        assert "SR" in modalities, modalities
    # The PHI test, on the DICOM path: no planted value in any log line of the run (Ray/Serve session
    # logs, this process's records, the receiver's audit log, spool paths).
    texts = R.read_logs(R.ray_session_dir())
    texts["driver log records"] = "\n".join(all_logs.lines)
    texts["audit log"] = (tmp_path / "audit.jsonl").read_text()
    texts["spool paths"] = "\n".join(str(p) for p in (tmp_path / "spool").rglob("*"))
    assert R.find_needles(texts, R.phi_needles()) == []
