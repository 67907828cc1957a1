"""Test support for tests/pacs: a real Orthanc on free loopback ports, the fake LungSearch gRPC
server of tests/client (loaded by path), SCU helpers, and DICOM test objects.

Also imported by ``benchmarks/dicom_receive.py`` (by path): keep it free of pytest fixtures.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_AET = "ORTHANC"
LUNGSEARCH_AET = "LUNGSEARCH"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.3):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (None if it can)."""
    if not Path(ORTHANC).exists():
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)"
    if not Path(DICOMWEB_PLUGIN).exists():
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


class Orthanc:
    """A real Orthanc PACS: generated config, temp storage, loopback HTTP (REST + DICOMweb) and DICOM.

    Orthanc 1.10 has no bind-address option: ``RemoteAccessAllowed: false`` makes its HTTP server
    refuse every non-loopback peer, and ``DicomCheckModalityHost`` lets only registered modalities
    (on 127.0.0.1) talk DICOM to it.
    """

    def __init__(self, root: Path, *, lungsearch_port: int) -> None:
        self.root = Path(root)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.lungsearch_port = lungsearch_port
        self.proc: subprocess.Popen | None = None
        self.log_file = self.root / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def write_config(self) -> Path:
        (self.root / "storage").mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "lungsearch-test-pacs",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomScuTimeout": 30,
            "DicomModalities": {"lungsearch": [LUNGSEARCH_AET, "127.0.0.1", self.lungsearch_port]},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full"},
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 8,
            "StableAge": 2,
            "SaveJobs": False,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(cfg, indent=1))
        return path

    def start(self, timeout: float = 60.0) -> "Orthanc":
        cfg = self.write_config()
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=str(self.root), start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}); see {self.log_file}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("Orthanc did not answer /system in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # ---- REST ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> Any:
        import urllib.request

        req = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=120) as resp:
            data = resp.read()
        try:
            return json.loads(data)
        except ValueError:
            return data

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self._request(
            "POST", path, body, "application/dicom" if isinstance(payload, bytes) else "application/json"
        )

    def delete(self, path: str) -> Any:
        return self._request("DELETE", path)

    def upload(self, data: bytes) -> dict:
        """POST /instances: store one DICOM file in Orthanc."""
        return self.post("/instances", data)

    def push(self, resources: list[str], *, modality: str = "lungsearch", timeout: float = 120.0) -> dict:
        """Orthanc C-STOREs these resources (Orthanc ids) to a registered modality (synchronously)."""
        return self._request(
            "POST",
            f"/modalities/{modality}/store",
            json.dumps({"Resources": resources, "Synchronous": True, "Timeout": int(timeout)}).encode(),
        )

    def clear(self) -> None:
        for pid in self.get("/patients"):
            self.delete(f"/patients/{pid}")


# ---------------------------------------------------------------------------------- fake platform


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def fake_platform_module():
    """tests/client/conftest.py, loaded by path: its ``Server`` is an in-memory LungSearch servicer on a real socket."""
    return sys.modules.get("lungsearch_tests_client_conftest") or _load(
        "lungsearch_tests_client_conftest", REPO / "tests" / "client" / "conftest.py"
    )


def reliability_module():
    """tests/reliability/_reliability.py (PHI needles, phantom series, start_serve_app)."""
    return sys.modules.get("_reliability") or _load("_reliability", REPO / "tests" / "reliability" / "_reliability.py")


# ---------------------------------------------------------------------------------- DICOM objects


def ct_series(root: Path, *, n: int = 1, slices: int = 4, size: int = 64, seed: int = 0) -> list[list[bytes]]:
    """``n`` phantom CT series (synthetic), DICOM bytes per slice."""
    return reliability_module().phantom_series(root, n, size=size, slices=slices, seed=seed)


def dataset(data: bytes):
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), force=True)


def to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def cxr_dicom(
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    size: int = 64,
    voi: str = "window",
    seed: int = 0,
    study_uid: str | None = None,
) -> bytes:
    """A synthetic DX radiograph: dark lungs (two ellipses), bright mediastinum and ribs-like bands.

    ``photometric="MONOCHROME1"`` stores the *inverted* values (high = dark), as many real CR/DX
    devices do; ``voi`` = "window" (WindowCenter/Width), "lut" (a VOI LUT Sequence) or "none".
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = np.full((size, size), 0.8)
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1
        body[lung] = 0.15  # lungs: little attenuation -> dark on a displayed radiograph
    body += rng.normal(0, 0.01, body.shape)
    maxv = (1 << bits) - 1
    attenuation = np.clip(body, 0, 1) * maxv
    stored = (maxv - attenuation) if photometric == "MONOCHROME1" else attenuation
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Radiograph", "SYN-CXR-1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "SYNACC1", "1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.PresentationIntentType, ds.ImageLaterality, ds.ViewPosition = "FOR PRESENTATION", "U", "PA"
    ds.Manufacturer, ds.BurnedInAnnotation = "synthetic", "NO"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = stored.astype(np.uint16).tobytes()
    if voi == "window":
        ds.WindowCenter, ds.WindowWidth = maxv / 2, maxv
    elif voi == "lut":
        item = Dataset()
        entries = maxv + 1
        item.LUTDescriptor = [0 if entries == 65536 else entries, 0, 16]  # PS3.3 C.11.2.1.1: 0 means 65536
        item.LUTData = np.linspace(0, 65535, entries).astype("<u2").tobytes()
        from pydicom.sequence import Sequence

        ds.VOILUTSequence = Sequence([item])
    return to_bytes(ds)


def pydicom_test_file(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name)).read_bytes()


def scu_store(
    port: int,
    items: list[bytes],
    *,
    calling: str = ORTHANC_AET,
    called: str = LUNGSEARCH_AET,
    release: bool = True,
    contexts: list[str] | None = None,
    ssl_context=None,
) -> list[int | None]:
    """C-STORE ``items`` with pynetdicom; returns each status (None when no context was accepted)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
    classes = contexts or sorted({str(dataset(b).SOPClassUID) for b in items})
    for uid in classes:
        ae.add_requested_context(uid)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=called, tls_args=(ssl_context, "localhost") if ssl_context else None
    )
    if not assoc.is_established:
        raise ConnectionRefusedError("association rejected or aborted")
    out: list[int | None] = []
    try:
        for b in items:
            try:
                st = assoc.send_c_store(dataset(b))
            except ValueError:  # no accepted presentation context for this SOP class
                out.append(None)
                continue
            out.append(int(st.Status) if "Status" in st else None)
    finally:
        if release:
            assoc.release()
        else:
            assoc.abort()
    return out


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
