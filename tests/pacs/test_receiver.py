"""The C-STORE SCP against real DICOM networking (pynetdicom SCUs) and the fake platform of tests/client.

Every test checks what reached the platform (the fake servicer's store), what the SCP answered on
the wire, and that the SCP is still serving afterwards.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import _pacs
import pytest

from lungsearch.pacs import scp


def _echo(port: int, calling: str = _pacs.ORTHANC_AET) -> int:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=_pacs.LUNGSEARCH_AET)
    assert assoc.is_established
    st = assoc.send_c_echo()
    assoc.release()
    return int(st.Status)


def _instances(blobs) -> list[tuple[str, bytes]]:
    """(SOPInstanceUID, PixelData) of each blob: the content, whatever file meta the transfer rewrote."""
    return sorted((str(d.SOPInstanceUID), bytes(d.PixelData)) for d in map(_pacs.dataset, blobs))


def _stored(platform) -> list:
    return list(platform.servicer.store.values())


def test_ct_series_is_ingested_whole_on_release(make_receiver, fresh_platform, tmp_path):
    r = make_receiver(settle_s=30)  # long settle: only the association's release can trigger the ingest
    series = _pacs.ct_series(tmp_path, slices=5)[0]
    assert _echo(r.port) == 0
    assert _pacs.scu_store(r.port, series) == [0] * 5
    _pacs.wait_for(lambda: _stored(fresh_platform), 15)
    [case] = _stored(fresh_platform)
    assert case.case.num_images == 5 and case.case.model.profile == "ct-ild"
    assert _instances(case.images) == _instances(series)  # unchanged: the platform de-identifies, not the SCP
    assert fresh_platform.servicer.calls["IngestStream"] == 1  # one series, one Ingest call
    [line] = [x for x in r.audit.read() if x["event"] == "ingest"]
    assert line["outcome"] == "ok" and line["who"] == "ae:ORTHANC" and line["site"] == "site-a"
    assert line["case_key"] == case.case.case_key and line["instances"] == 5 and line["model"] == "ct-ild@v1"
    _pacs.wait_for(lambda: not list((r.spool.root / "incoming").iterdir()), 5)


def test_settle_time_groups_a_series_sent_over_two_associations(make_receiver, fresh_platform, tmp_path):

    r = make_receiver(settle_s=1.0, linger_s=60)
    series = _pacs.ct_series(tmp_path, slices=4)[0]
    assert _pacs.scu_store(r.port, series[:2]) == [0, 0]
    _pacs.wait_for(lambda: _stored(fresh_platform), 10)
    assert _pacs.scu_store(r.port, series[2:]) == [0, 0]  # late instances: the lingering ones come back
    # The late instances bring the lingering ones back: the second Ingest carries the whole series
    # (the real platform keys the case by study and updates it; this fake keys by content).
    whole = _pacs.wait_for(lambda: [s for s in _stored(fresh_platform) if s.case.num_images == 4], 10)
    assert _instances(whole[0].images) == _instances(series)
    assert fresh_platform.servicer.calls["IngestStream"] == 2


def test_unknown_calling_ae_is_rejected(make_receiver, fresh_platform, tmp_path):
    r = make_receiver()
    with pytest.raises(ConnectionRefusedError):
        _pacs.scu_store(r.port, _pacs.ct_series(tmp_path)[0], calling="STRANGER")
    assert _echo(r.port) == 0 and not _stored(fresh_platform)
    assert [x["outcome"] for x in r.audit.read()] == ["rejected_unknown_ae"]


@pytest.mark.parametrize("name", ["reportsi.dcm", "rtplan.dcm", "waveform_ecg.dcm"])
def test_non_image_sop_classes_are_refused_at_negotiation(make_receiver, fresh_platform, name):
    r = make_receiver()
    data = _pacs.pydicom_test_file(name)
    # The SOP class is not offered: its presentation context is rejected, so nothing can be sent;
    # alone, the association has no context left (the requestor aborts it).
    with pytest.raises(ConnectionRefusedError):
        _pacs.scu_store(r.port, [data])
    ct = _pacs.dataset(_pacs.pydicom_test_file("CT_small.dcm")).SOPClassUID
    sop = str(_pacs.dataset(data).SOPClassUID)
    assert _pacs.scu_store(r.port, [data], contexts=[sop, str(ct)]) == [None]
    assert _echo(r.port) == 0 and not _stored(fresh_platform)


def test_sr_pushed_as_an_image_is_refused_a900(make_receiver, fresh_platform):
    r = make_receiver()
    ds = _pacs.dataset(_pacs.pydicom_test_file("reportsi.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # claims to be CT
    assert _pacs.scu_store(r.port, [_pacs.to_bytes(ds)]) == [scp.NOT_IMAGE]
    time.sleep(1.0)
    assert not _stored(fresh_platform) and not r.spool.waiting()


def test_sop_class_mismatch_is_refused_a900(make_receiver, fresh_platform, tmp_path):
    r = make_receiver()
    ds = _pacs.dataset(_pacs.ct_series(tmp_path)[0][0])
    from pynetdicom import AE

    ae = AE(ae_title=_pacs.ORTHANC_AET)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60  # a loaded machine: no spurious timeouts
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1")  # CR context
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    def push_ct_in_cr_context():
        """Send a CT data set in the CR context by hand (pynetdicom would pick the context by the data
        set's SOP class); the C-STORE response, or None when the association went away first."""
        assoc = ae.associate("127.0.0.1", r.port, ae_title=_pacs.LUNGSEARCH_AET)
        ctx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == "1.2.840.10008.5.1.4.1.1.1")
        req = C_STORE()
        req.MessageID, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = 7, ctx.abstract_syntax, ds.SOPInstanceUID
        req.Priority = 2
        ds_copy = ds.copy()
        del ds_copy.file_meta
        req.DataSet = io.BytesIO(
            encode(ds_copy, ctx.transfer_syntax[0].is_implicit_VR, ctx.transfer_syntax[0].is_little_endian)
        )
        assoc.dimse.send_msg(req, ctx.context_id)
        rsp, deadline = None, time.monotonic() + 60
        while rsp is None and time.monotonic() < deadline and assoc.is_established:
            _, rsp = assoc.dimse.get_msg(block=True)  # may return (None, None) at once
            if rsp is None:
                # Yield: a tight loop here held the GIL from the association's reactor thread, so the
                # answer was read only at the deadline (90 s per run, measured) or on a second association.
                time.sleep(0.05)
        if assoc.is_established:
            assoc.release()
        return rsp

    # Under heavy load (CI on 2 shared cores) the hand-made exchange has once lost its association
    # before the answer came (fresh-clone run, 2026-12-04): one more association, never a pass without one.
    rsp = push_ct_in_cr_context() or push_ct_in_cr_context()
    assert rsp is not None, "no C-STORE response on two associations"
    assert int(rsp.Status) == scp.NOT_IMAGE and not _stored(fresh_platform)


def test_truncated_and_garbage_instances_are_cannot_understand(make_receiver, fresh_platform, tmp_path):
    r = make_receiver()
    ds = _pacs.dataset(_pacs.ct_series(tmp_path)[0][0])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # truncated pixel data
    statuses = _pacs.scu_store(r.port, [_pacs.to_bytes(ds)])
    assert statuses == [scp.CANNOT_UNDERSTAND]
    time.sleep(1.0)
    assert not _stored(fresh_platform) and not r.spool.waiting() and _echo(r.port) == 0


def test_garbage_pdus_leave_the_server_up(make_receiver, fresh_platform, tmp_path):
    r = make_receiver()
    import random

    rng = random.Random(17)
    payloads = [
        b"",
        b"\x00" * 10,
        bytes(rng.randrange(256) for _ in range(4096)),
        b"\x01\x00\xff\xff\xff\xff" + b"A" * 64,  # A-ASSOCIATE-RQ claiming a 4 GiB PDU
        b"\x04\x00\x00\x00\x00\x10" + b"\x00" * 16,  # P-DATA before any association
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for p in payloads:
        with socket.create_connection(("127.0.0.1", r.port), 5) as s:
            s.sendall(p)
            s.settimeout(2)
            try:
                s.recv(1024)
            except (socket.timeout, ConnectionResetError):
                pass
    assert _echo(r.port) == 0
    series = _pacs.ct_series(tmp_path)[0]
    assert _pacs.scu_store(r.port, series) == [0] * len(series)
    _pacs.wait_for(lambda: _stored(fresh_platform), 10)


def test_aborted_association_stores_nothing(make_receiver, fresh_platform, tmp_path):
    r = make_receiver(settle_s=0.3)
    series = _pacs.ct_series(tmp_path, slices=6)[0]
    assert _pacs.scu_store(r.port, series[:3], release=False) == [0, 0, 0]  # then A-ABORT
    time.sleep(1.5)
    assert not _stored(fresh_platform) and not r.spool.waiting()
    assert any(x["outcome"] == "aborted_discarded" and x["instances"] == 3 for x in r.audit.read())


def test_series_that_never_completes_times_out_and_stores_nothing(make_receiver, fresh_platform, tmp_path):
    from pynetdicom import AE

    r = make_receiver(settle_s=0.3, network_timeout_s=1.0)
    series = _pacs.ct_series(tmp_path, slices=6)[0]
    ae = AE(ae_title=_pacs.ORTHANC_AET)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    assoc = ae.associate("127.0.0.1", r.port, ae_title=_pacs.LUNGSEARCH_AET)
    assert int(assoc.send_c_store(_pacs.dataset(series[0])).Status) == 0
    time.sleep(3.0)  # the sender goes silent: the SCP's network timeout ends the association
    assert not assoc.is_established
    time.sleep(0.8)
    assert not _stored(fresh_platform) and not r.spool.waiting() and _echo(r.port) == 0


def test_association_limits_answer_out_of_resources(make_receiver, fresh_platform, tmp_path):
    r = make_receiver(limits={"max_instances": 3})
    series = _pacs.ct_series(tmp_path, slices=5)[0]
    assert _pacs.scu_store(r.port, series) == [0, 0, 0, scp.OUT_OF_RESOURCES, scp.OUT_OF_RESOURCES]
    _pacs.wait_for(lambda: _stored(fresh_platform), 10)
    assert _stored(fresh_platform)[0].case.num_images == 3  # what was acknowledged is ingested


def test_spool_full_answers_out_of_resources(make_receiver, fresh_platform, tmp_path):
    r = make_receiver(max_spool_bytes=1000)
    assert _pacs.scu_store(r.port, _pacs.ct_series(tmp_path)[0][:1]) == [scp.OUT_OF_RESOURCES]
    time.sleep(0.8)
    assert not _stored(fresh_platform)


def test_platform_rejection_stores_nothing_and_retries_transient_failures(make_receiver, fresh_platform, tmp_path):
    import grpc

    r = make_receiver(settle_s=0.3)
    series = _pacs.ct_series(tmp_path, n=2)
    fresh_platform.servicer.behaviour.failures[:] = [(grpc.StatusCode.INVALID_ARGUMENT, False, None)]
    assert _pacs.scu_store(r.port, series[0]) == [0] * 4
    _pacs.wait_for(lambda: any(x["event"] == "ingest" for x in r.audit.read()), 10)
    assert not _stored(fresh_platform)
    assert [x["outcome"] for x in r.audit.read() if x["event"] == "ingest"] == ["rejected_invalid_request"]
    _pacs.wait_for(lambda: not r.pending(), 5)
    fresh_platform.servicer.behaviour.failures[:] = [(grpc.StatusCode.UNAVAILABLE, True, None)] * 6
    assert _pacs.scu_store(r.port, series[1]) == [0] * 4
    _pacs.wait_for(lambda: _stored(fresh_platform), 30)  # the SDK retries, then the receiver does
    assert _stored(fresh_platform)[0].case.num_images == 4


def test_no_phi_in_any_log_line_audit_line_or_spool_path(make_receiver, fresh_platform, tmp_path, all_logs):
    rel = _pacs.reliability_module()
    r = make_receiver(settle_s=0.3)
    series = rel.with_phi(_pacs.ct_series(tmp_path, slices=4)[0])
    bad = _pacs.dataset(series[0])
    bad.PixelData = bad.PixelData[:100]
    assert _pacs.scu_store(r.port, series + [_pacs.to_bytes(bad)])[-1] == scp.CANNOT_UNDERSTAND
    with pytest.raises(ConnectionRefusedError):
        _pacs.scu_store(r.port, series[:1], calling="STRANGER")
    # the receiver logs "ingested" just after the platform acknowledged the case: wait for both
    _pacs.wait_for(lambda: _stored(fresh_platform) and any("ingested" in line for line in all_logs.lines), 10)
    text = (
        "\n".join(all_logs.lines)
        + "\n"
        + r.audit.path.read_text()
        + "\n"
        + "\n".join(str(p) for p in r.spool.root.rglob("*"))
    )
    assert "ingested" in text  # the receiver did log
    leaks = [n for n in rel.phi_needles() if n in text]
    assert not leaks, f"PHI in logs: {leaks}"


def test_dicom_tls(make_receiver, fresh_platform, tmp_path):
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "scp.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "scp.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    r = make_receiver(tls={"cert_file": str(tmp_path / "scp.crt"), "key_file": str(tmp_path / "scp.key")})
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp_path / "scp.crt"))
    series = _pacs.ct_series(tmp_path)[0]
    assert _pacs.scu_store(r.port, series, ssl_context=client_ctx) == [0] * len(series)
    _pacs.wait_for(lambda: _stored(fresh_platform), 10)
    with pytest.raises(ConnectionRefusedError):  # plaintext to a TLS port: no association
        _pacs.scu_store(r.port, series)


def _start_process(cfg_path: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lungsearch.pacs", "--config", str(cfg_path)],
        stdout=subprocess.PIPE,
        stderr=open(log, "ab"),
        cwd=str(_pacs.REPO),
        env={**os.environ, "PYTHONPATH": str(_pacs.REPO)},
    )
    line = proc.stdout.readline().decode()
    assert line.startswith("ready"), line
    return proc


def test_restart_mid_association_loses_no_acknowledged_instance(tmp_path, scp_port, fresh_platform):
    """SIGKILL the receiver process after 3 acknowledged instances; the restarted one ingests all 3."""
    import yaml

    cfg = {
        "port": scp_port,
        "spool_dir": str(tmp_path / "spool"),
        "audit_log": str(tmp_path / "audit.jsonl"),
        "settle_s": 1.0,
        "target": fresh_platform.target,
        "callers": [{"ae_title": _pacs.ORTHANC_AET, "site": "site-a"}],
    }
    (tmp_path / "rx.yaml").write_text(yaml.safe_dump(cfg))
    series = _pacs.ct_series(tmp_path, slices=6)[0]
    proc = _start_process(tmp_path / "rx.yaml", tmp_path / "rx.log")
    from pynetdicom import AE

    ae = AE(ae_title=_pacs.ORTHANC_AET)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    assoc = ae.associate("127.0.0.1", scp_port, ae_title=_pacs.LUNGSEARCH_AET)
    acked = [s for s in series[:3] if int(assoc.send_c_store(_pacs.dataset(s)).Status) == 0]
    assert len(acked) == 3
    proc.send_signal(signal.SIGKILL)  # mid-association: no release, no abort handler runs
    proc.wait(10)
    assoc.abort()
    assert not fresh_platform.servicer.store
    proc = _start_process(tmp_path / "rx.yaml", tmp_path / "rx.log")
    try:
        _pacs.wait_for(lambda: fresh_platform.servicer.store, 20)
        [case] = fresh_platform.servicer.store.values()
        assert _instances(case.images) == _instances(acked)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in lines if x["event"] == "ingest"] == ["ok"]


def test_serve_flag_starts_the_receiver_process(tmp_path, scp_port, fresh_platform):
    """What `lungsearch serve --dicom-port N` runs next to the Serve app: its own process, stopped by SIGTERM."""
    import yaml

    from lungsearch.cli import build_parser
    from lungsearch.pacs import start_receiver_process

    args = build_parser().parse_args(["serve", "--dicom-port", "11112", "--dicom-config", "rx.yaml"])
    assert (args.dicom_port, args.dicom_config) == (11112, "rx.yaml")
    assert build_parser().parse_args(["serve"]).dicom_port == 0  # off by default
    (tmp_path / "rx.yaml").write_text(
        yaml.safe_dump(
            {
                "spool_dir": str(tmp_path / "spool"),
                "audit_log": str(tmp_path / "audit.jsonl"),
                "callers": [{"ae_title": _pacs.ORTHANC_AET}],
            }
        )
    )
    proc = start_receiver_process(
        port=scp_port, target=fresh_platform.target, config=str(tmp_path / "rx.yaml"), log_file=tmp_path / "rx.log"
    )
    try:
        _pacs.wait_port(scp_port, 30)
        assert _echo(scp_port) == 0
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0


@pytest.mark.parametrize("chunk", [1 << 30, 4096])  # whole, and chunked transfer encoding (dicomweb-client #42)
def test_stow_rs_endpoint_stores_and_answers_per_instance(make_receiver, fresh_platform, tmp_path, chunk):
    from dicomweb_client.api import DICOMwebClient

    from lungsearch.pacs.stow import StowServer

    r = make_receiver(settle_s=30)  # the request's end must trigger the ingest
    stow = StowServer(r, tokens={"stow-secret": _pacs.ORTHANC_AET}).start()
    try:
        series = _pacs.ct_series(tmp_path, slices=3)[0]
        sr = _pacs.dataset(_pacs.pydicom_test_file("reportsi.dcm"))
        web = DICOMwebClient(
            f"http://127.0.0.1:{stow.port}", headers={"Authorization": "Bearer stow-secret"}, chunk_size=chunk
        )
        answer = web.store_instances([_pacs.dataset(b) for b in series] + [sr])
        stored = [str(x.ReferencedSOPInstanceUID) for x in answer.ReferencedSOPSequence]
        assert sorted(stored) == sorted(str(_pacs.dataset(b).SOPInstanceUID) for b in series)
        [bad] = answer.FailedSOPSequence
        assert bad.FailureReason == scp.NOT_IMAGE  # an SR is no image, here as over DIMSE
        _pacs.wait_for(lambda: _stored(fresh_platform), 15)
        assert _stored(fresh_platform)[0].case.num_images == 3
        nobody = DICOMwebClient(f"http://127.0.0.1:{stow.port}", headers={"Authorization": "Bearer wrong"})
        with pytest.raises(Exception, match="401"):
            nobody.store_instances([_pacs.dataset(series[0])])
    finally:
        stow.stop()


def test_stow_rs_in_the_receiver_process(tmp_path, scp_port, fresh_platform):
    """`python -m lungsearch.pacs` with stow_port: a STOW-RS push is ingested like a C-STORE."""
    import yaml
    from dicomweb_client.api import DICOMwebClient

    stow_port = _pacs.free_port()
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump({"t0ken": _pacs.ORTHANC_AET}))
    (tmp_path / "rx.yaml").write_text(
        yaml.safe_dump(
            {
                "port": scp_port,
                "spool_dir": str(tmp_path / "spool"),
                "audit_log": str(tmp_path / "audit.jsonl"),
                "target": fresh_platform.target,
                "stow_port": stow_port,
                "stow_tokens_file": str(tmp_path / "tokens.yaml"),
                "callers": [{"ae_title": _pacs.ORTHANC_AET, "profiles": {"ct": "ct-ild"}}],
            }
        )
    )
    proc = _start_process(tmp_path / "rx.yaml", tmp_path / "rx.log")
    try:
        series = _pacs.ct_series(tmp_path, slices=2)[0]
        web = DICOMwebClient(f"http://127.0.0.1:{stow_port}", headers={"Authorization": "Bearer t0ken"})
        answer = web.store_instances([_pacs.dataset(b) for b in series])
        assert len(answer.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in answer
        _pacs.wait_for(lambda: fresh_platform.servicer.store, 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0
