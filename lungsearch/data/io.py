"""Image ingest: DICOM (CR, DX, CT, MR; single- and multi-frame; compressed), PNG and JPEG.

Every input ends in a :class:`~lungsearch.data.types.DecodedImage` or one typed error:

* :class:`~lungsearch.errors.InvalidImageError` with a reason ``code`` (see :data:`REASON_CODES`);
* :class:`~lungsearch.errors.LimitExceededError` when the declared size is over the limits —
  checked from the header **before** any pixel is decoded (rows × columns × frames × samples ×
  bytes per sample, with float32 working copies counted, against ``limits.max_decoded_bytes``);
* :class:`~lungsearch.errors.PHIRejectedError` for burned-in annotation (unless allowed).

Uploads are treated as hostile: no DICOMDIR is followed, deflated datasets are inflated with a cap
before pydicom sees them, decoder failures of any kind become ``decode_failed``, and no message
carries a header value other than technical ones (transfer syntax, photometric interpretation).

Pixel conventions (:class:`DecodedImage`): CT is Hounsfield units (RescaleSlope/Intercept or
the modality LUT applied); everything else is scaled to [0, 1] with the VOI window when the file
has one, MONOCHROME1 inverted (air dark, bone bright), colour collapsed to gray with a warning.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from lungsearch.data.deid import case_key, check_burned_in
from lungsearch.data.types import DecodedImage, ImageMeta, Study
from lungsearch.errors import InvalidImageError, LimitExceededError, LungsearchError

if TYPE_CHECKING:
    import pydicom

    from lungsearch.config import LimitsConfig

__all__ = [
    "HU_MIN",
    "MODALITY_MAP",
    "REASON_CODES",
    "read_image",
    "read_image_frames",
    "read_study",
    "sniff_format",
]

log = logging.getLogger(__name__)

#: Every ``InvalidImageError.code`` / ``LimitExceededError.code`` this module raises.
REASON_CODES: dict[str, str] = {
    "empty": "no bytes",
    "unsupported_format": "not DICOM, PNG or JPEG",
    "format_mismatch": "the bytes do not match the declared format",
    "malformed_dicom": "the DICOM structure cannot be parsed",
    "not_image": "a DICOM object without an image (DICOMDIR, SR, RT plan, waveform, ...)",
    "no_pixel_data": "an image SOP class without Pixel Data",
    "unsupported_modality": "a modality lungsearch does not ingest (US, NM, PT, RTDOSE, SEG, ...)",
    "bad_header": "Rows/Columns/Bits/Samples/Frames missing or inconsistent",
    "unsupported_photometric": "a photometric interpretation that cannot be mapped to gray",
    "truncated_pixel_data": "Pixel Data shorter than the header says",
    "codec_unavailable": "no installed decoder for the transfer syntax",
    "decode_failed": "the decoder rejected the pixel data",
    "non_finite_pixels": "NaN or infinite pixel values",
    "empty_study": "a study with no files",
    "mixed_series": "files from different series, modalities or shapes in one study",
    "missing_file": "a dataset record points at a file that cannot be read",
    # LimitExceededError codes
    "input_too_large": "more bytes than limits.max_image_bytes",
    "image_too_large": "a side over limits.max_image_side",
    "decoded_too_large": "decoded size over limits.max_decoded_bytes",
    "too_many_images": "more images than limits.max_series_images",
}

#: CT values are floored here: anything below air is pixel padding, not tissue.
HU_MIN = -1024.0

#: DICOM Modality -> lungsearch modality. Anything else is rejected (``unsupported_modality``).
#: OT/SC (secondary capture, digitised film) and a missing Modality are treated as a radiograph.
MODALITY_MAP: dict[str, str] = {
    "CR": "cxr",
    "DX": "cxr",
    "DR": "cxr",
    "RG": "cxr",
    "OT": "cxr",
    "SC": "cxr",
    "": "cxr",
    "CT": "ct",
    "MR": "mr",
}

_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR): never followed
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.1.1.481.8",  # RT ion plan
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
)
_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR"}
_DEFLATED = "1.2.840.10008.1.2.1.99"
_VIEW_MAP = {"PA": "PA", "AP": "AP", "LL": "LATERAL", "RL": "LATERAL", "LAT": "LATERAL", "LATERAL": "LATERAL"}
# A process-local key for series grouping when the caller gives none: keys stay comparable
# within this process, and no raw UID is ever carried in ImageMeta.
_EPHEMERAL_KEY = np.random.default_rng().bytes(32)


def _limits(limits: "LimitsConfig | None") -> "LimitsConfig":
    if limits is None:
        from lungsearch.config import LimitsConfig

        return LimitsConfig()
    return limits


def sniff_format(data: bytes) -> str | None:
    """ "dicom", "png", "jpeg" or None, from magic bytes (DICOM also without its preamble)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    # Raw DICOM without preamble/meta: the first tag is a low group in either byte order
    # (file meta 0002, identifying 0008), followed by a plausible VR or a 4-byte length.
    if len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return "dicom"
    return None


def read_image(
    data: bytes,
    *,
    fmt: str | None = None,
    limits: "LimitsConfig | None" = None,
    hmac_key: bytes | None = None,
    allow_burned_in: bool = False,
) -> DecodedImage:
    """Decode one image (DICOM, PNG or JPEG) into a PHI-free :class:`DecodedImage`.

    A multi-frame DICOM yields its middle frame here (all frames: :func:`read_image_frames`).

    Args:
        data: The file's bytes.
        fmt: "dicom", "png" or "jpeg" to skip sniffing (the bytes must still match).
        limits: Size limits (default :class:`~lungsearch.config.LimitsConfig`).
        hmac_key: Secret for the study/series keys; without it ``study_key`` is None and the
            series key is only comparable within this process.
        allow_burned_in: Accept DICOM flagged BurnedInAnnotation = YES.

    Returns:
        The decoded image: HU for CT, [0, 1] otherwise.

    Raises:
        InvalidImageError: undecodable/unsupported input; ``code`` says why (:data:`REASON_CODES`).
        LimitExceededError: over a size limit (checked before decoding).
        PHIRejectedError: burned-in annotation.
    """
    frames = _read(
        data, fmt=fmt, limits=_limits(limits), hmac_key=hmac_key, allow_burned_in=allow_burned_in, all_frames=False
    )
    return frames[0]


def read_image_frames(
    data: bytes,
    *,
    fmt: str | None = None,
    limits: "LimitsConfig | None" = None,
    hmac_key: bytes | None = None,
    allow_burned_in: bool = False,
) -> list[DecodedImage]:
    """Like :func:`read_image` but every frame of a multi-frame DICOM (one item otherwise)."""
    return _read(
        data, fmt=fmt, limits=_limits(limits), hmac_key=hmac_key, allow_burned_in=allow_burned_in, all_frames=True
    )


def read_study(
    files: list[bytes],
    *,
    limits: "LimitsConfig | None" = None,
    hmac_key: bytes | None = None,
    allow_burned_in: bool = False,
) -> Study:
    """Decode one case: a single radiograph, or the files of one CT/MR series.

    DICOM slices are sorted by position along the slice normal (ImagePositionPatient and
    ImageOrientationPatient), then InstanceNumber; multi-frame files expand into their frames.
    Several non-DICOM files are kept in the given order.

    Raises:
        InvalidImageError: ``empty_study``, ``mixed_series`` (different series, modality, format
            or shape), or any :func:`read_image` reason.
        LimitExceededError: more than ``limits.max_series_images`` images or more than
            ``limits.max_decoded_bytes`` decoded in total.
    """
    lim = _limits(limits)
    if not files:
        raise InvalidImageError("study has no files", code="empty_study")
    if len(files) > lim.max_series_images:
        raise LimitExceededError(f"study has {len(files)} files, limit {lim.max_series_images}", code="too_many_images")
    images: list[DecodedImage] = []
    total = 0
    for data in files:
        for img in _read(
            data, fmt=None, limits=lim, hmac_key=hmac_key, allow_burned_in=allow_burned_in, all_frames=True
        ):
            total += img.pixels.nbytes
            if total > lim.max_decoded_bytes:
                raise LimitExceededError(
                    "study decodes to more than limits.max_decoded_bytes", code="decoded_too_large"
                )
            images.append(img)
            if len(images) > lim.max_series_images:
                raise LimitExceededError(f"study has more than {lim.max_series_images} images", code="too_many_images")
    if len(images) == 1:
        return Study(images=images, study_key=images[0].study_key)
    first = images[0]
    for im in images[1:]:
        if (
            im.meta.source_format != first.meta.source_format
            or im.meta.modality != first.meta.modality
            or im.meta.series_key != first.meta.series_key
            or im.pixels.shape != first.pixels.shape
        ):
            raise InvalidImageError("study mixes series, modalities, formats or image shapes", code="mixed_series")
    if first.meta.source_format == "dicom":

        def order(i_im: tuple[int, DecodedImage]) -> tuple:
            i, im = i_im
            pos = im.meta.slice_position
            inst = im.meta.instance_number
            return (pos is None, pos if pos is not None else 0.0, inst if inst is not None else 0, i)

        images = [im for _, im in sorted(enumerate(images), key=order)]
    return Study(images=images, study_key=first.study_key)


# ----------------------------------------------------------------------------------------- internals


def _read(
    data: bytes,
    *,
    fmt: str | None,
    limits: "LimitsConfig",
    hmac_key: bytes | None,
    allow_burned_in: bool,
    all_frames: bool,
) -> list[DecodedImage]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImageError("image data must be bytes", code="unsupported_format")
    data = bytes(data)
    if not data:
        raise InvalidImageError("empty image data", code="empty")
    if len(data) > limits.max_image_bytes:
        raise LimitExceededError(f"image is {len(data)} bytes, limit {limits.max_image_bytes}", code="input_too_large")
    sniffed = sniff_format(data)
    if fmt is not None:
        fmt = fmt.lower().replace("jpg", "jpeg").replace("dcm", "dicom")
        if fmt not in ("dicom", "png", "jpeg"):
            raise InvalidImageError(f"unsupported format {fmt!r}", code="unsupported_format")
        if sniffed is not None and sniffed != fmt:
            raise InvalidImageError(f"declared {fmt} but the bytes look like {sniffed}", code="format_mismatch")
    kind = fmt or sniffed
    if kind is None:
        raise InvalidImageError("not a DICOM, PNG or JPEG image", code="unsupported_format")
    if kind == "dicom":
        return _read_dicom(data, limits, hmac_key, allow_burned_in, all_frames)
    return [_read_raster(data, kind, limits)]


# --- PNG / JPEG -----------------------------------------------------------------------------------

_MODE_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "I": 4,
    "F": 4,
    "RGB": 3,
    "RGBA": 4,
    "RGBX": 4,
    "CMYK": 4,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "PA": 2,
    "La": 2,
    "RGBa": 4,
}


def _read_raster(data: bytes, kind: str, limits: "LimitsConfig") -> DecodedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data), formats=["PNG"] if kind == "png" else ["JPEG"])
    except Image.DecompressionBombError:
        raise LimitExceededError(
            "image dimensions exceed the decompression-bomb guard", code="image_too_large"
        ) from None
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        struct.error,
        EOFError,
        IndexError,
        KeyError,
        TypeError,
    ) as exc:
        raise InvalidImageError(f"cannot open {kind} image ({type(exc).__name__})", code="decode_failed") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise InvalidImageError("image has a zero dimension", code="bad_header")
    if max(w, h) > limits.max_image_side:
        raise LimitExceededError(f"image side {max(w, h)} over limit {limits.max_image_side}", code="image_too_large")
    # Count the float32 working copy too, not only the stored bytes per pixel.
    if w * h * max(_MODE_BYTES.get(im.mode, 4), 4) > limits.max_decoded_bytes:
        raise LimitExceededError("decoded image over limits.max_decoded_bytes", code="decoded_too_large")
    try:
        if kind == "jpeg":
            im = ImageOps.exif_transpose(im)
        im.load()
        arr, scale = _raster_to_gray(im)
    except Image.DecompressionBombError:
        raise LimitExceededError(
            "image dimensions exceed the decompression-bomb guard", code="image_too_large"
        ) from None
    except LungsearchError:
        raise
    except Exception as exc:  # noqa: BLE001  (Pillow's plugins raise many types on hostile data)
        raise InvalidImageError(f"cannot decode {kind} image ({type(exc).__name__})", code="decode_failed") from None
    pixels = (arr.astype(np.float32) / np.float32(scale)).clip(0.0, 1.0)
    if not np.isfinite(pixels).all():
        raise InvalidImageError("image has non-finite values", code="non_finite_pixels")
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        meta=ImageMeta(modality="cxr", view="", source_format=kind),
        study_key=None,
    )


def _raster_to_gray(im: Any) -> tuple[np.ndarray, float]:
    """(gray array, full-scale value). 16-bit data is scaled by its bit depth (12-bit PNGs stay
    bright: a max of 4000 scales by 4095, not 65535)."""
    mode = im.mode
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA", "LA", "La", "RGBa"):
        if mode not in ("LA", "La") and not (mode in ("P", "PA") and _palette_is_gray(im)):
            log.warning("colour image collapsed to grayscale")
        return np.asarray(im.convert("L")), 255.0
    if mode == "1":
        return np.asarray(im.convert("L")), 255.0
    if mode == "L":
        return np.asarray(im), 255.0
    arr = np.asarray(im)
    if mode.startswith("I;16") or mode == "I":
        arr = arr.astype(np.float64)
        lo = float(arr.min()) if arr.size else 0.0
        if lo < 0:
            arr = arr - lo
        hi = float(arr.max()) if arr.size else 0.0
        full = float(2 ** max(8, math.ceil(math.log2(hi + 1))) - 1) if hi > 0 else 1.0
        return arr, full
    if mode == "F":
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("non-finite")
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo), (hi - lo) if hi > lo else 1.0
    return np.asarray(im.convert("L")), 255.0


def _palette_is_gray(im: Any) -> bool:
    pal = im.getpalette() or []
    rgb = np.asarray(pal[: (len(pal) // 3) * 3]).reshape(-1, 3)
    return bool(rgb.size == 0 or (np.ptp(rgb, axis=1) == 0).all())


# --- DICOM ----------------------------------------------------------------------------------------


def _int_attr(ds: "pydicom.Dataset", name: str, default: int | None = None) -> int | None:
    try:
        value = ds.get(name, None)
        if value is None or value == "":
            return default
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidImageError(f"DICOM attribute {name} is not an integer", code="bad_header") from None


def _check_deflate(data: bytes, limits: "LimitsConfig") -> None:
    """Inflate a deflated dataset with a cap first: pydicom would inflate it all in memory."""
    if _DEFLATED.encode() not in data[:4096]:
        return
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        fp = io.BytesIO(data)
        read_preamble(fp, True)
        _read_file_meta_info(fp)
        start = fp.tell()
    except Exception:  # a malformed meta group: let dcmread report it as malformed
        return
    cap = limits.max_decoded_bytes + 1024 * 1024
    try:
        out = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:], cap + 1)
    except zlib.error:
        raise InvalidImageError("deflated dataset cannot be inflated", code="malformed_dicom") from None
    if len(out) > cap:
        raise LimitExceededError("deflated dataset inflates beyond limits.max_decoded_bytes", code="decoded_too_large")


def _dcmread(data: bytes) -> "pydicom.Dataset":
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd VR; the checks below decide
            return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types on hostile input; all mean "malformed"
        raise InvalidImageError(f"DICOM cannot be parsed ({type(exc).__name__})", code="malformed_dicom") from None


class _RedactPydicom(logging.Filter):
    """pydicom logs header values in its warnings ("Invalid value for VR PN: 'Doe^Jane'"): keep
    the fact, drop the text, so no header value reaches a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return False
        record.msg, record.args = "pydicom reported a problem (details redacted: may quote header values)", ()
        return True


def _install_pydicom_redaction() -> None:
    plog = logging.getLogger("pydicom")
    if not any(isinstance(f, _RedactPydicom) for f in plog.filters):
        plog.addFilter(_RedactPydicom())


_install_pydicom_redaction()


def _read_dicom(
    data: bytes, limits: "LimitsConfig", hmac_key: bytes | None, allow_burned_in: bool, all_frames: bool
) -> list[DecodedImage]:
    import warnings

    # pydicom's warnings quote header values (PHI) and fire lazily on attribute access, so the
    # whole decode runs with them suppressed; the typed errors below carry what matters.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check_deflate(data, limits)
        return _read_dicom_quiet(data, limits, hmac_key, allow_burned_in, all_frames)


def _read_dicom_quiet(
    data: bytes, limits: "LimitsConfig", hmac_key: bytes | None, allow_burned_in: bool, all_frames: bool
) -> list[DecodedImage]:
    ds = _dcmread(data)
    try:
        return _decode_dataset(ds, limits, hmac_key, allow_burned_in, all_frames)
    except LungsearchError:
        raise
    except Exception as exc:  # noqa: BLE001
        # pydicom parses elements lazily, so a corrupt header surfaces here as any exception type
        # (struct.error, UnicodeDecodeError, KeyError, ...); keep only the type in the message.
        raise InvalidImageError(f"DICOM header cannot be read ({type(exc).__name__})", code="malformed_dicom") from None


def _sop_class(ds: "pydicom.Dataset") -> str:
    uid = ds.get("SOPClassUID", None)
    if uid is None:
        meta = getattr(ds, "file_meta", None)
        uid = meta.get("MediaStorageSOPClassUID", None) if meta is not None else None
    return str(uid or "")


def _decode_dataset(
    ds: "pydicom.Dataset", limits: "LimitsConfig", hmac_key: bytes | None, allow_burned_in: bool, all_frames: bool
) -> list[DecodedImage]:
    sop = _sop_class(ds)
    if "DirectoryRecordSequence" in ds or any(sop.startswith(p) for p in _NON_IMAGE_SOP_PREFIXES):
        raise InvalidImageError(
            "DICOM object is not an image (directory, report, plan, waveform, ...)", code="not_image"
        )
    pixel_kw = next((k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
    if pixel_kw is None:
        if len(ds) == 0 or ("Rows" not in ds and "SOPClassUID" not in ds):
            raise InvalidImageError("bytes do not contain a DICOM image", code="malformed_dicom")
        raise InvalidImageError("DICOM has no Pixel Data", code="no_pixel_data")
    check_burned_in(ds, allow=allow_burned_in)
    raw_modality = str(ds.get("Modality", "") or "").strip().upper()
    modality = MODALITY_MAP.get(raw_modality)
    if modality is None:
        raise InvalidImageError(
            f"modality {raw_modality[:8]!r} is not ingested (CR, DX, CT, MR)", code="unsupported_modality"
        )

    rows = _int_attr(ds, "Rows")
    cols = _int_attr(ds, "Columns")
    spp = _int_attr(ds, "SamplesPerPixel", 1)
    bits = _int_attr(ds, "BitsAllocated")
    frames = _int_attr(ds, "NumberOfFrames", 1) or 1
    if pixel_kw != "PixelData":
        bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}[pixel_kw]
    if not rows or not cols or rows < 0 or cols < 0 or bits is None or spp not in (1, 3) or frames < 1:
        raise InvalidImageError("DICOM image header is incomplete or inconsistent", code="bad_header")
    if bits not in (1, 8, 16, 32, 64):
        raise InvalidImageError(f"BitsAllocated {bits} is not supported", code="bad_header")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric not in _PHOTOMETRIC:
        raise InvalidImageError(
            f"photometric interpretation {photometric[:20]!r} is not supported", code="unsupported_photometric"
        )
    if (spp == 3) != (photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")):
        raise InvalidImageError("SamplesPerPixel does not match the photometric interpretation", code="bad_header")

    # Limits from the header, before a single pixel is decoded.
    if max(rows, cols) > limits.max_image_side:
        raise LimitExceededError(
            f"image side {max(rows, cols)} over limit {limits.max_image_side}", code="image_too_large"
        )
    if frames > limits.max_series_images:
        raise LimitExceededError(f"{frames} frames, limit {limits.max_series_images}", code="too_many_images")
    bytes_per = max(1, bits // 8)
    decoded = rows * cols * frames * spp * bytes_per
    working = rows * cols * (frames if all_frames else 1) * spp * max(bytes_per, 4)  # float32 copies
    if max(decoded, working) > limits.max_decoded_bytes:
        raise LimitExceededError("decoded image over limits.max_decoded_bytes", code="decoded_too_large")

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    encapsulated = bool(ts is not None and getattr(ts, "is_compressed", False))
    if pixel_kw == "PixelData" and not encapsulated:
        # YBR_FULL_422 is stored chroma-subsampled: 2 samples per pixel, not 3.
        samples = 2 if photometric == "YBR_FULL_422" else spp
        expected = math.ceil(rows * cols * frames * samples * bits / 8)
        have = len(ds[pixel_kw].value or b"")
        if have < expected:
            raise InvalidImageError("Pixel Data is shorter than the header declares", code="truncated_pixel_data")
    elif pixel_kw == "PixelData" and not ds[pixel_kw].value:
        raise InvalidImageError("encapsulated Pixel Data is empty", code="truncated_pixel_data")

    indices = list(range(frames)) if all_frames else [frames // 2]
    base = _meta_common(ds, modality, hmac_key)
    out = []
    for index in indices:
        if encapsulated and pixel_kw == "PixelData":
            _check_codestream(ds.PixelData, index, frames, str(ts), rows, cols, spp)
        arr = _decode_frame(ds, index if frames > 1 else None, ts, rows, cols, spp)
        pixels, hu = _to_float(arr, ds, modality, photometric, index)
        meta = ImageMeta(
            modality=modality,
            view=base["view"],
            source_format="dicom",
            spacing=base["spacing"],
            slice_position=_slice_position(ds, index if frames > 1 else None),
            instance_number=base["instance"] if frames == 1 else (base["instance"] or 0) * 10000 + index,
            series_key=base["series_key"],
            hu=hu,
        )
        out.append(DecodedImage(pixels=pixels, meta=meta, study_key=base["study_key"]))
    return out


_JPEG_TS = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
}
_J2K_TS = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_MAX_J2K_TILES = 65536


def _jpeg_frame_size(buf: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from the first SOF segment of a JPEG / JPEG-LS stream."""
    if buf[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(buf):
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (seglen,) = struct.unpack(">H", buf[pos + 2 : pos + 4])
        if marker in _SOF:
            if pos + 10 > len(buf):
                return None
            _, y, x, nf = struct.unpack(">BHHB", buf[pos + 4 : pos + 10])
            return y, x, nf
        if marker == 0xDA or seglen < 2:  # start of scan before any frame header
            return None
        pos += 2 + seglen
    return None


def _j2k_frame_size(buf: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, tiles) from the SIZ segment of a J2K codestream (raw or JP2)."""
    i = buf.find(b"\xff\x4f\xff\x51", 0, 65536)
    if i < 0 or i + 4 + 38 > len(buf):
        return None
    _, _, x, y, xo, yo, xt, yt, xto, yto, c = struct.unpack(">HHIIIIIIIIH", buf[i + 4 : i + 42])
    if x <= xo or y <= yo or xt == 0 or yt == 0 or xto > xo or yto > yo:
        return None
    tiles = math.ceil((x - xto) / xt) * math.ceil((y - yto) / yt)
    return y - yo, x - xo, c, tiles


def _check_codestream(pixel_data: bytes, index: int, frames: int, ts: str, rows: int, cols: int, spp: int) -> None:
    """The decoders size their buffers from the codestream, not from the DICOM header: a stream
    that declares other dimensions (a 16 GB allocation was seen in fuzzing) is rejected unread."""
    if ts not in _JPEG_TS and ts not in _J2K_TS:
        return
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(pixel_data, index, number_of_frames=frames)
    except Exception:  # noqa: BLE001  (malformed item tags / offsets)
        raise InvalidImageError("encapsulated Pixel Data is malformed", code="decode_failed") from None
    head = bytes(frame[:65536])
    if ts in _JPEG_TS:
        size = _jpeg_frame_size(head)
        ok = size is not None and size[0] == rows and size[1] == cols and size[2] == spp
    else:
        size = _j2k_frame_size(head)
        ok = size is not None and size[0] == rows and size[1] == cols and size[2] == spp and size[3] <= _MAX_J2K_TILES
    if not ok:
        raise InvalidImageError("compressed stream dimensions disagree with the DICOM header", code="decode_failed")


def _decode_frame(ds: "pydicom.Dataset", index: int | None, ts: Any, rows: int, cols: int, spp: int) -> np.ndarray:
    import warnings

    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=index)
    except Exception as exc:  # decoders raise anything on hostile data; classify, never propagate
        text = str(exc)
        name = getattr(ts, "name", "unknown transfer syntax")
        if (
            "No pixel data decoders" in text
            or "missing required dependencies" in text
            or "plugins are missing" in text
            or "is not available" in text
            or isinstance(exc, ImportError)
        ):
            raise InvalidImageError(f"no installed decoder for {name}", code="codec_unavailable") from None
        if "shorter than" in text or "truncat" in text.lower():
            raise InvalidImageError(
                "Pixel Data is shorter than the header declares", code="truncated_pixel_data"
            ) from None
        raise InvalidImageError(
            f"{name} pixel data cannot be decoded ({type(exc).__name__})", code="decode_failed"
        ) from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and spp == 1 and arr.shape[0] == 1:
        arr = arr[0]
    expected = (rows, cols) if spp == 1 else (rows, cols, 3)
    if arr.shape != expected:
        raise InvalidImageError("decoded pixel array has an unexpected shape", code="decode_failed")
    return arr


def _to_float(
    arr: np.ndarray, ds: "pydicom.Dataset", modality: str, photometric: str, index: int
) -> tuple[np.ndarray, bool]:
    import warnings

    from pydicom.pixels import apply_color_lut, apply_modality_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if photometric == "PALETTE COLOR":
            try:
                arr = apply_color_lut(arr, ds)
            except Exception:  # missing or malformed LUT descriptors
                raise InvalidImageError(
                    "palette colour lookup table is missing or malformed", code="bad_header"
                ) from None
        if arr.ndim == 3:  # RGB after pydicom's YBR->RGB conversion
            log.warning("colour DICOM collapsed to grayscale")
            a = arr.astype(np.float64)
            return _scale_unit(a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114, photometric=""), False
        if modality == "ct":
            try:
                hu = apply_modality_lut(arr, ds)
            except Exception:
                raise InvalidImageError("modality LUT / rescale cannot be applied", code="bad_header") from None
            hu = np.asarray(hu, dtype=np.float32)
            if not np.isfinite(hu).all():
                raise InvalidImageError("pixel values are not finite", code="non_finite_pixels")
            # Below air (-1000) is padding outside the reconstruction circle (-2000, -3024, ...).
            return np.ascontiguousarray(np.maximum(hu, np.float32(HU_MIN))), True
        try:
            values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        except Exception:
            values = arr.astype(np.float64)
    if not np.isfinite(values).all():
        raise InvalidImageError("pixel values are not finite", code="non_finite_pixels")
    window = _window(ds, index)
    if window is not None:
        c, w = window
        # DICOM PS3.3 C.11.2.1.2 linear window, mapped to [0, 1].
        unit = np.clip((values - (c - 0.5)) / max(w - 1.0, 1e-6) + 0.5, 0.0, 1.0)
        if photometric == "MONOCHROME1":
            unit = 1.0 - unit
        return unit.astype(np.float32), False
    return _scale_unit(values, photometric), False


def _scale_unit(values: np.ndarray, photometric: str) -> np.ndarray:
    """Robust min-max to [0, 1] (0.5th-99.5th percentile), MONOCHROME1 inverted."""
    if values.size == 0:
        return values.astype(np.float32)
    flat = values.ravel()
    if flat.size > 262144:  # percentiles of a strided sample: same answer, a fraction of the time
        flat = flat[:: flat.size // 262144]
    lo, hi = np.percentile(flat, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    unit = np.zeros_like(values, dtype=np.float64) if hi <= lo else np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return np.ascontiguousarray(unit, dtype=np.float32)


def _first_float(value: Any) -> float | None:
    try:
        if value is None or value == "":
            return None
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
        return None if value is None else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _window(ds: "pydicom.Dataset", index: int) -> tuple[float, float] | None:
    c = _first_float(ds.get("WindowCenter"))
    w = _first_float(ds.get("WindowWidth"))
    if c is None or w is None:
        try:  # enhanced multi-frame: per-frame or shared Frame VOI LUT
            for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
                seq = ds.get(seq_name)
                if not seq:
                    continue
                item = seq[index] if seq_name.startswith("PerFrame") and len(seq) > index else seq[0]
                voi = item.get("FrameVOILUTSequence")
                if voi:
                    c, w = _first_float(voi[0].get("WindowCenter")), _first_float(voi[0].get("WindowWidth"))
                    if c is not None and w is not None:
                        break
        except (AttributeError, IndexError, KeyError, TypeError):
            c = w = None
    if c is None or w is None or not math.isfinite(c) or not math.isfinite(w) or w < 1:
        return None
    return c, w


def _floats(value: Any, n: int) -> list[float] | None:
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n and all(math.isfinite(v) for v in vals) else None


def _slice_position(ds: "pydicom.Dataset", index: int | None) -> float | None:
    pos = orient = None
    try:
        if index is not None and ds.get("PerFrameFunctionalGroupsSequence"):
            item = ds.PerFrameFunctionalGroupsSequence[index]
            if item.get("PlanePositionSequence"):
                pos = _floats(item.PlanePositionSequence[0].get("ImagePositionPatient"), 3)
            shared = ds.get("SharedFunctionalGroupsSequence")
            for src in (item, shared[0] if shared else None):
                if src is not None and src.get("PlaneOrientationSequence"):
                    orient = _floats(src.PlaneOrientationSequence[0].get("ImageOrientationPatient"), 6)
                    break
        else:
            pos = _floats(ds.get("ImagePositionPatient"), 3)
            orient = _floats(ds.get("ImageOrientationPatient"), 6)
    except (AttributeError, IndexError, KeyError, TypeError):
        pos = orient = None
    if pos is not None:
        if orient is not None:
            normal = np.cross(np.asarray(orient[:3]), np.asarray(orient[3:]))
            if np.linalg.norm(normal) > 1e-6:
                return float(np.dot(normal / np.linalg.norm(normal), pos))
        return float(pos[2])
    loc = _first_float(ds.get("SliceLocation"))
    return loc if loc is not None and math.isfinite(loc) else None


def _meta_common(ds: "pydicom.Dataset", modality: str, hmac_key: bytes | None) -> dict:
    spacing = None
    for name in ("PixelSpacing", "ImagerPixelSpacing"):
        sp = _floats(ds.get(name), 2) if ds.get(name) is not None else None
        if sp is not None and sp[0] > 0 and sp[1] > 0:
            spacing = (sp[0], sp[1])
            break
    if spacing is None and ds.get("SharedFunctionalGroupsSequence"):
        try:
            pm = ds.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
            sp = _floats(pm[0].get("PixelSpacing"), 2) if pm else None
            spacing = (sp[0], sp[1]) if sp and sp[0] > 0 and sp[1] > 0 else None
        except (AttributeError, IndexError, KeyError, TypeError):
            spacing = None
    view = ""
    if modality == "ct":
        view = "AXIAL"
    else:
        raw = str(ds.get("ViewPosition", "") or "").strip().upper()
        view = _VIEW_MAP.get(raw, "")
    try:
        instance = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    patient = str(ds.get("PatientID", "") or "")
    key = hmac_key if hmac_key else _EPHEMERAL_KEY
    series_key = case_key(key, "series", series_uid) if series_uid else ""
    study_key = case_key(hmac_key, "study", patient, study_uid) if hmac_key and (patient or study_uid) else None
    return {"spacing": spacing, "view": view, "instance": instance, "series_key": series_key, "study_key": study_key}
