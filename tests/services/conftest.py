"""Fixtures for the Serve integration tests (helpers and the rationale in services_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from services_fixtures import ADMIN, N_CT, N_CXR, READ, WRITE, build_registry


@pytest.fixture(scope="session")
def serving_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-registry")
    return root, build_registry(root)


@pytest.fixture(scope="session")
def phantom_sets(tmp_path_factory):
    """{"cxr": [record dict], "ct": [...]} with absolute image paths (synthetic phantoms)."""
    from lungsearch.data import phantoms

    base = tmp_path_factory.mktemp("phantoms")
    out = {}
    for kind, n, extra in (("cxr", N_CXR, {}), ("ct", N_CT, {"slices": 3})):
        root = phantoms.generate(kind, n, base / kind, seed=7, size=64, **extra)
        recs = [json.loads(line) for line in (Path(root) / "manifest.jsonl").read_text().splitlines() if line]
        for r in recs:
            r["image_paths"] = [str(Path(root) / p) for p in r["image_paths"]]
        out[kind] = recs
    return out


@pytest.fixture(scope="session")
def tokens(tmp_path_factory):
    p = tmp_path_factory.mktemp("auth") / "tokens.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "tokens": [
                    {"name": "viewer", "role": "read", "token": READ},
                    {"name": "bridge", "role": "write", "token": WRITE},
                    {"name": "ops", "role": "admin", "token": ADMIN},
                ]
            }
        )
    )
    return p
