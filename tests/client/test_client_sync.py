"""LungSearchClient against a real local gRPC server (tests/client/conftest.py)."""

from __future__ import annotations

import io
import json
import pickle
import time
import warnings
from datetime import datetime

import grpc
import pytest

from lungsearch.client import (
    Case,
    Classification,
    DeadlineExceeded,
    ExplainResult,
    Filter,
    Image,
    IngestResult,
    InvalidArgument,
    LungSearchClient,
    LungSearchError,
    ModelInfo,
    ModelRef,
    NotFound,
    ResourceExhausted,
    RetryPolicy,
    SearchResult,
    Unauthenticated,
    Unavailable,
)
from lungsearch.errors import LungsearchError

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.02, max_backoff=0.05, seed=0)


@pytest.fixture
def client(server):
    with LungSearchClient(server.target, timeout=5, retries=FAST) as c:
        yield c


# ---- every method ------------------------------------------------------------------------------


def test_ingest_is_idempotent_and_get_delete_round_trip(client, servicer, png):
    img = png(seed=1)
    first = client.ingest(img, report="Small left pleural effusion.", labels=["Effusion"], source_id="acc-1")
    assert isinstance(first, IngestResult) and first.created and len(first.case_key) == 32
    assert first.model == ModelRef("cxr-report", "v1")
    again = client.ingest(img, report="Small left pleural effusion.", labels=["Effusion"], source_id="acc-1")
    assert again.case_key == first.case_key and again.created is False

    case = client.get_case(first.case_key)
    assert isinstance(case, Case)
    assert (case.modality, case.view, case.labels, case.num_images) == ("cxr", "PA", ("Effusion",), 1)
    assert case.report_excerpt.startswith("Small left") and str(case.model) == "cxr-report@v1"
    assert isinstance(case.ingested_at, datetime) and case.ingested_at.tzinfo is not None
    assert servicer.store[first.case_key].images == [img]

    assert client.delete_case(first.case_key) is True
    assert client.delete_case(first.case_key) is False
    with pytest.raises(NotFound) as err:
        client.get_case(first.case_key)
    e = err.value
    assert e.status == grpc.StatusCode.NOT_FOUND and e.details == "unknown case key"
    assert e.detail is not None and e.detail.reason == "NOT_FOUND" and e.field == "case_key"
    assert isinstance(e, LungsearchError)  # the library's base class catches remote failures too


def test_ingest_accepts_paths_files_image_hints_and_lists(client, servicer, png, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png(seed=2))
    by_path = client.ingest(path)
    by_str = client.ingest(str(path))
    by_file = client.ingest(io.BytesIO(png(seed=2)))
    assert by_path.case_key == by_str.case_key == by_file.case_key
    hinted = client.ingest(Image(png(seed=3), modality="cxr", view="AP"))
    several = client.ingest([png(seed=4), png(seed=5)], labels="Opacity")
    assert servicer.store[several.case_key].images == [png(seed=4), png(seed=5)]
    assert servicer.store[several.case_key].case.labels == ["Opacity"]
    assert hinted.created and servicer.calls["Ingest"] == 5


def test_rejected_image_raises_invalid_argument_with_server_detail_and_no_retry(client, servicer):
    with pytest.raises(InvalidArgument) as err:
        client.ingest(b"not an image at all")
    e = err.value
    assert e.reason == "INVALID_IMAGE" and e.code == "unknown_format" and e.field == "images[0]"
    assert "not DICOM, PNG or JPEG" in str(e) and e.method == "Ingest" and not e.retriable
    assert servicer.calls["Ingest"] == 1


def test_client_side_validation_makes_no_call(client, servicer, png):
    with pytest.raises(InvalidArgument):
        client.search()
    with pytest.raises(InvalidArgument):
        client.search(image=png(), images=[png()])
    with pytest.raises(InvalidArgument):
        client.search(report="x", top_k=0)
    with pytest.raises(InvalidArgument):
        client.ingest([])
    with pytest.raises(InvalidArgument):
        client.activate_model("cxr-report")  # no version
    with pytest.raises(ValueError):
        client.search(report="x", model="a@b@c")
    with pytest.raises(FileNotFoundError):
        client.ingest("/nonexistent/x.png")
    assert sum(servicer.calls.values()) == 0


def test_large_ingest_streams_automatically(client, servicer, png):
    big = png(seed=6) + b"\x00" * (3_500_000)  # over STREAM_THRESHOLD_BYTES
    res = client.ingest(big, labels=["Normal"])
    assert servicer.calls["IngestStream"] == 1 and servicer.calls["Ingest"] == 0
    assert servicer.store[res.case_key].images == [big]
    assert max(servicer.chunk_sizes) <= 1 << 20 and len(servicer.chunk_sizes) == 4


def test_ingest_series_streams_and_reassembles_bytes(client, servicer, dicom, tmp_path):
    folder = tmp_path / "ct-0001"
    folder.mkdir()
    slices = {
        "s01.dcm": dicom(b"\x01" * (2_500_000)),
        "s02.dcm": dicom(b"\x02" * 10),
        "s03.dcm": dicom(b"\x03" * ((1 << 20) - 132)),
    }  # exactly 1 MiB: one chunk
    for name, data in slices.items():
        (folder / name).write_bytes(data)
    (folder / "report.txt").write_text("sidecar, not an image")
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "DICOMDIR").write_bytes(dicom(b"dir"))
    res = client.ingest_series(folder, report="Ground-glass opacities.", labels=["ggo"], model="ct-ild")
    stored = servicer.store[res.case_key]
    assert stored.images == [slices[n] for n in sorted(slices)]
    assert stored.case.num_images == 3 and stored.case.model.profile == "ct-ild"
    assert servicer.chunk_sizes == [1 << 20, 1 << 20, 2_500_132 - 2 * (1 << 20), 142, 1 << 20]
    # A list of files (and bytes) works the same, with smaller chunks on request.
    res2 = client.ingest_series([folder / "s02.dcm", slices["s03.dcm"]], chunk_bytes=300_000)
    assert servicer.store[res2.case_key].images == [slices["s02.dcm"], slices["s03.dcm"]]
    with pytest.raises(InvalidArgument):
        client.ingest_series(tmp_path / "ct-0001" / "..", chunk_bytes=10)  # only a folder, no images
    with pytest.raises(ValueError):
        client.ingest_series(folder, chunk_bytes=(1 << 20) + 1)


def _populate(client, png):
    keys = {}
    for seed, labels, report in [
        (10, ["Effusion"], "bilateral pleural effusion"),
        (11, ["Opacity", "Nodule"], "right upper lobe opacity and nodule"),
        (12, ["Normal"], "no acute cardiopulmonary process"),
    ]:
        keys[seed] = client.ingest(png(seed=seed), report=report, labels=labels).case_key
    return keys


def test_search_by_report_image_and_filters(client, png):
    keys = _populate(client, png)
    res = client.search(report="pleural effusion on both sides", top_k=2)
    assert isinstance(res, SearchResult) and len(res) == 2 and [h.rank for h in res] == [1, 2]
    assert res[0].case.case_key == keys[10] and res[0].score > res[1].score
    assert res[0].hamming_distance is None and res.model == ModelRef("cxr-report", "v1")

    by_image = client.search(image=png(seed=11))
    assert by_image.hits[0].case.case_key == keys[11] and by_image.hits[0].score == pytest.approx(1.0)

    only = client.search(report="opacity", filters=Filter(labels_any=("Nodule",)))
    assert [h.case.case_key for h in only] == [keys[11]]
    none = client.search(report="opacity", filters={"labels_none": ["Nodule", "Normal"]})
    assert [h.case.case_key for h in none] == [keys[10]]
    assert len(client.search(report="x", filters=Filter(modality="ct"))) == 0
    assert len(client.search(report="x", filters=Filter.parse(["modality=cxr", "label!=Normal"]))) == 2
    json.dumps(res.to_dict())  # JSON-ready


def test_classify_explain_models_activate(client, png, tmp_path):
    _populate(client, png)
    c = client.classify(image=png(seed=10), knn_k=1)
    assert isinstance(c, Classification) and list(c.probabilities) == ["Normal", "Effusion", "Opacity"]
    assert c.top_label == "Effusion" and c.knn_vote == {"Effusion": 1.0}
    assert c.top_score == pytest.approx(c.probabilities["Effusion"])
    assert sum(c.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    e = client.explain(image=png(seed=10), label="Effusion")
    assert isinstance(e, ExplainResult) and e.label == "Effusion" and e.score == pytest.approx(0.75)
    assert e.heatmap_png.startswith(b"\x89PNG") and e.overlay_png.startswith(b"\x89PNG")
    out = e.save(tmp_path / "heat.png")
    assert out.read_bytes() == e.heatmap_png
    assert e.save(tmp_path / "over.png", overlay=True).read_bytes() == e.overlay_png
    assert json.loads(json.dumps(e.to_dict()))["label"] == "Effusion"

    models = client.models()
    assert all(isinstance(m, ModelInfo) for m in models) and len(models) == 3
    live = {str(m.model) for m in models if m.live}
    assert live == {"cxr-report@v1", "ct-ild@v1"}
    assert models[0].synthetic_data and isinstance(models[0].created_at, datetime) and models[0].metrics["auc"] == 0.9
    assert [str(m.model) for m in client.models(profile="ct-ild")] == ["ct-ild@v1"]

    act = client.activate_model("cxr-report", "v2")
    assert (str(act.previous), str(act.live)) == ("cxr-report@v1", "cxr-report@v2")
    assert str(client.activate_model("cxr-report@v1").live) == "cxr-report@v1"
    with pytest.raises(NotFound):
        client.activate_model("cxr-report@v9")
    with pytest.raises(NotFound) as err:
        client.search(report="x", model="nope")
    assert err.value.reason == "MODEL_NOT_FOUND"


def test_health_standard_service(client, server):
    from grpc_health.v1 import health_pb2

    h = client.health()
    assert h.serving and h.status == "SERVING" and h.source == "grpc.health.v1"
    assert client.health("lungsearch.v1.LungSearch").serving
    assert client.health("no.such.Service").status == "SERVICE_UNKNOWN"
    server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert client.health().status == "NOT_SERVING" and not client.health().serving


def test_health_falls_back_to_ray_serve_healthz(make_server):
    up = make_server(health="serve")
    down = make_server(health="serve", serve_message=None)
    bare = make_server(health="none")
    with LungSearchClient(up.target, timeout=5, retries=FAST) as c:
        h = c.health()
        assert (h.status, h.source, h.message) == ("SERVING", "ray.serve", "success")
    with LungSearchClient(down.target, timeout=5, retries=FAST) as c:
        h = c.health()
        assert (h.status, h.source, h.serving) == ("NOT_SERVING", "ray.serve", False)
        assert "not running" in h.message
    with LungSearchClient(bare.target, timeout=5, retries=FAST) as c:
        with pytest.raises(LungSearchError) as err:
            c.health()
        assert err.value.status == grpc.StatusCode.UNIMPLEMENTED


# ---- deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.5, 1.0])
def test_deadline_is_honoured(server, servicer, timeout, png):
    servicer.behaviour.delay = 5.0
    with LungSearchClient(server.target, timeout=30, retries=FAST) as c:
        c.health()  # connect first, so the measurement is the call alone
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded) as err:
            c.search(report="slow", timeout=timeout)
        elapsed = time.monotonic() - start
    assert elapsed <= timeout * 1.1, elapsed
    assert elapsed >= timeout * 0.9
    assert err.value.method == "Search" and servicer.calls["Search"] == 1  # deadline errors are not retried


def test_client_default_timeout_applies(server, servicer):
    servicer.behaviour.delay = 5.0
    with LungSearchClient(server.target, timeout=0.4, retries=FAST) as c:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            c.models()
        assert time.monotonic() - start <= 0.4 * 1.1 + 0.2  # includes the first connection


# ---- retries -----------------------------------------------------------------------------------

U, R, INV = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "failures, calls, error",
    [
        ([(U, True, None)] * 2, 3, None),  # transient: retried until it works
        ([(U, None, None)] * 3, 4, None),  # no ErrorDetail: the status alone decides
        ([(R, True, None)], 2, None),  # overloaded (retriable)
        ([(R, False, None)], 1, ResourceExhausted),  # a size limit: never retried
        ([(R, None, None)], 2, None),
        ([(INV, None, None)], 1, InvalidArgument),  # never on INVALID_ARGUMENT
        ([(grpc.StatusCode.INTERNAL, None, None)], 2, None),  # bare INTERNAL (a replica died mid-call): retried
        ([(grpc.StatusCode.INTERNAL, False, None)], 1, LungSearchError),  # the server's own INTERNAL (with detail): not
        ([(U, True, -1)], 1, Unavailable),  # server pushback < 0: do not retry
        ([(U, True, None)] * 4, 4, Unavailable),  # max_attempts
    ],
)
def test_retry_only_on_transient_codes(server, servicer, failures, calls, error):
    servicer.behaviour.failures = list(failures)
    with LungSearchClient(server.target, timeout=5, retries=FAST) as c:
        if error is None:
            assert c.models()
        else:
            with pytest.raises(error):
                c.models()
    assert servicer.calls["ListModels"] == calls


def test_retries_never_run_past_the_deadline(server, servicer):
    servicer.behaviour.failures = [(U, True, None)] * 1000
    policy = RetryPolicy(max_attempts=1000, initial_backoff=0.05, max_backoff=0.1, seed=1)
    with LungSearchClient(server.target, timeout=1.0, retries=policy) as c:
        c.health()
        start = time.monotonic()
        with pytest.raises(Unavailable):
            c.models()
        elapsed = time.monotonic() - start
    assert elapsed <= 1.0 * 1.1
    assert servicer.calls["ListModels"] >= 5  # it did keep trying inside the budget


def test_backoff_grows_and_honours_pushback(server, servicer):
    servicer.behaviour.failures = [(U, True, 250)]
    with LungSearchClient(server.target, timeout=5, retries=FAST) as c:
        c.models()
    t = servicer.call_times["ListModels"]
    assert len(t) == 2 and t[1] - t[0] >= 0.24  # slept the server's pushback, not the 0.02 s backoff


def test_streaming_ingest_is_retried_with_a_fresh_stream(client, servicer, dicom, tmp_path):
    for i in range(2):
        (tmp_path / f"{i}.dcm").write_bytes(dicom(bytes([i]) * 1_500_000))
    servicer.behaviour.failures = [(U, True, None)]
    res = client.ingest_series(tmp_path)
    assert servicer.calls["IngestStream"] == 2
    assert servicer.store[res.case_key].images == [(tmp_path / f"{i}.dcm").read_bytes() for i in range(2)]


def test_retry_policy_refuses_non_transient_codes():
    with pytest.raises(ValueError):
        RetryPolicy(retry_on=frozenset({grpc.StatusCode.INVALID_ARGUMENT}))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_unreachable_server_is_unavailable_within_deadline():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with LungSearchClient(f"127.0.0.1:{port}", timeout=1.0, retries=FAST) as c:
        start = time.monotonic()
        with pytest.raises(Unavailable) as err:
            c.models()
        assert time.monotonic() - start <= 1.1
    assert err.value.retriable


# ---- auth and TLS ------------------------------------------------------------------------------


def test_token_protected_server(server, servicer):
    servicer.behaviour.token = "s3cret"
    with LungSearchClient(server.target, timeout=5, retries=FAST) as anon:
        with pytest.raises(Unauthenticated) as err:
            anon.models()
    assert err.value.status == grpc.StatusCode.UNAUTHENTICATED and err.value.reason == "UNAUTHENTICATED"
    assert "missing bearer token" in str(err.value) and servicer.calls["ListModels"] == 1  # not retried
    with LungSearchClient(server.target, token="wrong", timeout=5) as bad:
        with pytest.raises(Unauthenticated, match="invalid bearer token"):
            bad.models()
    with LungSearchClient(server.target, token="s3cret", timeout=5, metadata=[("application", "lungsearch")]) as ok:
        assert ok.models()
    assert servicer.metadata[-1]["authorization"] == "Bearer s3cret"
    assert servicer.metadata[-1]["application"] == "lungsearch"
    assert servicer.metadata[-1]["user-agent"].startswith("lungsearch-sdk/")


def test_token_without_tls_to_a_remote_host_warns():
    with pytest.warns(UserWarning, match="without TLS"):
        LungSearchClient("lungsearch.example.org:9000", token="t").close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LungSearchClient("localhost:9000", token="t").close()
        LungSearchClient("lungsearch.example.org:443", token="t", tls=True).close()


def test_tls_with_ca_file(make_server, tls_files):
    creds = grpc.ssl_server_credentials(
        [((tls_files / "server.key").read_bytes(), (tls_files / "server.pem").read_bytes())]
    )
    srv = make_server(credentials=creds)
    with LungSearchClient(srv.target, ca_file=tls_files / "ca.pem", timeout=5, retries=FAST) as c:
        assert c.tls and c.health().serving and c.models()
    with LungSearchClient(srv.target, timeout=1, retries=FAST) as plain:  # plaintext to a TLS port
        with pytest.raises(Unavailable):
            plain.models()
    with LungSearchClient(srv.target, tls=True, timeout=1, retries=FAST) as system_roots:  # self-signed: untrusted
        with pytest.raises(Unavailable):
            system_roots.models()


# ---- construction and errors ------------------------------------------------------------------


def test_constructor_validation():
    for bad in (0, -1, None):
        with pytest.raises(ValueError):
            LungSearchClient("localhost:1", timeout=bad)
    with pytest.raises(ValueError):
        LungSearchClient("")
    with pytest.raises(ValueError):
        LungSearchClient("localhost:1", cert_file="c.pem")  # no key
    with pytest.raises(ValueError):
        LungSearchClient("localhost:1", tls=grpc.ssl_channel_credentials(), ca_file="ca.pem")
    c = LungSearchClient("localhost:1", options={"grpc.max_receive_message_length": 1234})
    assert dict(c.options)["grpc.max_receive_message_length"] == 1234 and "grpc.keepalive_time_ms" in dict(c.options)
    c.close()


def test_errors_pickle_with_server_detail(client):
    with pytest.raises(InvalidArgument) as err:
        client.ingest(b"garbage")
    back = pickle.loads(pickle.dumps(err.value))
    assert type(back) is InvalidArgument and back.detail == err.value.detail and back.status == err.value.status
    assert str(back) == str(err.value) and back.to_dict()["reason"] == "INVALID_IMAGE"
