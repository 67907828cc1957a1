"""Request limits the gateway enforces (Serve's own gRPC limit is 2 GB; ours are the profile's
``serve.limits``). Each check raises the library error whose status says why:
``LimitExceededError`` -> RESOURCE_EXHAUSTED (too big / too many), ``InvalidRequestError`` /
``InvalidReportError`` -> INVALID_ARGUMENT (malformed). All checks run before any pixel is decoded.
"""

from __future__ import annotations

import re
from typing import Iterable

from lungsearch._proto.v1 import common_pb2, gateway_pb2
from lungsearch.config import LimitsConfig
from lungsearch.errors import InvalidReportError, InvalidRequestError, LimitExceededError

__all__ = [
    "DEFAULT_TOP_K",
    "MAX_LABELS",
    "check_message",
    "check_images",
    "check_report",
    "check_top_k",
    "check_labels",
    "check_case_key",
    "check_source_id",
    "report_text",
    "ChunkAssembler",
]

DEFAULT_TOP_K = 10
MAX_LABELS = 64
_MAX_LABEL_CHARS = 64
_LABEL_RE = re.compile(r"^[\w .,()/+'-]{1,64}$")
_CASE_KEY_RE = re.compile(r"^[0-9a-f]{16,64}$")


def check_message(request, limits: LimitsConfig) -> int:
    """The request's serialized size; RESOURCE_EXHAUSTED past ``max_message_bytes``."""
    size = request.ByteSize()
    if size > limits.max_message_bytes:
        raise LimitExceededError(
            f"request of {size} bytes exceeds the limit of {limits.max_message_bytes}", code="message_bytes"
        )
    return size


def check_images(images: Iterable[common_pb2.Image], limits: LimitsConfig, *, required: bool = True) -> int:
    """Image count and per-image byte size; returns the count.

    Raises:
        InvalidRequestError: no image when one is required, or an empty image.
        LimitExceededError: more than ``max_series_images`` images, or an image over ``max_image_bytes``.
    """
    images = list(images)
    if required and not images:
        raise InvalidRequestError("no image in the request", code="no_image", field="images")
    if len(images) > limits.max_series_images:
        raise LimitExceededError(
            f"{len(images)} images exceed the series limit of {limits.max_series_images}",
            code="series_images",
            field="images",
        )
    for i, im in enumerate(images):
        if not im.data:
            raise InvalidRequestError(f"images[{i}] is empty", code="empty_image", field=f"images[{i}]")
        if len(im.data) > limits.max_image_bytes:
            raise LimitExceededError(
                f"images[{i}] of {len(im.data)} bytes exceeds {limits.max_image_bytes}",
                code="image_bytes",
                field=f"images[{i}]",
            )
    return len(images)


def report_text(report: common_pb2.Report) -> str:
    """The report as one text: ``text`` when set, else findings + impression."""
    if report.text:
        return report.text
    parts = [p for p in (report.findings, report.impression) if p]
    return "\n".join(parts)


def check_report(report: common_pb2.Report, limits: LimitsConfig) -> str:
    """The report text (may be ""), checked.

    Raises:
        LimitExceededError: longer than ``max_report_chars`` (all sections together).
        InvalidReportError: control characters other than newlines and tabs.
    """
    total = len(report.text) + len(report.findings) + len(report.impression)
    if total > limits.max_report_chars:
        raise LimitExceededError(
            f"report of {total} characters exceeds {limits.max_report_chars}", code="report_chars", field="report"
        )
    text = report_text(report)
    if any(ord(c) < 32 and c not in "\n\r\t" for c in text):
        raise InvalidReportError("report contains control characters", code="report_control_chars", field="report")
    return text


def check_top_k(top_k: int, limits: LimitsConfig, *, field: str = "top_k") -> int:
    """0 -> 10; negative -> INVALID_ARGUMENT; over ``max_top_k`` -> RESOURCE_EXHAUSTED."""
    if top_k < 0:
        raise InvalidRequestError(f"{field} must be >= 0", code="top_k", field=field)
    k = top_k or DEFAULT_TOP_K
    if k > limits.max_top_k:
        raise LimitExceededError(f"{field}={k} exceeds the limit of {limits.max_top_k}", code="top_k", field=field)
    return k


def check_labels(labels: Iterable[str]) -> list[str]:
    """At most 64 labels of 1-64 plain characters, de-duplicated in order."""
    labels = list(labels)
    if len(labels) > MAX_LABELS:
        raise LimitExceededError(f"{len(labels)} labels exceed {MAX_LABELS}", code="labels", field="labels")
    out: list[str] = []
    for i, lab in enumerate(labels):
        if not _LABEL_RE.match(lab):
            raise InvalidRequestError(
                f"labels[{i}] must be 1-{_MAX_LABEL_CHARS} plain characters", code="label", field=f"labels[{i}]"
            )
        if lab not in out:
            out.append(lab)
    return out


def check_case_key(key: str, *, field: str = "case_key") -> str:
    if not _CASE_KEY_RE.match(key or ""):
        # The value itself is not echoed: a caller might paste a raw identifier here.
        raise InvalidRequestError(f"{field} must be a lungsearch case key (hex)", code="case_key", field=field)
    return key


def check_source_id(source_id: str) -> str:
    if len(source_id) > 256:
        raise LimitExceededError("source_id longer than 256 characters", code="source_id", field="source_id")
    return source_id


class ChunkAssembler:
    """Reassemble an ``IngestStream`` (header, then image chunks) into one ``IngestRequest``,
    enforcing the limits as bytes arrive (a hostile stream is refused before it is buffered).

    Example::

        asm = ChunkAssembler(limits)
        async for part in stream:
            asm.add(part)
        request = asm.finish()
    """

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.header: gateway_pb2.IngestRequest | None = None
        self._images: list[bytearray] = []
        self._formats: list[int] = []
        self._closed: list[bool] = []
        self._total = 0

    def add(self, part: gateway_pb2.IngestStreamRequest) -> None:
        which = part.WhichOneof("part")
        if which == "header":
            if self.header is not None:
                raise InvalidRequestError("second header in the stream", code="stream_header", field="header")
            if part.header.images:
                raise InvalidRequestError(
                    "the header must not carry images; send chunks", code="stream_header", field="header.images"
                )
            self.header = gateway_pb2.IngestRequest()
            self.header.CopyFrom(part.header)
            self._total += self.header.ByteSize()
            return
        if which != "chunk":
            raise InvalidRequestError("empty stream message", code="stream_part")
        if self.header is None:
            raise InvalidRequestError("the first stream message must be the header", code="stream_order")
        c = part.chunk
        idx = c.image_index
        n = len(self._images)
        if idx == n:  # a new image
            if n and not self._closed[-1]:
                raise InvalidRequestError(
                    f"image {n - 1} not finished before image {idx}",
                    code="stream_order",
                    field=f"chunk.image_index={idx}",
                )
            if n + 1 > self.limits.max_series_images:
                raise LimitExceededError(f"more than {self.limits.max_series_images} images", code="series_images")
            self._images.append(bytearray())
            self._formats.append(c.format)
            self._closed.append(False)
        elif idx != n - 1 or self._closed[idx]:
            raise InvalidRequestError(
                "chunks must arrive in image order", code="stream_order", field=f"chunk.image_index={idx}"
            )
        buf = self._images[idx]
        if len(buf) + len(c.data) > self.limits.max_image_bytes:
            raise LimitExceededError(
                f"image {idx} exceeds {self.limits.max_image_bytes} bytes", code="image_bytes", field=f"images[{idx}]"
            )
        self._total += len(c.data)
        if self._total > self.limits.max_message_bytes:
            raise LimitExceededError(f"stream exceeds {self.limits.max_message_bytes} bytes", code="message_bytes")
        buf.extend(c.data)
        if c.last:
            self._closed[idx] = True

    def finish(self) -> gateway_pb2.IngestRequest:
        if self.header is None:
            raise InvalidRequestError("empty stream: no header", code="stream_header")
        if not self._images:
            raise InvalidRequestError("stream carried no image", code="no_image", field="images")
        if not all(self._closed):
            raise InvalidRequestError("stream ended inside an image (no last chunk)", code="stream_truncated")
        req = gateway_pb2.IngestRequest()
        req.CopyFrom(self.header)
        for data, fmt in zip(self._images, self._formats):
            req.images.add(data=bytes(data), format=fmt)
        return req
