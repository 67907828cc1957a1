"""Crash durability: ``kill -9`` of the whole app during a stream of ingests, then a restart.

``lungsearch serve`` runs as a subprocess with its own local Ray (2 CPUs) and the default embedded
store (a milvus-lite file). Two clients stream ingests of phantom radiographs (synthetic); after a
few acknowledged ingests every process of the app (the CLI, Ray's GCS and raylet, the Serve
controller, proxy and replicas) is SIGKILLed at once, as a power cut or an OOM kill of the pod
would. Then:

* the milvus-lite file is opened directly: every acknowledged case is there, complete (metadata,
  a finite unit embedding and a code of the right length: nothing half-stored), and nothing is
  there that was never sent;
* the app is started again on the same file, this time as a production operator would run it
  (``--tokens-file``, ``--tls-cert/--tls-key/--tls-client-ca``: a real nginx terminating mTLS in
  front of Serve): every acknowledged case is returned by GetCase and found first by searching
  with its own image, and the rebuilt in-memory Hamming index holds exactly the rows of Milvus
  (same count; each row's own code and embedding rank it first at Hamming distance 0). The
  plaintext Serve port, which Serve binds on every interface, refuses a peer that is not on
  loopback even with a valid admin token (it would be going around TLS).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import _reliability as R
import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.slow]

PROFILE = "cxr-hash"
N_CASES = 40
KILL_AFTER_ACKS = 8


class ServeProcess:
    """``lungsearch serve`` in a subprocess (its own process group), on free loopback ports."""

    def __init__(self, work: Path, artifacts: Path, grpc_port: int) -> None:
        cfg = yaml.safe_load((R.REPO / "services" / "serve_config.yaml").read_text())
        cfg["http_options"]["port"] = R.free_port()  # Serve's HTTP proxy: a free port, not 8000
        self.config = work / "serve_config.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.argv = [
            sys.executable,
            "-m",
            "lungsearch.cli",
            "serve",
            "--config",
            str(self.config),
            "--profile",
            PROFILE,
            "--artifacts-dir",
            str(artifacts),
            "--milvus-uri",
            str(work / "lungsearch.db"),
            "--hmac-key-file",
            str(work / "hmac.key"),
            "--insecure-local",
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            str(R.free_port()),
            "--num-cpus",
            "2",
            # one Gateway: the whole app is killed here, a second replica only slows each start
            # (measured 132 s for this test with one, 157 s with two, loaded 2 cores)
            "--replicas",
            "1",
        ]
        self.log = work / "serve.log"
        self.grpc_port = grpc_port
        self.metrics_port = int(self.argv[self.argv.index("--metrics-port") + 1])
        self.proc: subprocess.Popen | None = None

    def start(self, extra: list[str] = (), timeout: float = 420.0) -> None:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        env.pop("LUNGSEARCH_RAY_ADDRESS", None)
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            self.argv + list(extra),
            cwd=str(R.REPO),
            env=env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while b"ready; Ctrl-C stops" not in self.log.read_bytes()[offset:]:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"lungsearch serve exited ({self.proc.returncode}): "
                    f"{self.log.read_bytes()[-2000:].decode(errors='replace')}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError("lungsearch serve did not get ready")
            time.sleep(0.5)

    def kill(self) -> list[int]:
        """SIGKILL the CLI and every descendant at once; returns the PIDs killed."""
        if self.proc is None:
            return []
        pids = R.kill_tree(self.proc.pid)
        self.proc.wait(30)
        self.proc = None
        return pids

    def stop(self, timeout: float = 120.0) -> None:
        """Ctrl-C (graceful: Serve and Ray shut down), then a kill if it hangs."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
            self.proc = None
        except subprocess.TimeoutExpired:
            self.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill9_during_ingest_stream_loses_no_acknowledged_case(tmp_path):
    from lungsearch.client import NO_RETRY, LungSearchClient, RetryPolicy
    from lungsearch.store import MilvusStore

    cards = R.build_registry(tmp_path / "artifacts", {PROFILE: ["data.image_size=64", "data.phantom.size=64"]})
    card = cards[0]
    pngs = R.phantom_pngs(tmp_path / "cxr", N_CASES, size=64, seed=3)
    labels = [["Normal"] if i % 2 else ["COVID"] for i in range(N_CASES)]
    app = ServeProcess(tmp_path, tmp_path / "artifacts", R.free_port())
    target = f"127.0.0.1:{app.grpc_port}"
    t0 = time.monotonic()
    app.start()
    print(f"\nlungsearch serve up in {time.monotonic() - t0:.1f} s")
    try:
        # ---- the ingest stream, killed mid-way ------------------------------------------------
        acked: dict[int, str] = {}  # case index -> case key (the server said OK)
        sent: set[int] = set()  # every case index a request was sent for
        lock = threading.Lock()
        stop = threading.Event()

        def stream(worker: int) -> None:
            client = LungSearchClient(target, timeout=60, retries=NO_RETRY)
            for i in range(worker, N_CASES, 2):
                if stop.is_set():
                    return
                with lock:
                    sent.add(i)
                try:
                    key = client.ingest(pngs[i], labels=labels[i], model=PROFILE, source_id=f"case-{i}").case_key
                except Exception:  # noqa: BLE001 - unacknowledged: the kill interrupted it
                    return
                with lock:
                    acked[i] = key

        threads = [threading.Thread(target=stream, args=(w,), daemon=True) for w in range(2)]
        for th in threads:
            th.start()
        while True:
            with lock:
                n = len(acked)
            if n >= KILL_AFTER_ACKS or not any(th.is_alive() for th in threads):
                break
            time.sleep(0.02)
        killed = app.kill()
        stop.set()
        for th in threads:
            th.join(90)
        with lock:
            acked_now, sent_now = dict(acked), set(sent)
        assert len(acked_now) >= KILL_AFTER_ACKS and len(sent_now) < N_CASES, "the kill did not land mid-stream"
        time.sleep(1.0)
        assert not [p for p in killed if _alive(p)], "some process of the app survived the kill"
        print(
            f"killed {len(killed)} processes after {len(acked_now)} acknowledged ingests "
            f"({len(sent_now) - len(acked_now)} in flight)"
        )

        # ---- what the store holds after the crash ----------------------------------------------
        with MilvusStore(str(tmp_path / "lungsearch.db")) as store:
            rows = {c.case_key: c for c in store.iterate(card.profile, card.version)}
        for i, key in acked_now.items():
            assert key in rows, f"acknowledged case {i} lost"
            assert list(rows[key].labels) == labels[i]
        bits = card.code_bits
        for c in rows.values():  # complete rows only: metadata, embedding and code together
            assert c.modality == "cxr" and c.num_images == 1 and c.model_version == card.version and c.labels
            emb = np.asarray(c.embedding, dtype=np.float64)
            assert emb.shape == (card.embedding_dim,) and np.isfinite(emb).all()
            assert abs(np.linalg.norm(emb) - 1.0) < 1e-3
            assert len(c.code) * 8 == bits
        # Rows beyond the acknowledged ones can only be requests that were in flight at the kill.
        assert len(rows) <= len(sent_now), (len(rows), len(sent_now))

        # ---- restart on the same file, with tokens and mTLS in front ------------------------------
        from lungsearch.security import nginx_available

        tls = nginx_available() is not None
        extra = ["--tokens-file", str(_tokens(tmp_path))]
        if tls:
            pki = _pki(tmp_path / "pki")
            tls_port = R.free_port()
            extra += [
                "--tls-cert",
                str(pki["server.crt"]),
                "--tls-key",
                str(pki["server.key"]),
                "--tls-client-ca",
                str(pki["ca.crt"]),
                "--tls-port",
                str(tls_port),
            ]
        t1 = time.monotonic()
        app.start(extra)
        print(
            f"restarted{' behind mTLS' if tls else ''} in {time.monotonic() - t1:.1f} s; "
            f"{len(rows)} rows in Milvus, {len(acked_now)} acknowledged"
        )
        if tls:
            creds = {"ca_file": pki["ca.crt"], "cert_file": pki["client.crt"], "key_file": pki["client.key"]}
            client = LungSearchClient(
                f"127.0.0.1:{tls_port}", token=ADMIN, timeout=60, retries=RetryPolicy(max_attempts=6, seed=0), **creds
            )
        else:
            client = LungSearchClient(target, token=ADMIN, timeout=60, retries=RetryPolicy(max_attempts=6, seed=0))
        for i, key in acked_now.items():
            assert client.get_case(key, model=PROFILE).labels == tuple(labels[i])
            top = client.search(image=pngs[i], top_k=1, model=PROFILE).hits[0]
            assert top.case.case_key == key and top.hamming_distance == 0 and top.score > 0.999
        # The CLI's /metrics (every replica once, from the collector) counted exactly those calls.
        got = _gateway_ok(app.metrics_port)
        assert got.get("GetCase") == len(acked_now) and got.get("Search") == len(acked_now), got
        import grpc

        if tls:
            creds = grpc.ssl_channel_credentials(
                pki["ca.crt"].read_bytes(), pki["client.key"].read_bytes(), pki["client.crt"].read_bytes()
            )
            channel = grpc.secure_channel(f"127.0.0.1:{tls_port}", creds)
        else:
            channel = grpc.insecure_channel(target)
        with channel:
            _check_index_matches_store(channel, card, rows)
        if tls:
            _check_plaintext_port_is_loopback_only(app.grpc_port, pki, tls_port)
    finally:
        app.stop()


ADMIN = "admin-token-" + "a" * 24


def _gateway_ok(port: int) -> dict[str, float]:
    """OK calls by method of the gateway, read from ``lungsearch serve``'s plain /metrics page."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return {
        s.labels["method"]: s.value
        for s in fams["lungsearch_serve_requests"].samples
        if s.labels["deployment"] == "gateway" and s.labels["code"] == "OK"
    }


def _tokens(work: Path) -> Path:
    p = work / "tokens.yaml"
    p.write_text(yaml.safe_dump({"tokens": [{"name": "ops", "role": "admin", "token": ADMIN}]}))
    return p


def _pki(d: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with the
    TLS tests' own helpers (tests/security/conftest.py, loaded by path)."""
    import importlib.util

    from cryptography.hazmat.primitives import serialization

    spec = importlib.util.spec_from_file_location(
        "lungsearch_tests_security_pki", R.REPO / "tests" / "security" / "conftest.py"
    )
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, srv_key, cli_key = m._key(), m._key(), m._key()
    ca = m._cert("lungsearch-test-ca", ca_key, ca=True)
    pem = serialization.Encoding.PEM
    files = {
        "ca.crt": ca.public_bytes(pem),
        "server.crt": m._cert("localhost", srv_key, ca, ca_key, server=True).public_bytes(pem),
        "server.key": m._pem_key(srv_key),
        "client.crt": m._cert("test-client", cli_key, ca, ca_key).public_bytes(pem),
        "client.key": m._pem_key(cli_key),
    }
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    return out


def _check_index_matches_store(channel, card, rows: dict) -> None:
    """The Ranking deployment's in-memory index (rebuilt at start) holds exactly Milvus' rows."""
    from lungsearch._proto.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
    from lungsearch.serving import convert

    ref = common_pb2.ModelRef(profile=card.profile, version=card.version)
    md = [("authorization", f"Bearer {ADMIN}")]
    ranking = ranking_pb2_grpc.RankingStub(channel)
    stats = ranking.Stats(ranking_pb2.StatsRequest(model=ref), timeout=60, metadata=md)
    assert stats.num_cases == len(rows)
    for key, c in rows.items():
        req = ranking_pb2.RankRequest(
            model=ref, top_k=1, embedding=convert.tensor_to_proto(np.asarray(c.embedding, np.float32))
        )
        req.code.CopyFrom(common_pb2.HashCode(packed=c.code, bits=card.code_bits))
        top = ranking.Rank(req, timeout=60, metadata=md).results[0]
        assert top.case.case_key == key and top.hamming_distance == 0, key


def _check_plaintext_port_is_loopback_only(grpc_port: int, pki: dict[str, Path], tls_port: int) -> None:
    """Behind TLS, Serve's plaintext port (bound on every interface) answers loopback only; and
    the TLS port refuses a client without a certificate."""
    import grpc

    from lungsearch._proto.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
    from lungsearch.serving.status import ERROR_METADATA_KEY

    md = [("authorization", f"Bearer {ADMIN}")]
    addr = _non_loopback_address()
    if addr is not None:
        with grpc.insecure_channel(f"{addr}:{grpc_port}") as ch:
            with pytest.raises(grpc.RpcError) as e:
                gateway_pb2_grpc.LungSearchStub(ch).ListModels(gateway_pb2.ListModelsRequest(), timeout=30, metadata=md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            detail = dict(e.value.trailing_metadata() or ()).get(ERROR_METADATA_KEY)
            assert common_pb2.ErrorDetail.FromString(detail).code == "non_loopback_peer"
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:  # where the TLS proxy comes from
        gateway_pb2_grpc.LungSearchStub(ch).ListModels(gateway_pb2.ListModelsRequest(), timeout=30, metadata=md)
    no_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca.crt"].read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{tls_port}", no_cert) as ch:
        with pytest.raises(grpc.RpcError) as e:
            gateway_pb2_grpc.LungSearchStub(ch).ListModels(gateway_pb2.ListModelsRequest(), timeout=30, metadata=md)
        # Refused by nginx, never reaching the app: nginx finishes the handshake, records the missing
        # certificate and answers HTTP 401, which gRPC clients report as UNAUTHENTICATED.
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ERROR_METADATA_KEY not in dict(e.value.trailing_metadata() or ())


def _non_loopback_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # picks the outgoing interface; no packet is sent
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else addr
