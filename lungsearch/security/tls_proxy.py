"""TLS termination in front of the Ray Serve gRPC proxy, with a real nginx (``grpc_pass``).

Ray Serve 2.60's gRPC proxy has no TLS option, so on one machine ``lungsearch serve --tls-cert …
--tls-key …`` keeps the Serve port on loopback and puts nginx in front of it; in Kubernetes the
Helm chart renders the equivalent (an ingress / Envoy in front of the cluster-internal port).

Example::

    with TLSProxy(listen_port=9443, upstream="127.0.0.1:9000",
                  cert_file="tls.crt", key_file="tls.key") as proxy:
        ...  # clients use grpc.secure_channel("host:9443", creds)

With ``client_ca_file`` set, clients must present a certificate signed by that CA (mTLS).
The proxy writes no access log (request paths are harmless, but operators should not have to
reason about it) and keeps its config, pid and temp files in a private work directory.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from lungsearch.errors import ConfigError, LungsearchError

__all__ = ["TLSProxy", "nginx_available"]


def nginx_available() -> str | None:
    """Path of the nginx binary, or None (Debian: ``apt-get install nginx-light``)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


class TLSProxy:
    """An nginx process terminating TLS (optionally mTLS) and forwarding gRPC to ``upstream``.

    Args:
        listen_host: address to bind; "0.0.0.0" to serve the network.
        listen_port: TLS port clients connect to.
        upstream: "host:port" of the plaintext Serve gRPC proxy (keep it on loopback).
        cert_file, key_file: PEM server certificate chain and private key.
        client_ca_file: PEM CA bundle; when set, client certificates are required (mTLS).
        max_body_bytes: largest request message accepted (the gateway enforces its own limits too).
        read_timeout_s: longest a single call may run through the proxy.
        http_upstream: "host:port" of Serve's plaintext HTTP proxy; when set, the same TLS port also
            serves the web page (``/lungsearch/``, proxied as HTTP/1.1) beside gRPC, whose paths
            (``/lungsearch.v1.LungSearch/...``) never start with ``/lungsearch/``.
    """

    def __init__(
        self,
        *,
        listen_port: int,
        upstream: str,
        cert_file: str | os.PathLike,
        key_file: str | os.PathLike,
        listen_host: str = "127.0.0.1",
        client_ca_file: str | os.PathLike | None = None,
        max_body_bytes: int = 256 * 1024 * 1024,
        read_timeout_s: int = 300,
        http_upstream: str | None = None,
    ) -> None:
        for label, path in (("cert_file", cert_file), ("key_file", key_file), ("client_ca_file", client_ca_file)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS {label}: no such file: {path}")
        self.listen_host, self.listen_port, self.upstream = listen_host, int(listen_port), upstream
        self.cert_file, self.key_file = Path(cert_file).resolve(), Path(key_file).resolve()
        self.client_ca_file = Path(client_ca_file).resolve() if client_ca_file else None
        self.max_body_bytes, self.read_timeout_s = max_body_bytes, read_timeout_s
        self.http_upstream = http_upstream
        self._workdir: Path | None = None
        self._proc: subprocess.Popen | None = None

    def render_config(self, workdir: Path) -> str:
        """The nginx.conf this proxy runs with."""
        user = ""
        if os.geteuid() == 0:
            # A root master would drop workers to 'nobody', who cannot read a private work dir.
            user = f"user {getpass.getuser()};"
        mtls = ""
        if self.client_ca_file:
            # nginx answers a missing or untrusted client certificate with HTTP 400, which gRPC
            # clients read as INTERNAL; 401 reads as UNAUTHENTICATED (gRPC's HTTP status mapping),
            # so the SDK raises its auth error, as for a missing token.
            mtls = (
                f"ssl_client_certificate {self.client_ca_file};\n        ssl_verify_client on;\n"
                "        error_page 495 496 = @unauthenticated;\n"
                "        location @unauthenticated { return 401; }"
            )
        web = ""
        if self.http_upstream:
            web = (
                f"location /lungsearch/ {{\n            proxy_pass http://{self.http_upstream};\n"
                "            proxy_http_version 1.1;\n            proxy_set_header X-Forwarded-Proto https;\n"
                f"            proxy_read_timeout {self.read_timeout_s}s;\n        }}"
            )
        temp = "\n    ".join(
            f"{kind}_temp_path {workdir}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""{user}
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    {temp}
    server {{
        listen {self.listen_host}:{self.listen_port} ssl http2;
        ssl_certificate {self.cert_file};
        ssl_certificate_key {self.key_file};
        ssl_protocols TLSv1.2 TLSv1.3;
        {mtls}
        client_max_body_size {self.max_body_bytes};
        grpc_read_timeout {self.read_timeout_s}s;
        grpc_send_timeout {self.read_timeout_s}s;
        {web}
        location / {{
            grpc_pass grpc://{self.upstream};
        }}
    }}
}}
"""

    def start(self, timeout: float = 10.0) -> "TLSProxy":
        """Start nginx and wait until the TLS port accepts connections."""
        binary = nginx_available()
        if not binary:
            raise ConfigError("TLS termination needs nginx (Debian: apt-get install nginx-light)")
        self._workdir = Path(tempfile.mkdtemp(prefix="lungsearch-tls-"))
        conf = self._workdir / "nginx.conf"
        conf.write_text(self.render_config(self._workdir))
        check = subprocess.run(
            [binary, "-t", "-q", "-c", str(conf), "-p", str(self._workdir), "-e", str(self._workdir / "error.log")],
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise ConfigError(f"nginx rejected the TLS proxy config: {check.stderr.strip()[-300:]}")
        self._proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self._workdir), "-e", str(self._workdir / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise LungsearchError(f"nginx exited at start: {err.strip()[-300:]}")
            try:
                with socket.create_connection(
                    (self.listen_host if self.listen_host != "0.0.0.0" else "127.0.0.1", self.listen_port), 0.2
                ):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise LungsearchError(f"nginx did not listen on port {self.listen_port} within {timeout:.0f} s")

    def stop(self) -> None:
        """Graceful stop (QUIT lets in-flight calls finish), then kill after 5 s."""
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(3)  # SIGQUIT: graceful shutdown
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "TLSProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
