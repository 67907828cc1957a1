"""Fixtures of tests/store: ONE embedded Milvus standalone server for the whole test run.

The server is the real Milvus 2.3.5 binary that PyPI ``milvus==2.3.5`` embeds (installed with
``--no-deps``; see tools/ensure-venv.sh), started on free loopback ports over a temporary
directory (~10-60 s the first time: it unpacks the binary; ~300 MB RSS). Tests using it are
marked ``milvus_server`` and ``slow``; they skip, saying why, where the wheel is missing or the
embedded etcd's fixed loopback ports (2379/2380, not configurable through the wheel) are taken.
"""

from __future__ import annotations

import socket

import pytest
from _milvus_server import EmbeddedMilvus, milvus_importable


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as etcd binds: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """The running :class:`EmbeddedMilvus` (``.uri``; ``.restart()`` keeps its data)."""
    why = milvus_importable()
    if why:
        pytest.skip(why)
    busy = [p for p in (2379, 2380) if _port_busy(p)]
    if busy:
        pytest.skip(f"the embedded Milvus's etcd needs 127.0.0.1 ports 2379/2380; busy here: {busy}")
    server = EmbeddedMilvus(tmp_path_factory.mktemp("milvus-standalone"))
    try:
        server.start()  # a failure to start fails the tests (with the server's log directory named)
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()
