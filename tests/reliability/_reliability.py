"""Test support for tests/reliability: a real Milvus-protocol server process to take down and bring
back, tiny model registries, DICOM carrying known PHI, a Serve app on a loopback port, and helpers
to read every log line a run produced.

Nothing here mocks a component under test: the Milvus server is milvus-lite's own gRPC adapter
(the server pymilvus starts in-process for ``.db`` URIs) run in a separate process on a fixed
loopback port, so the app talks to it as to a Milvus server (``http://127.0.0.1:<port>``), and a
kill/restart of that process is a real outage and a real return.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

REPO = Path(__file__).resolve().parents[2]

#: Known PHI planted in the test DICOM headers; none of these may appear anywhere the app writes.
PHI = {
    "PatientName": "Quagmire^Hortensia^Delphine",
    "PatientID": "PHI-MRN-7731-XQZ",
    "PatientBirthDate": "19450317",
    "AccessionNumber": "ACC99887766PHI",
    "InstitutionName": "Saint Elsewhere Sanatorium",
    "ReferringPhysicianName": "Zyxwerth^Barnaby",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77310001",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.77310002",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.773100031",  # + slice index
    "OtherPatientIDs": "PHI-OTHER-5512-KLM",
    "StudyID": "STUDY4242PHI",
}


def phi_needles() -> list[str]:
    """Every PHI value and the forms it could take in text (name parts, ISO date, UID roots)."""
    out = set()
    for key, value in PHI.items():
        out.add(value)
        if key.endswith("Name"):
            out.update(p for p in value.split("^") if len(p) >= 6)
    out.add("1945-03-17")
    out.add("1.2.826.0.1.3680043.8.498.7731")  # the root of every planted UID
    return sorted(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), 0.3):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


# ---------------------------------------------------------------------------- Milvus server process

_SERVER_CODE = """
import signal, sys
from milvus_lite.adapter.grpc.server import start_server_in_thread
server, db, port = start_server_in_thread(data_dir=sys.argv[1], host="127.0.0.1", port=int(sys.argv[2]))
print("ready", port, flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
server.stop(grace=1)
db.close()
"""


class MilvusServerProcess:
    """milvus-lite's gRPC server in its own process, on a fixed loopback port.

    ``stop(kill=True)`` is a crash (SIGKILL), ``stop()`` a clean shutdown; ``start()`` brings it
    back on the same port over the same data directory.
    """

    def __init__(self, data_dir: Path, port: int | None = None, log_file: Path | None = None) -> None:
        self.data_dir, self.port = Path(data_dir), port or free_port()
        self.log_file = log_file or self.data_dir.with_suffix(".server.log")
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "MilvusServerProcess":
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_CODE, str(self.data_dir), str(self.port)],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=str(REPO),
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ready"):
            self.stop(kill=True)
            raise RuntimeError(f"milvus-lite server did not start: {line!r}")
        wait_port(self.port, timeout)
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def precreate_collections(db_path: Path, cards: Iterable[Any]) -> None:
    """Create each card's collection through the embedded (lite) path, as ``lungsearch`` would on
    first start: milvus-lite's engine cannot create the server-only schema (BINARY_VECTOR, ARRAY
    indexes), so the server-mode app must find its collections already there."""
    from lungsearch.store import MilvusStore

    with MilvusStore(str(db_path)) as store:
        for card in cards:
            store.ensure_collection(
                card.profile,
                card.version,
                embedding_dim=card.embedding_dim,
                code_bits=card.code_bits,
                index=card.config.index,
            )


# ------------------------------------------------------------------------------------ models, data

#: Tight limits so each limit check is cheap to trip (applied to the test models' serve config).
LIMITS = {
    "max_message_bytes": 2 * 1024 * 1024,
    "max_image_bytes": 1024 * 1024,
    "max_image_side": 1024,
    "max_decoded_bytes": 16 * 1024 * 1024,
    "max_series_images": 12,
    "max_report_chars": 4000,
    "max_top_k": 50,
}


#: Profiles the reliability app serves: ct-ild (CT DICOM + radiomics + LSH codes) and cxr-hash
#: (PNG radiographs + learned hash codes): both index kinds, both input formats.
PROFILES = {
    "ct-ild": ["data.image_size=64", "data.phantom.size=64", "data.phantom.slices=4"],
    "cxr-hash": ["data.image_size=64", "data.phantom.size=64"],
}


def _services_fixtures():
    """tests/services/services_fixtures.py, loaded by path: its ``build_registry`` is the one
    registry builder of the serving tests (untrained tiny models saved with the real registry)."""
    import importlib.util

    path = REPO / "tests" / "services" / "services_fixtures.py"
    spec = importlib.util.spec_from_file_location("lungsearch_tests_services_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_registry(root: Path, profiles: dict[str, list[str]] | None = None) -> list[Any]:
    """Untrained tiny models for ``profiles`` (default :data:`PROFILES`) plus :data:`LIMITS`;
    returns the cards. The serving tests' own limits are applied after ours where both set one:
    tests read the effective limits from the cards."""
    over = {
        p: list(o) + [f"serve.limits.{k}={v}" for k, v in LIMITS.items()] for p, o in (profiles or PROFILES).items()
    }
    return list(_services_fixtures().build_registry(root, over).values())


def phantom_series(root: Path, n: int, *, size: int = 64, slices: int = 4, seed: int = 0) -> list[list[bytes]]:
    """``n`` phantom CT series (DICOM bytes per slice)."""
    from lungsearch.data import phantoms

    out = phantoms.generate("ct", n, root, seed=seed, size=size, slices=slices, workers=1)
    return [[Path(p).read_bytes() for p in rec.image_paths] for rec in phantoms.read_manifest(out)]


def phantom_pngs(root: Path, n: int, *, size: int = 64, seed: int = 0) -> list[bytes]:
    """``n`` phantom radiographs (PNG bytes)."""
    from lungsearch.data import phantoms

    out = phantoms.generate("cxr4", n, root, seed=seed, size=size, workers=1)
    return [Path(rec.image_paths[0]).read_bytes() for rec in phantoms.read_manifest(out)]


def with_phi(series: list[bytes], **overrides: str) -> list[bytes]:
    """The series with :data:`PHI` (and ``overrides``) written into every slice's header."""
    import io

    import pydicom

    values = {**PHI, **overrides}
    out = []
    for i, data in enumerate(series):
        ds = pydicom.dcmread(io.BytesIO(data))
        for key, value in values.items():
            if key == "SOPInstanceUID":
                value = f"{value}{i}"
                ds.file_meta.MediaStorageSOPInstanceUID = value
            setattr(ds, key, value)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


# ------------------------------------------------------------------------------------- Serve app

GRPC_SERVICERS = [
    "lungsearch._proto.v1.gateway_pb2_grpc.add_LungSearchServicer_to_server",
    "lungsearch._proto.v1.encoding_pb2_grpc.add_EncodingServicer_to_server",
    "lungsearch._proto.v1.fusion_pb2_grpc.add_FusionServicer_to_server",
    "lungsearch._proto.v1.hashing_pb2_grpc.add_HashingServicer_to_server",
    "lungsearch._proto.v1.ranking_pb2_grpc.add_RankingServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
APP_NAME = "lungsearch"


@dataclass
class ServeApp:
    """The lungsearch Serve application running on the test session's Ray, gRPC on loopback."""

    grpc_port: int
    args: dict[str, Any]
    workdir: Path
    cards: list[Any] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self, **kw):
        from lungsearch.client import LungSearchClient

        kw.setdefault("timeout", 60.0)
        return LungSearchClient(self.target, **kw)

    def channel(self):
        import grpc

        return grpc.insecure_channel(
            self.target,
            options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
        )

    def metrics_text(self) -> str:
        """Every replica's exposition merged once (what ``/metrics`` of ``lungsearch serve`` serves)."""
        from lungsearch.serving.metrics_board import graph_exposition

        return graph_exposition(APP_NAME, timeout_s=30)

    def card(self, profile: str):
        return next(c for c in self.cards if c.profile == profile)


def start_serve_app(
    workdir: Path, args: dict[str, Any], cards: list[Any], *, gateway_replicas: int = 1, timeout_s: float = 300.0
) -> ServeApp:
    """``serve.start`` (gRPC on a free loopback port) + ``serve.run(services.gateway.app(args))``;
    with ``gateway_replicas`` > 1 the same app through Serve's config path (as ``lungsearch serve``
    deploys it), whose per-deployment override sets the Gateway's replicas."""
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from services.gateway import app

    port = free_port()
    if gateway_replicas == 1:
        serve.start(
            http_options=HTTPOptions(host="127.0.0.1", port=free_port()),
            grpc_options=gRPCOptions(port=port, grpc_servicer_functions=GRPC_SERVICERS),
        )
        serve.run(app(args), name=APP_NAME, route_prefix="/" + APP_NAME, blocking=False)
    else:
        from lungsearch.cli._serve import deploy

        deploy(
            {
                "proxy_location": "HeadOnly",
                "http_options": {"host": "127.0.0.1", "port": free_port()},
                "grpc_options": {"port": port, "grpc_servicer_functions": GRPC_SERVICERS},
                "applications": [
                    {
                        "name": APP_NAME,
                        "route_prefix": "/" + APP_NAME,
                        "import_path": "services.gateway:app",
                        "args": args,
                        "deployments": [{"name": "Gateway", "num_replicas": gateway_replicas}],
                    }
                ],
            }
        )
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status == "RUNNING":
            break
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"lungsearch app failed to deploy: {status.status}")
        if time.monotonic() > deadline:
            raise TimeoutError("lungsearch app did not become RUNNING")
        time.sleep(0.5)
    wait_port(port)
    return ServeApp(grpc_port=port, args=args, workdir=workdir, cards=cards)


def replica_pids(deployment: str) -> list[int]:
    """PIDs of the live replica actors of ``deployment`` in the lungsearch app.

    Reads the GCS actor table (``ray._private.state``): the public state API needs the dashboard,
    which the test cluster does not start, and would pick another cluster on a shared machine.
    """
    from ray._private import state

    name = f"ServeReplica:{APP_NAME}:{deployment}"
    return sorted(
        int(a["Pid"])
        for a in state.actors().values()
        if a.get("ActorClassName") == name and a.get("State") == "ALIVE" and a.get("Pid")
    )


def ray_session_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path())


# ------------------------------------------------------------------------------------------ grep


def text_files(root: Path) -> Iterable[Path]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 256 * 1024 * 1024:
            yield p


def find_needles(texts: dict[str, str | bytes], needles: Iterable[str]) -> list[tuple[str, str]]:
    """(source, needle) for every needle found (case-insensitive) in any text."""
    found = []
    pats = [(n, re.compile(re.escape(n.lower()).encode())) for n in needles]
    for source, text in texts.items():
        blob = (text.encode("utf-8", "replace") if isinstance(text, str) else text).lower()
        for needle, pat in pats:
            if pat.search(blob):
                found.append((source, needle))
    return found


def read_logs(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (Ray/Serve session logs, server logs), as bytes."""
    out = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = root.read_bytes()
            continue
        for p in text_files(root):
            try:
                out[str(p)] = p.read_bytes()
            except OSError:
                continue
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (by /proc parent links), children first."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out: list[int] = []

    def walk(p: int) -> None:
        for c in children.get(p, []):
            walk(c)
        out.append(p)

    walk(pid)
    return out


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every descendant at once (a crash of the whole app); returns the PIDs."""
    pids = process_tree(pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids
