"""The page through the TLS front (``TLSProxy(http_upstream=...)``, a real nginx): HTTPS reaches Serve's
HTTP port under /lungsearch/, gRPC paths still go to the gRPC upstream, plaintext is refused."""

from __future__ import annotations

import importlib.util
import socket
import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lungsearch.security.tls_proxy import TLSProxy, nginx_available


def _pki(tmp_path: Path) -> dict[str, Path]:
    path = Path(__file__).resolve().parents[1] / "security" / "conftest.py"
    spec = importlib.util.spec_from_file_location("lungsearch_tests_security_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from cryptography.hazmat.primitives import serialization

    ca_key, srv_key = mod._key(), mod._key()
    ca = mod._cert("lungsearch-test-ca", ca_key, ca=True)
    srv = mod._cert("localhost", srv_key, ca, ca_key, server=True)
    out = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "server.crt": srv.public_bytes(serialization.Encoding.PEM),
        "server.key": mod._pem_key(srv_key),
    }
    for name, data in out.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in out}


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = f"page at {self.path} proto={self.headers.get('X-Forwarded-Proto')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        return


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_over_tls(tmp_path):
    if not nginx_available():
        pytest.skip("needs nginx (Debian: nginx-light)")
    pki = _pki(tmp_path)
    web = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    port = _port()
    proxy = TLSProxy(
        listen_port=port,
        upstream=f"127.0.0.1:{_port()}",
        cert_file=pki["server.crt"],
        key_file=pki["server.key"],
        http_upstream=f"127.0.0.1:{web.server_address[1]}",
    )
    assert "location /lungsearch/" in proxy.render_config(tmp_path)
    try:
        proxy.start()
        ctx = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        with urllib.request.urlopen(f"https://localhost:{port}/lungsearch/", context=ctx, timeout=10) as r:
            assert r.read().decode() == "page at /lungsearch/ proto=https"
        # plaintext HTTP to the TLS port is refused (nginx answers 400, never the page)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://localhost:{port}/lungsearch/", timeout=10)
    finally:
        proxy.stop()
        web.shutdown()
    assert "location /lungsearch/" not in TLSProxy(
        listen_port=1, upstream="x:1", cert_file=pki["server.crt"], key_file=pki["server.key"]
    ).render_config(tmp_path)
