"""The package surface: lazy exports, and no torch on the ingest path."""

from __future__ import annotations

import subprocess
import sys

import lungsearch.data as data


def test_public_names_resolve():
    for name in data.__all__:
        assert getattr(data, name) is not None, name


def test_ingest_path_does_not_import_torch():
    code = (
        "import sys, lungsearch.data as d; d.read_image; d.read_study; d.preprocess; d.lung_mask; d.deid; "
        "d.split_records; d.load_records; d.phantoms.generate; "
        "print(sorted(m for m in ('torch', 'ray', 'torchxrayvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
