import pytest

from lungsearch._proto.v1 import common_pb2, gateway_pb2
from lungsearch.config import LimitsConfig
from lungsearch.errors import InvalidReportError, InvalidRequestError, LimitExceededError
from lungsearch.serving import limits

LIM = LimitsConfig(max_message_bytes=4096, max_image_bytes=2048, max_series_images=3, max_report_chars=50, max_top_k=20)


def _img(n):
    return common_pb2.Image(data=b"x" * n)


def test_message_size():
    ok = gateway_pb2.SearchRequest(images=[_img(100)])
    assert limits.check_message(ok, LIM) == ok.ByteSize()
    with pytest.raises(LimitExceededError) as e:
        limits.check_message(gateway_pb2.SearchRequest(images=[_img(2000)] * 3), LIM)
    assert e.value.grpc_status == "RESOURCE_EXHAUSTED"


def test_images():
    assert limits.check_images([_img(10)] * 3, LIM) == 3
    with pytest.raises(LimitExceededError):
        limits.check_images([_img(10)] * 4, LIM)
    with pytest.raises(LimitExceededError) as e:
        limits.check_images([_img(10), _img(3000)], LIM)
    assert e.value.field == "images[1]"
    with pytest.raises(InvalidRequestError):
        limits.check_images([], LIM)
    assert limits.check_images([], LIM, required=False) == 0
    with pytest.raises(InvalidRequestError):
        limits.check_images([_img(0)], LIM)


def test_report():
    assert limits.check_report(common_pb2.Report(findings="a", impression="b"), LIM) == "a\nb"
    assert limits.check_report(common_pb2.Report(text="line1\nline2\t."), LIM) == "line1\nline2\t."
    with pytest.raises(LimitExceededError):
        limits.check_report(common_pb2.Report(text="x" * 30, findings="y" * 30), LIM)
    with pytest.raises(InvalidReportError):
        limits.check_report(common_pb2.Report(text="bad\x00byte"), LIM)


@pytest.mark.parametrize("k,expect", [(0, 10), (1, 1), (20, 20)])
def test_top_k(k, expect):
    assert limits.check_top_k(k, LIM) == expect


def test_top_k_errors():
    with pytest.raises(InvalidRequestError):
        limits.check_top_k(-1, LIM)
    with pytest.raises(LimitExceededError):
        limits.check_top_k(21, LIM)


def test_labels_and_keys():
    assert limits.check_labels(["Nodule", "Nodule", "Lung Opacity"]) == ["Nodule", "Lung Opacity"]
    with pytest.raises(InvalidRequestError):
        limits.check_labels(["bad\nlabel"])
    with pytest.raises(LimitExceededError):
        limits.check_labels([f"l{i}" for i in range(65)])
    assert limits.check_case_key("ab" * 16) == "ab" * 16
    with pytest.raises(InvalidRequestError) as e:
        limits.check_case_key("PAT-12345 DOE")
    assert "DOE" not in str(e.value)


def _stream(*parts):
    out = []
    for p in parts:
        if isinstance(p, gateway_pb2.IngestRequest):
            out.append(gateway_pb2.IngestStreamRequest(header=p))
        else:
            out.append(gateway_pb2.IngestStreamRequest(chunk=p))
    return out


def test_chunk_assembler_reassembles_in_order():
    asm = limits.ChunkAssembler(LIM)
    parts = _stream(
        gateway_pb2.IngestRequest(labels=["ggo"], source_id="s1"),
        gateway_pb2.ImageChunk(image_index=0, data=b"ab", format=common_pb2.IMAGE_FORMAT_DICOM),
        gateway_pb2.ImageChunk(image_index=0, data=b"cd", last=True),
        gateway_pb2.ImageChunk(image_index=1, data=b"ef", last=True),
    )
    for p in parts:
        asm.add(p)
    req = asm.finish()
    assert [im.data for im in req.images] == [b"abcd", b"ef"]
    assert req.images[0].format == common_pb2.IMAGE_FORMAT_DICOM and list(req.labels) == ["ggo"]


@pytest.mark.parametrize(
    "parts,exc",
    [
        ([gateway_pb2.ImageChunk(image_index=0, data=b"a", last=True)], InvalidRequestError),  # no header
        ([gateway_pb2.IngestRequest(), gateway_pb2.ImageChunk(image_index=1, data=b"a")], InvalidRequestError),
        (
            [
                gateway_pb2.IngestRequest(),
                gateway_pb2.ImageChunk(image_index=0, data=b"a"),
                gateway_pb2.ImageChunk(image_index=1, data=b"b"),
            ],
            InvalidRequestError,
        ),  # image 0 not closed
        (
            [
                gateway_pb2.IngestRequest(),
                gateway_pb2.ImageChunk(image_index=0, data=b"x" * 1500),
                gateway_pb2.ImageChunk(image_index=0, data=b"x" * 1500),
            ],
            LimitExceededError,
        ),
        (
            [gateway_pb2.IngestRequest()]
            + [gateway_pb2.ImageChunk(image_index=i, data=b"x", last=True) for i in range(4)],
            LimitExceededError,
        ),
        ([gateway_pb2.IngestRequest(), gateway_pb2.IngestRequest()], InvalidRequestError),
        ([gateway_pb2.IngestRequest(images=[common_pb2.Image(data=b"a")])], InvalidRequestError),
    ],
)
def test_chunk_assembler_refuses_bad_streams(parts, exc):
    asm = limits.ChunkAssembler(LIM)
    with pytest.raises(exc):
        for p in _stream(*parts):
            asm.add(p)


def test_chunk_assembler_total_and_truncation():
    lim = LimitsConfig(max_message_bytes=2048, max_image_bytes=2048, max_series_images=10)
    asm = limits.ChunkAssembler(lim)
    asm.add(gateway_pb2.IngestStreamRequest(header=gateway_pb2.IngestRequest()))
    asm.add(gateway_pb2.IngestStreamRequest(chunk=gateway_pb2.ImageChunk(image_index=0, data=b"x" * 2000, last=True)))
    with pytest.raises(LimitExceededError):
        asm.add(gateway_pb2.IngestStreamRequest(chunk=gateway_pb2.ImageChunk(image_index=1, data=b"x" * 100)))
    asm2 = limits.ChunkAssembler(lim)
    asm2.add(gateway_pb2.IngestStreamRequest(header=gateway_pb2.IngestRequest()))
    asm2.add(gateway_pb2.IngestStreamRequest(chunk=gateway_pb2.ImageChunk(image_index=0, data=b"x")))
    with pytest.raises(InvalidRequestError):
        asm2.finish()
