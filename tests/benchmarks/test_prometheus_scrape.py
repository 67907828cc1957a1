"""benchmarks/_prometheus.py: a real Prometheus (Debian's) scrapes a lungsearch exposition on loopback;
the report counts the stored series and finds a PHI needle in a label value when one is there."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks._prometheus import PROMETHEUS, PrometheusScrape, label_findings
from lungsearch.serving.metrics import ServingMetrics

NEEDLE = "Doe^Jane"


def _exposition() -> str:
    m = ServingMetrics("gateway", ray_export=False)
    with m.time("Search"):
        pass
    m.observe_report_scrub({"name": 2, "date": 1})
    m.observe_quality("cxr", "north", top1=0.9, topk=0.7, low=False, drift=0.05, psi=0.01)
    return m.render()


def _serve(text: str) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def prometheus_binary():
    import os

    if not os.path.exists(PROMETHEUS):
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    return PROMETHEUS


@pytest.mark.parametrize("leak", [False, True])
def test_a_real_prometheus_scrapes_and_the_phi_check_can_fail(prometheus_binary, tmp_path, leak):
    text = _exposition()
    if leak:  # what the check exists for: a label value carrying a patient name
        text += f'# TYPE leaky_total counter\nleaky_total{{patient="{NEEDLE}"}} 1.0\n'
    server = _serve(text)
    try:
        with PrometheusScrape(f"127.0.0.1:{server.server_address[1]}", tmp_path / "prom", interval_s=0.5) as prom:
            report = prom.report(needles=[NEEDLE, "MRN-99887766"])
    finally:
        server.shutdown()
    assert report["scrape_health"] == "up"
    assert report["series"] >= 20 and report["label_values"]["category"] == 2
    assert report["labels_with_phi"] == (["leaky_total:patient"] if leak else [])
    assert report["labels_identifier_like"] == []


def test_label_findings_flags_identifier_like_values():
    out = label_findings(
        [{"__name__": "x", "case": "0123456789abcdef0123456789abcdef"}, {"__name__": "y", "uid": "1.2.3.4.5"}]
    )
    assert out["labels_identifier_like"] == ["x:case", "y:uid"] and out["series"] == 2
