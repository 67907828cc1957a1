"""Free loopback ports for the tests that start servers with fixed ports (Ray nodes, nginx, jobs).

Binding to port 0 and closing asks the kernel for a free port, but the kernel may hand the same
port to the next such bind: a test that picks several ports one after another then gives two
components one port (seen: a Ray head's GCS and its runtime-env agent both drew 48587, and Ray
refused to start). :func:`free_port` never returns a port twice in one test session.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port that was free a moment ago and was not handed out before in this session."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
