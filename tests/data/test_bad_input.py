"""Acceptance: every file pydicom ships as test data either decodes to a finite array with the
right orientation and range, or raises InvalidImageError with a specific reason; never anything
else. Plus truncated and bit-flipped copies of each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungsearch.config import LimitsConfig
from lungsearch.data import read_image_frames
from lungsearch.data.io import REASON_CODES
from lungsearch.errors import InvalidImageError, LimitExceededError, PHIRejectedError


def _test_files() -> list[Path]:
    # The folder behind pydicom.data.get_testdata_files(): listed directly, because that call
    # first tries to download extra files (~15 s of timeouts offline) and then returns these.
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in folder.iterdir() if p.is_file())


FILES = _test_files()


def test_the_folder_is_there():
    assert len(FILES) > 60


def _check_decoded(frames, name):
    assert frames, name
    for f in frames:
        p = f.pixels
        assert p.dtype == np.float32 and p.ndim == 2 and np.isfinite(p).all(), name
        if f.meta.hu:
            assert -1024.0 <= p.min() and p.max() <= 4000.0, name  # HU range of real CT
        else:
            assert 0.0 <= p.min() and p.max() <= 1.0, name


def test_walk_pydicom_test_files():
    outcomes = {}
    for path in FILES:
        data = path.read_bytes()
        try:
            frames = read_image_frames(data, hmac_key=b"k" * 16)
        except InvalidImageError as exc:
            assert exc.code in REASON_CODES, (path.name, exc.code)
            outcomes[path.name] = exc.code
            continue
        _check_decoded(frames, path.name)
        outcomes[path.name] = "ok"
    # Specific, known outcomes (they pin the reason codes, not just "some error").
    expect = {
        "CT_small.dcm": "ok",
        "MR_small.dcm": "ok",
        "MR_small_RLE.dcm": "ok",
        "MR_small_jp2klossless.dcm": "ok",
        "MR_small_jpeg_ls_lossless.dcm": "ok",
        "MR_small_bigendian.dcm": "ok",
        "JPEGLSNearLossless_16.dcm": "ok",
        "SC_rgb_jpeg_gdcm.dcm": "ok",
        "image_dfl.dcm": "ok",
        "693_J2KI.dcm": "ok",
        "MR_truncated.dcm": "truncated_pixel_data",
        "rtplan.dcm": "not_image",
        "test-SR.dcm": "not_image",
        "waveform_ecg.dcm": "not_image",
        "rtdose.dcm": "unsupported_modality",
        "README.txt": "unsupported_format",
        "examples_palette.dcm": "unsupported_modality",
    }
    for name, want in expect.items():
        if name in outcomes:
            assert outcomes[name] == want, (name, outcomes[name])
    assert sum(v == "ok" for v in outcomes.values()) >= 30


def test_lossless_codecs_agree():
    """Every lossless encoding of MR_small decodes to the same pixels (orientation included)."""
    from lungsearch.data import read_image

    names = [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ]
    by = {p.name: p for p in FILES}
    ref = read_image(by[names[0]].read_bytes()).pixels
    for n in names[1:]:
        if n in by:
            np.testing.assert_allclose(read_image(by[n].read_bytes()).pixels, ref, atol=1e-6, err_msg=n)


def test_ct_small_hu_matches_rescale():
    import pydicom

    path = next(p for p in FILES if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    want = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    from lungsearch.data import read_image

    got = read_image(path.read_bytes()).pixels
    np.testing.assert_allclose(got, np.maximum(want, -1024), atol=1e-3)


@pytest.mark.parametrize("mutation", ["truncate", "flip"])
def test_mutated_files_fail_cleanly(mutation):
    rng = np.random.default_rng(0)
    limits = LimitsConfig(max_decoded_bytes=256 * 1024 * 1024)
    for path in FILES:
        data = bytearray(path.read_bytes())
        if mutation == "truncate":
            data = data[: max(1, len(data) * 2 // 3)]
        else:
            for i in rng.integers(0, len(data), size=16):
                data[i] ^= 0xA5
        try:
            frames = read_image_frames(bytes(data), limits=limits)
        except (InvalidImageError, LimitExceededError, PHIRejectedError) as exc:
            assert exc.code, path.name
            continue
        for f in frames:
            assert np.isfinite(f.pixels).all(), path.name


def _with_pixel_data(ds, data: bytes) -> bytes:
    import io

    ds.PixelData = data
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_codestream_dimensions_must_match_the_header():
    """Decoders allocate from the codestream: a J2K SIZ or JPEG SOF declaring a larger image
    than Rows x Columns is rejected before decoding (fuzzing found a 16 GB allocation)."""
    import struct

    import pydicom
    from pydicom.encaps import encapsulate, generate_fragments

    from lungsearch.data import read_image

    path = next(p for p in FILES if p.name == "693_J2KI.dcm")
    ds = pydicom.dcmread(path)
    stream = bytearray(b"".join(generate_fragments(ds.PixelData)))
    i = stream.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", stream, i + 8, 40000, 40000)  # Xsiz, Ysiz
    with pytest.raises(InvalidImageError) as e:
        read_image(_with_pixel_data(ds, encapsulate([bytes(stream)])))
    assert e.value.code == "decode_failed"

    path = next(p for p in FILES if p.name == "SC_rgb_jpeg_gdcm.dcm")
    ds = pydicom.dcmread(path)
    good = read_image(path.read_bytes())
    assert good.pixels.shape == (100, 100)
    stream = bytearray(b"".join(generate_fragments(ds.PixelData)))
    sof = next(j for j in range(len(stream) - 1) if stream[j] == 0xFF and stream[j + 1] in (0xC0, 0xC1, 0xC3))
    assert read_image(_with_pixel_data(ds, encapsulate([bytes(stream)]))).pixels.shape == (100, 100)
    struct.pack_into(">HH", stream, sof + 5, 30000, 30000)
    from lungsearch.data.io import _jpeg_frame_size

    assert _jpeg_frame_size(bytes(stream))[:2] == (30000, 30000)
    with pytest.raises(InvalidImageError) as e:
        read_image(_with_pixel_data(ds, encapsulate([bytes(stream)])))
    assert e.value.code == "decode_failed"
