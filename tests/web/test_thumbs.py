"""The thumbnail store: round trip, size caps, middle slice, delete, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from lungsearch.errors import InvalidRequestError
from lungsearch.web.thumbs import ThumbnailStore, default_path, dequantize, pick_slices, quantize, record_thumbnail


def _pixels(s=1, size=64, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (s, 1, size, size)).astype(np.float32)


def test_round_trip_within_quantisation(tmp_path):
    store = ThumbnailStore(tmp_path / "t.sqlite")
    px = _pixels()
    store.put("cxr-hash", "k1", px, model_version="v1")
    t = store.get("cxr-hash", "k1")
    assert t.pixels.dtype == np.uint8 and t.pixels.shape == (1, 64, 64) and t.model_version == "v1"
    back = t.model_input(64)
    assert back.shape == (1, 1, 64, 64)
    assert np.abs(back - px).max() <= 1 / 127.5 + 1e-6
    assert store.get("cxr-hash", "nope") is None and store.get("ct-ild", "k1") is None


def test_caps_side_and_slices_and_keeps_the_middle(tmp_path):
    store = ThumbnailStore(tmp_path / "t.sqlite", max_side=32, max_slices=5)
    px = np.stack([np.full((1, 100, 100), -1 + 2 * i / 40, np.float32) for i in range(41)])
    store.put("ct-ild", "k", px)
    t = store.get("ct-ild", "k")
    assert t.pixels.shape[1:] == (32, 32) and t.pixels.shape[0] <= 5 and t.total_slices == 41
    # the middle slice of the study (index 20, value 0.0) is the one Grad-CAM explains
    assert abs(float(t.model_input(100).mean())) < 0.02
    assert t.model_input(100).shape == (1, 1, 100, 100)


@pytest.mark.parametrize("n, cap", [(1, 32), (4, 32), (100, 32), (7, 3), (2, 1)])
def test_pick_slices(n, cap):
    idx = pick_slices(n, cap)
    assert n // 2 in idx and len(idx) <= max(cap, 1) + 1 and idx == sorted(set(idx))
    assert all(0 <= i < n for i in idx)


def test_quantize_rejects_bad_shapes():
    with pytest.raises(InvalidRequestError):
        quantize(np.zeros((2, 3, 4, 5, 6)))
    assert quantize(np.zeros((8, 8))).shape == (1, 8, 8)
    assert dequantize(np.zeros((2, 8, 8), np.uint8), 16).shape == (2, 1, 16, 16)


def test_replace_and_delete(tmp_path):
    store = ThumbnailStore(tmp_path / "t.sqlite")
    store.put("p", "k", _pixels(seed=1))
    store.put("p", "k", _pixels(seed=2))
    assert store.count("p") == 1
    assert store.delete("p", "k") and not store.delete("p", "k")
    assert store.get("p", "k") is None and store.count() == 0


def _writer(path, worker):
    for i in range(20):
        record_thumbnail(path, "p", f"w{worker}-{i}", _pixels(seed=i))


def test_processes_write_one_file(tmp_path):
    path = tmp_path / "t.sqlite"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert ThumbnailStore(path).count("p") == 60


def test_default_path_sits_beside_the_hmac_key(tmp_path):
    assert default_path(tmp_path / "keys" / "hmac.key") == (tmp_path / "keys" / "thumbnails.sqlite").resolve()
