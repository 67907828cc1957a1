"""The SDK installs and runs with grpcio + protobuf only.

``python -S`` (no site-packages) with ``sys.path`` set to a directory holding symlinks to just
``grpc``, ``google`` (protobuf), ``typing_extensions`` (grpcio's own dependency) and this repo's
``lungsearch`` package: importing the SDK and the client commands must work and must not pull
NumPy, torch, Ray, pydantic or YAML. The client command then talks to a real server from there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import google.protobuf
import grpc
import typing_extensions

import lungsearch

HEAVY = ("numpy", "torch", "ray", "pydantic", "yaml", "pymilvus", "pydicom", "grpc_health")


def _sdk_only_path(tmp_path: Path) -> Path:
    root = tmp_path / "sdk-only"
    root.mkdir()
    (root / "grpc").symlink_to(Path(grpc.__file__).parent)
    (root / "google").symlink_to(Path(google.protobuf.__file__).parent.parent)
    (root / "typing_extensions.py").symlink_to(Path(typing_extensions.__file__))
    (root / "lungsearch").symlink_to(Path(lungsearch.__file__).parent)
    return root


def _run_isolated(root: Path, code: str) -> subprocess.CompletedProcess:
    prelude = f"import sys; sys.path[:] = [{str(root)!r}] + [p for p in sys.path if 'site-packages' not in p]\n"
    return subprocess.run([sys.executable, "-S", "-c", prelude + code], capture_output=True, text=True, timeout=60)


def test_import_with_grpcio_and_protobuf_only(tmp_path):
    root = _sdk_only_path(tmp_path)
    code = (
        "import lungsearch.client, lungsearch.cli._client\n"
        "from lungsearch.client import LungSearchClient, AsyncLungSearchClient\n"
        "c = LungSearchClient('localhost:1'); c.close()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    r = _run_isolated(root, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    # The isolation is real: a heavy package is not importable from there.
    r = _run_isolated(root, "import numpy")
    assert r.returncode != 0 and "No module named 'numpy'" in r.stderr


def test_client_command_works_sdk_only(tmp_path, server):
    """`lungsearch health` and `models` from the SDK-only environment against a real server."""
    root = _sdk_only_path(tmp_path)
    code = (
        "import argparse, json\n"
        "from lungsearch.cli import _client\n"
        "p = argparse.ArgumentParser(); _client.register(p.add_subparsers())\n"
        f"a = p.parse_args(['health', '--target', {server.target!r}, '--timeout', '5'])\n"
        "rc1 = a.func(a)\n"
        f"a = p.parse_args(['models', '--target', {server.target!r}, '--json'])\n"
        "rc2 = a.func(a)\n"
        f"print('RC', rc1, rc2, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    r = _run_isolated(root, code)
    assert r.returncode == 0, r.stderr
    assert "SERVING (grpc.health.v1)" in r.stdout and '"profile": "ct-ild"' in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "RC 0 0 []"
