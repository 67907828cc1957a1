"""Bounded fuzzing of the ingest path in CI (LUNGSEARCH_FUZZ_SECONDS, default 30), seeded with
pydicom's real test files, PNG/JPEG images and mutated copies."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
# 30 s per run keeps the whole suite inside CI's 30 minutes on 2 cores; a longer campaign:
# LUNGSEARCH_FUZZ_SECONDS=3600.
SECONDS = int(os.environ.get("LUNGSEARCH_FUZZ_SECONDS", "30"))


def _seed_corpus(out: Path) -> int:
    import pydicom.data
    from PIL import Image

    # The files inside the wheel only: get_testdata_files() would try to download more.
    bundled = Path(pydicom.data.__file__).parent / "test_files"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = 0
    for p in sorted(bundled.rglob("*")):
        if p.is_file() and p.suffix not in (".py", ".txt", ".json") and p.stat().st_size < 2_000_000:
            data = p.read_bytes()
            (out / f"dcm-{n:03d}").write_bytes(data)
            # a truncated and a bit-flipped copy of each
            (out / f"dcm-{n:03d}-trunc").write_bytes(data[: max(1, len(data) // 3)])
            flipped = bytearray(data)
            for i in rng.integers(0, len(flipped), size=8):
                flipped[i] ^= 0xFF
            (out / f"dcm-{n:03d}-flip").write_bytes(bytes(flipped))
            n += 3
    for mode, fmt in (("L", "PNG"), ("I;16", "PNG"), ("RGB", "PNG"), ("L", "JPEG")):
        arr = rng.integers(0, 255, size=(48, 40)).astype(np.uint8)
        im = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr.astype(np.uint16) * 200)
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        (out / f"img-{mode.replace(';', '')}.{fmt.lower()}").write_bytes(buf.getvalue())
        n += 1
    return n


def test_corpus_replays_cleanly(tmp_path):
    """Every seed input ends in success or an expected error (no fuzzing: a plain replay)."""
    corpus = tmp_path / "corpus"
    n = _seed_corpus(corpus)
    assert n > 100
    from lungsearch.config import DataConfig, LimitsConfig, PhantomConfig
    from lungsearch.data import preprocess, read_image
    from lungsearch.errors import InvalidImageError, LimitExceededError, PHIRejectedError

    cfg = DataConfig(source="phantom", phantom=PhantomConfig(kind="cxr", n=4), image_size=64)
    ok = rejected = 0
    for f in sorted(corpus.iterdir()):
        try:
            img = read_image(f.read_bytes(), limits=LimitsConfig(), hmac_key=b"k" * 16)
        except (InvalidImageError, LimitExceededError, PHIRejectedError):
            rejected += 1
            continue
        out = preprocess(img, cfg)
        assert out.shape == (1, 64, 64) and np.isfinite(out).all(), f.name
        ok += 1
    assert ok > 20 and rejected > 20  # both paths are exercised


@pytest.mark.slow
def test_fuzz_ingest_bounded(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    _seed_corpus(corpus)
    cmd = [
        sys.executable,
        str(HERE / "fuzz_ingest.py"),
        f"-max_total_time={SECONDS}",
        "-timeout=20",
        "-rss_limit_mb=3072",
        "-malloc_limit_mb=2560",
        "-seed=1",
        "-print_final_stats=1",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=SECONDS + 240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    tail = (r.stdout + r.stderr)[-3000:]
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*")) + list(tmp_path.glob("oom-*"))
    assert r.returncode == 0 and not crashes, f"fuzzer found an input that escapes the error model:\n{tail}"
    assert "stat::number_of_executed_units" in tail
