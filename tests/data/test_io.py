"""Ingest: DICOM / PNG / JPEG decoding, limits before decoding, study assembly."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from lungsearch.config import LimitsConfig
from lungsearch.data import read_image, read_image_frames, read_study
from lungsearch.data.io import REASON_CODES, sniff_format
from lungsearch.errors import InvalidImageError, LimitExceededError, PHIRejectedError

KEY = b"test-key-0123456789"


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_ct_rescale_to_hu(dicom_factory):
    stored = np.array([[0, 24], [1024, 2024]], dtype=np.uint16)
    img = read_image(dicom_factory(stored, slope=1.0, intercept=-1024.0), hmac_key=KEY)
    assert img.meta.hu and img.meta.modality == "ct" and img.meta.view == "AXIAL"
    np.testing.assert_allclose(img.pixels, [[-1024, -1000], [0, 1000]])
    assert img.meta.spacing == (0.7, 0.7)
    assert img.study_key and len(img.study_key) == 32 and img.meta.series_key


def test_ct_below_air_is_floored(dicom_factory):
    img = read_image(dicom_factory(np.array([[0, 3000]], dtype=np.uint16), intercept=-3024.0))
    assert img.pixels.min() == -1024.0 and img.pixels.max() == pytest.approx(-24.0)


def test_monochrome1_is_inverted(dicom_factory):
    arr = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    m2 = read_image(dicom_factory(arr, modality="DX", photometric="MONOCHROME2"))
    m1 = read_image(dicom_factory(arr, modality="DX", photometric="MONOCHROME1"))
    assert m2.meta.modality == "cxr" and not m2.meta.hu
    np.testing.assert_allclose(m1.pixels, 1.0 - m2.pixels, atol=1e-6)
    assert m2.pixels[1, 1] > m2.pixels[0, 0]  # orientation kept: no flips


def test_voi_window_applied(dicom_factory):
    arr = np.array([[0, 50, 100, 150, 200]], dtype=np.uint16)
    img = read_image(dicom_factory(arr, modality="CR", extra={"WindowCenter": 100, "WindowWidth": 101}))
    np.testing.assert_allclose(img.pixels[0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=0.01)


def test_no_key_means_no_study_key(dicom_factory):
    img = read_image(dicom_factory(np.zeros((4, 4), np.uint16)))
    assert img.study_key is None and img.meta.series_key  # series still groupable in-process


def test_limits_are_checked_before_decoding(dicom_factory):
    # Header claims 20000 x 20000 but carries 8 bytes: the limit must win over "truncated".
    data = dicom_factory(np.zeros((2, 2), np.uint16), extra={})
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows = ds.Columns = 20000
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(LimitExceededError) as e:
        read_image(buf.getvalue())
    assert e.value.code == "image_too_large"
    ds.Rows = ds.Columns = 4000
    ds.NumberOfFrames = 200
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(LimitExceededError) as e:
        read_image(buf.getvalue(), limits=LimitsConfig(max_decoded_bytes=1024**3))
    assert e.value.code in ("decoded_too_large", "too_many_images")
    with pytest.raises(LimitExceededError) as e:
        read_image(b"\x89PNG\r\n\x1a\n" + b"0" * 5000, limits=LimitsConfig(max_image_bytes=1024))
    assert e.value.code == "input_too_large"


def test_png_side_limit_before_decoding():
    data = _png(np.zeros((10, 300), np.uint8))
    with pytest.raises(LimitExceededError) as e:
        read_image(data, limits=LimitsConfig(max_image_side=256))
    assert e.value.code == "image_too_large"


def test_deflate_bomb_is_capped(dicom_factory):
    big = np.zeros((1024, 1024), np.uint16)  # 2 MiB of zeros deflates to a few KiB
    data = dicom_factory(big, ts="1.2.840.10008.1.2.1.99")
    assert len(data) < 100_000
    with pytest.raises(LimitExceededError) as e:
        read_image(data, limits=LimitsConfig(max_decoded_bytes=1024))
    assert e.value.code == "decoded_too_large"
    assert read_image(data).pixels.shape == (1024, 1024)


def test_burned_in_annotation_rejected(dicom_factory):
    data = dicom_factory(np.zeros((4, 4), np.uint16), modality="DX", extra={"BurnedInAnnotation": "YES"})
    with pytest.raises(PHIRejectedError) as e:
        read_image(data)
    assert e.value.code == "burned_in_annotation"
    assert read_image(data, allow_burned_in=True).pixels.shape == (4, 4)


def test_png_8_16_bit_and_rgb(caplog):
    a8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = read_image(_png(a8))
    assert img.meta.source_format == "png" and img.study_key is None
    np.testing.assert_allclose(img.pixels, a8 / 255.0, atol=1e-6)
    a16 = np.arange(256, dtype=np.uint16).reshape(16, 16) * 16  # 12-bit data, max 4080
    img16 = read_image(_png(a16))
    np.testing.assert_allclose(img16.pixels.max(), 4080 / 4095, atol=1e-4)
    rgb = np.stack([a8, a8, a8], axis=-1)
    with caplog.at_level(logging.WARNING, logger="lungsearch.data.io"):
        img_rgb = read_image(_png(rgb))
    assert "grayscale" in caplog.text
    np.testing.assert_allclose(img_rgb.pixels, img.pixels, atol=2 / 255)


def test_jpeg():
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(buf, format="JPEG")
    img = read_image(buf.getvalue(), fmt="jpg")
    assert img.pixels.shape == (20, 30) and abs(float(img.pixels.mean()) - 128 / 255) < 0.02


@pytest.mark.parametrize(
    "data,code",
    [
        (b"", "empty"),
        (b"hello world, not an image at all" * 10, "unsupported_format"),
        (b"GIF89a" + b"\0" * 100, "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "decode_failed"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 50, "decode_failed"),
        (b"\0" * 128 + b"DICM" + b"\xff" * 64, "malformed_dicom"),
    ],
)
def test_bad_bytes_have_reason_codes(data, code):
    with pytest.raises(InvalidImageError) as e:
        read_image(data)
    assert e.value.code == code and code in REASON_CODES


def test_truncated_png_and_format_mismatch():
    data = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(InvalidImageError) as e:
        read_image(data[: len(data) // 2])
    assert e.value.code == "decode_failed"
    with pytest.raises(InvalidImageError) as e:
        read_image(data, fmt="jpeg")
    assert e.value.code == "format_mismatch"
    assert sniff_format(data) == "png"


def test_missing_pixel_data(dicom_factory):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_factory(np.zeros((4, 4), np.uint16))))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(InvalidImageError) as e:
        read_image(buf.getvalue())
    assert e.value.code == "no_pixel_data"


def test_study_sorted_by_position(dicom_factory):
    uid = "1.2.826.0.1.3680043.99.7.7"
    files = [
        dicom_factory(np.full((4, 4), 1024 + 10 * z, np.uint16), position=float(z), instance=10 - z, series_uid=uid)
        for z in (3, 0, 2, 1)
    ]
    study = read_study(files, hmac_key=KEY)
    assert [im.meta.slice_position for im in study.images] == [0.0, 1.0, 2.0, 3.0]
    vol = study.volume()
    assert vol.shape == (4, 4, 4) and list(vol[:, 0, 0]) == [0.0, 10.0, 20.0, 30.0]
    assert study.study_key and study.modality == "ct"


def test_study_rejects_mixed_series_and_limits(dicom_factory):
    a = dicom_factory(np.zeros((4, 4), np.uint16), series_uid="1.2.3.1")
    b = dicom_factory(np.zeros((4, 4), np.uint16), series_uid="1.2.3.2")
    with pytest.raises(InvalidImageError) as e:
        read_study([a, b], hmac_key=KEY)
    assert e.value.code == "mixed_series"
    with pytest.raises(InvalidImageError) as e:
        read_study([])
    assert e.value.code == "empty_study"
    with pytest.raises(LimitExceededError):
        read_study([a, a, a], limits=LimitsConfig(max_series_images=2))


def test_multiframe_expands():
    from pydicom.data import get_testdata_file

    data = open(get_testdata_file("SC_rgb_rle_2frame.dcm"), "rb").read()
    frames = read_image_frames(data)
    assert len(frames) == 2 and all(f.pixels.shape == (100, 100) for f in frames)
    assert read_study([data]).images[0].pixels.shape == (100, 100)
