"""One case key per study, however it enters the store: ``build_index`` (dataset records) and the
gateway's Ingest (uploaded bytes) must agree, or an indexed study ingested again is stored twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungsearch.config import load_profile
from lungsearch.data import load_records, load_study, read_study
from lungsearch.serving.pipeline import derive_case_key
from lungsearch.training.indexing import record_case_key

KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("profile", "overrides"),
    [
        ("ct-ild", ["data.phantom.n=4", "data.phantom.size=64", "data.phantom.slices=2"]),
        ("cxr-hash", ["data.phantom.n=4", "data.phantom.size=64"]),
    ],
)
def test_dataset_key_equals_gateway_key(profile, overrides, tmp_path):
    cfg = load_profile(profile, [*overrides, f"data.root={tmp_path}"])
    records = load_records(cfg.data)
    keys = set()
    for rec in records:
        dataset_key = record_case_key(KEY, rec, load_study(rec, hmac_key=KEY))
        blobs = [Path(p).read_bytes() for p in rec.image_paths]
        uploaded = read_study(blobs, limits=cfg.serve.limits, hmac_key=KEY)
        assert derive_case_key(KEY, study=uploaded, source_id="", image_bytes=blobs) == dataset_key
        keys.add(dataset_key)
    assert len(keys) == len(records)  # distinct studies, distinct keys
    # The key is a keyed hash: another key gives other case keys, and no raw id shows through.
    other = record_case_key(b"x" * 32, records[0], load_study(records[0], hmac_key=b"x" * 32))
    assert other not in keys and records[0].case_id not in dataset_key
