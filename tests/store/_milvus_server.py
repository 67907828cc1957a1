"""A real Milvus standalone (PyPI ``milvus==2.3.5``, the binary embedded in the wheel) on loopback.

Used by ``tests/store/conftest.py`` (one server for the whole test run) and by hand:

    .venv/bin/python -m tests.store._milvus_server /tmp/milvus-data   # prints the URI, Ctrl+C stops

Every component port is a free port chosen here, and every component advertises 127.0.0.1.
The Milvus 2.3 binary still *binds* its gRPC ports on all interfaces (its ``ip`` settings only
choose the address it registers in etcd): run it on loopback-only test hosts (FACTS.md).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

__all__ = ["EmbeddedMilvus", "milvus_importable"]

#: Components whose advertised address is pinned to loopback (``<section>.ip`` in milvus.yaml).
_SECTIONS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode", "dataCoord", "dataNode")


def milvus_importable() -> str:
    """ "" when the ``milvus`` wheel is installed, else why not (for a skip reason)."""
    try:
        import milvus  # noqa: F401
    except ImportError as exc:
        return f"the embedded Milvus server is not installed (pip install --no-deps milvus==2.3.5): {exc}"
    return ""


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class EmbeddedMilvus:
    """One Milvus standalone process over ``base_dir`` (kept across :meth:`restart`)."""

    def __init__(self, base_dir: str | Path) -> None:
        from milvus import MilvusServer, MilvusServerConfig

        self.base_dir = Path(base_dir)
        config = MilvusServerConfig()
        self.server = MilvusServer(config)
        self._assign_ports()
        self.server.set_base_dir(str(self.base_dir))
        for section in _SECTIONS:
            self.server.config.set(f"{section}.ip", "127.0.0.1")

    def _assign_ports(self) -> None:
        # Free ports from the OS (not the package's scan upwards from the defaults, which collides
        # with anything else on 19530 on a shared machine).
        config = self.server.config
        port_keys = sorted(k for k in config.configurable_items if k.endswith("_port"))
        config.update(**dict(zip(port_keys, _free_ports(len(port_keys)))))

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.listen_port}"

    def start(self, timeout_s: float = 180.0) -> "EmbeddedMilvus":
        t = time.monotonic()
        self.server.start()  # blocks until /healthz answers OK (the package's own wait)
        self.start_s = time.monotonic() - t
        return self

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> "EmbeddedMilvus":
        """Stop, then start over the same data on fresh ports (``uri`` changes).

        The same ports would need a 60 s wait: the package bind-tests each port without
        SO_REUSEADDR, and a stopped server's sockets sit in TIME_WAIT that long.
        """
        self.stop()
        self._assign_ports()
        return self.start()


if __name__ == "__main__":  # pragma: no cover - manual use
    m = EmbeddedMilvus(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lungsearch-milvus").start()
    print(m.uri, f"started in {m.start_s:.1f}s", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        m.stop()
