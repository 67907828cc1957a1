"""Turning Python arguments into request messages (shared by the sync and the async client).

Files are read lazily: a DICOM series is streamed from disk chunk by chunk, so a 500-slice CT does
not have to fit in memory twice.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from lungsearch._proto.v1 import common_pb2, gateway_pb2
from lungsearch.client._errors import InvalidArgument
from lungsearch.client._types import Image, format_to_proto, modality_to_proto, sniff_format, view_to_proto

__all__ = [
    "CHUNK_BYTES",
    "STREAM_THRESHOLD_BYTES",
    "ImageLike",
    "Source",
    "sources",
    "series_sources",
    "report_proto",
    "header",
    "stream_messages",
    "health_request",
    "parse_health_response",
    "parse_serve_healthz",
]

#: Largest ``ImageChunk.data`` sent by ``ingest_series`` (1 MiB).
CHUNK_BYTES = 1 << 20
#: ``ingest`` switches to the streaming RPC above this many image bytes: a plain gRPC server's
#: default receive limit is 4 MiB, and streaming keeps every message far below it.
STREAM_THRESHOLD_BYTES = 3 << 20

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, Image, io.IOBase]

# Files in a series folder that are never images. DICOMDIR is skipped on purpose: its paths come
# from the medium and must not be followed (pydicom CVE-2026-32711 is about exactly that).
_NOT_IMAGES = {".txt", ".json", ".jsonl", ".csv", ".xml", ".md", ".yaml", ".yml", ".html", ".pdf"}


@dataclass
class Source:
    """One image to send: either a file (read when sent) or bytes already in memory."""

    path: Path | None = None
    data: bytes | None = None
    format: str = ""
    modality: str = ""
    view: str = ""

    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    def read(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()  # type: ignore[union-attr]

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        if self.data is not None:
            view = memoryview(self.data)
            for i in range(0, max(len(view), 1), chunk_bytes):
                yield bytes(view[i : i + chunk_bytes])
            return
        with open(self.path, "rb") as fh:  # type: ignore[arg-type]
            first = True
            while True:
                block = fh.read(chunk_bytes)
                if not block and not first:
                    return
                yield block
                first = False
                if len(block) < chunk_bytes:
                    return

    def fmt(self) -> str:
        if self.format:
            return self.format
        if self.data is not None:
            return sniff_format(self.data)
        with open(self.path, "rb") as fh:  # type: ignore[arg-type]
            head = fh.read(132)
        fmt = sniff_format(head)
        if not fmt and self.path.suffix.lower() in (".dcm", ".dicom"):  # type: ignore[union-attr]
            fmt = "dicom"  # a DICOM file without the part-10 preamble
        return fmt

    def to_proto(self) -> common_pb2.Image:
        data = self.read()
        return common_pb2.Image(
            data=data,
            format=format_to_proto(self.format or sniff_format(data)),
            modality=modality_to_proto(self.modality),
            view=view_to_proto(self.view),
        )


def _one(item: Any, method: str) -> Source:
    if isinstance(item, Image):
        return Source(data=item.data, format=item.format, modality=item.modality, view=item.view)
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        if not data:
            raise InvalidArgument("empty image bytes", method=method, field="images")
        return Source(data=data)
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.is_dir():
            raise InvalidArgument(
                f"{path.name!r} is a folder; use ingest_series for a DICOM series folder", method=method, field="images"
            )
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        return Source(path=path)
    if hasattr(item, "read"):
        data = item.read()
        if isinstance(data, str):
            raise TypeError("open image files in binary mode ('rb')")
        return Source(data=bytes(data))
    raise TypeError(
        f"an image must be a path, bytes, a binary file or lungsearch.client.Image, not {type(item).__name__}"
    )


def sources(images: Any, method: str) -> list[Source]:
    """Normalise ``images`` (one image or a list of them) to sources; None gives []."""
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image)) or hasattr(images, "read"):
        return [_one(images, method)]
    if isinstance(images, Iterable):
        return [_one(i, method) for i in images]
    return [_one(images, method)]


def series_sources(folder_or_files: Any, method: str) -> list[Source]:
    """The files of a DICOM series: a folder's image files (sorted by name), or the given files.

    Hidden files, DICOMDIR and obvious sidecars (``.txt``, ``.json``…) in a folder are skipped; the
    server sorts slices by position, so name order only makes the upload deterministic.
    """
    if isinstance(folder_or_files, (str, os.PathLike)) and Path(folder_or_files).is_dir():
        folder = Path(folder_or_files)
        files = sorted(
            p
            for p in folder.iterdir()
            if p.is_file()
            and not p.name.startswith(".")
            and p.name.upper() != "DICOMDIR"
            and p.suffix.lower() not in _NOT_IMAGES
        )
        if not files:
            raise InvalidArgument(f"no image files in folder {folder.name!r}", method=method, field="images")
        return [Source(path=p) for p in files]
    found = sources(folder_or_files, method)
    if not found:
        raise InvalidArgument("a series needs at least one image", method=method, field="images")
    return found


def report_proto(report: Any) -> common_pb2.Report | None:
    """A ``Report`` from text, a mapping with ``text``/``findings``/``impression``, or None."""
    if report is None:
        return None
    if isinstance(report, str):
        return common_pb2.Report(text=report)
    if isinstance(report, Mapping):
        unknown = set(report) - {"text", "findings", "impression"}
        if unknown:
            raise TypeError(f"unknown report field(s) {sorted(unknown)}; expected text, findings, impression")
        return common_pb2.Report(**{k: str(v) for k, v in report.items() if v is not None})
    if isinstance(report, common_pb2.Report):
        return report
    raise TypeError(f"report must be text or a mapping, not {type(report).__name__}")


def _labels(labels: Any) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str):
        return [labels]
    return [str(x) for x in labels]


def header(
    *, model: common_pb2.ModelRef, report: Any, labels: Any, source_id: str | None, images: Sequence[Source] = ()
) -> gateway_pb2.IngestRequest:
    """An ``IngestRequest`` (with the images inlined when given)."""
    return gateway_pb2.IngestRequest(
        model=model,
        images=[s.to_proto() for s in images],
        report=report_proto(report),
        labels=_labels(labels),
        source_id=source_id or "",
    )


def stream_messages(
    head: gateway_pb2.IngestRequest, items: Sequence[Source], chunk_bytes: int = CHUNK_BYTES
) -> Iterator[gateway_pb2.IngestStreamRequest]:
    """The ``IngestStream`` messages: the header (no images), then each image's chunks in order."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be in (0, {CHUNK_BYTES}]")
    yield gateway_pb2.IngestStreamRequest(header=head)
    for index, src in enumerate(items):
        fmt = format_to_proto(src.fmt())
        pending: bytes | None = None
        first = True
        # Look one chunk ahead so the final chunk of each image carries last=True.
        for block in src.chunks(chunk_bytes):
            if pending is not None:
                yield gateway_pb2.IngestStreamRequest(
                    chunk=gateway_pb2.ImageChunk(
                        image_index=index, data=pending, last=False, format=fmt if first else 0
                    )
                )
                first = False
            pending = block
        yield gateway_pb2.IngestStreamRequest(
            chunk=gateway_pb2.ImageChunk(image_index=index, data=pending or b"", last=True, format=fmt if first else 0)
        )


# ---- grpc.health.v1 on the wire, so the SDK needs no grpcio-health-checking -------------------
# HealthCheckRequest { string service = 1; }  HealthCheckResponse { ServingStatus status = 1; }
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
SERVE_HEALTHZ_METHOD = "/ray.serve.RayServeAPIService/Healthz"
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a serialized message; unknown wire types raise."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated message")
        yield number, wire, value


def health_request(service: str) -> bytes:
    """Serialized ``grpc.health.v1.HealthCheckRequest``."""
    raw = service.encode("utf-8")
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def parse_health_response(buf: bytes) -> str:
    """The ``ServingStatus`` name in a serialized ``HealthCheckResponse``."""
    status = 0
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            status = value
    return _SERVING_STATUS.get(status, "UNKNOWN")


def parse_serve_healthz(buf: bytes) -> str:
    """The message of a serialized ``ray.serve.HealthzResponse`` (``string message = 1``)."""
    message = ""
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            message = bytes(value).decode("utf-8", "replace")
    return message
