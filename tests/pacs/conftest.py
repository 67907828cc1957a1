"""Fixtures of tests/pacs: ONE session-scoped real Orthanc, the fake LungSearch gRPC server of
tests/client (a real socket, in-memory store), and a factory of DICOM receivers on the port Orthanc
knows as modality ``lungsearch``. Helpers live in ``_pacs.py`` (a unique module name)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _pacs  # noqa: E402


@pytest.fixture(scope="session")
def scp_port() -> int:
    """The port lungsearch's SCP listens on in these tests (registered in Orthanc's config)."""
    return _pacs.free_port()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, scp_port):
    why = _pacs.orthanc_missing()
    if why:
        pytest.skip(why)
    o = _pacs.Orthanc(tmp_path_factory.mktemp("orthanc"), lungsearch_port=scp_port).start()
    yield o
    o.stop()


@pytest.fixture(scope="session")
def platform():
    """The in-memory LungSearch servicer of tests/client on a real loopback gRPC socket."""
    server = _pacs.fake_platform_module().Server()
    yield server
    server.stop()


@pytest.fixture
def fresh_platform(platform):
    platform.servicer.store.clear()
    platform.servicer.calls.clear()
    platform.servicer.behaviour.failures.clear()
    return platform


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001
            self.lines.append(f"<unformattable record from {record.name}>")


@pytest.fixture
def all_logs():
    """Every log record of this process at DEBUG and up, formatted (pynetdicom's included)."""
    handler = LogCapture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.fixture
def make_receiver(tmp_path, scp_port, fresh_platform):
    """``make_receiver(**config overrides)`` -> a started Receiver ingesting into the fake platform."""
    from lungsearch.pacs.config import load_receiver_config
    from lungsearch.pacs.scp import Receiver

    started: list[Receiver] = []

    def make(*, ingestor=None, on_ingested=None, **over) -> Receiver:
        doc = {
            "port": scp_port,
            "spool_dir": str(tmp_path / "spool"),
            "audit_log": str(tmp_path / "audit.jsonl"),
            "settle_s": 0.5,
            "target": fresh_platform.target,
            "network_timeout_s": 30,
            "callers": [
                {
                    "ae_title": _pacs.ORTHANC_AET,
                    "site": "site-a",
                    # the fake platform serves ct-ild and cxr-report
                    "profiles": {"ct": "ct-ild", "cxr": "cxr-report"},
                }
            ],
        }
        doc.update(over)
        r = Receiver(load_receiver_config(None, **doc), ingestor=ingestor, on_ingested=on_ingested).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()
