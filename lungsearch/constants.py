"""Every environment variable lungsearch reads, in one place, all prefixed ``LUNGSEARCH_``.

Code elsewhere imports these names; nothing deeper in the package calls ``os.environ``.
Values are read when this module is imported; tests that change them reload it or pass
explicit arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ARTIFACTS_DIR",
    "DATA_DIR",
    "HMAC_KEY_FILE",
    "MILVUS_TOKEN",
    "MILVUS_URI",
    "RAY_ADDRESS",
    "RAY_NUM_CPUS",
    "TRAIN_BACKEND",
    "TOKENS_FILE",
    "GRPC_PORT",
    "METRICS_PORT",
    "TARGET",
    "TOKEN",
    "serve_mode",
]


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"LUNGSEARCH_{name}", default)


#: Where trained models live: ``<ARTIFACTS_DIR>/<profile>/<version>/``.
ARTIFACTS_DIR = Path(_env("ARTIFACTS_DIR", "artifacts"))
#: Working data: phantom datasets, the embedded milvus-lite file, job outputs.
DATA_DIR = Path(_env("DATA_DIR", "data"))
#: Milvus: a milvus-lite file path (embedded, the default) or a server URI (http://host:19530).
MILVUS_URI = _env("MILVUS_URI", str(DATA_DIR / "lungsearch.db"))
#: Milvus server token ("user:password" or an API key); unused for milvus-lite.
MILVUS_TOKEN = _env("MILVUS_TOKEN", "")
#: File holding the secret key for case-key HMACs (created with 0600 on first use if absent).
HMAC_KEY_FILE = Path(_env("HMAC_KEY_FILE", str(DATA_DIR / "hmac.key")))
#: File of bearer tokens with roles (see SECURITY.md); empty = insecure local mode.
TOKENS_FILE = _env("TOKENS_FILE", "")
#: Ray cluster to attach to ("auto", "ray://…", "127.0.0.1:6379"); empty = start a local one.
RAY_ADDRESS = _env("RAY_ADDRESS", "")
#: Logical CPUs for a locally started Ray (defaults to the machine's count).
RAY_NUM_CPUS = int(_env("RAY_NUM_CPUS", "0") or 0)
#: "ray" (Ray Train's TorchTrainer, the default) or "local": the same worker loop in this process,
#: for a single-GPU machine without Ray (``lungsearch.training.loop.run_local``).
TRAIN_BACKEND = (_env("TRAIN_BACKEND", "ray") or "ray").strip().lower()
#: gRPC port of the Serve proxy and the metrics port of `lungsearch serve`.
GRPC_PORT = int(_env("GRPC_PORT", "9000") or 9000)
METRICS_PORT = int(_env("METRICS_PORT", "9100") or 9100)
#: Where the SDK/CLI connects by default (host:port of the gRPC endpoint).
TARGET = _env("TARGET", f"localhost:{GRPC_PORT}")
#: Bearer token the CLI sends when neither --token nor --token-file is given (keeps it off `ps`).
TOKEN = _env("TOKEN", "")


def serve_mode() -> str:
    """``LUNGSEARCH_SERVE_MODE``: Ray Serve's request-path mode for a Ray this process starts
    (``lungsearch.runtime.SERVE_MODES``; "" = the shipped default; "inherit" = set nothing). Read at
    each call, not at import: the benchmarks choose it per process after importing the package."""
    return (_env("SERVE_MODE", "") or "").strip().lower()
