"""The gateway's audit lines (lungsearch.serving.audit) without Ray: fields per RPC, refusals of
free text, and that a broken log never breaks the call it describes."""

from __future__ import annotations

import asyncio
import json

from lungsearch._proto.v1 import common_pb2, gateway_pb2
from lungsearch.serving.audit import AUDITED, GatewayAudit, audit_fields


def _ref(profile="ct-ild", version="20260101-000000-abcdef"):
    return common_pb2.ModelRef(profile=profile, version=version)


def test_fields_per_method():
    ingest = gateway_pb2.IngestRequest(
        model=common_pb2.ModelRef(profile="ct-ild"),
        images=[common_pb2.Image(data=b"x")] * 3,
        report=common_pb2.Report(text="Dr. Smith saw it"),
        source_id="MRN-123",
    )
    got = audit_fields("Ingest", ingest, gateway_pb2.IngestResponse(case_key="a" * 32, model=_ref()))
    assert got == {"model": "ct-ild@20260101-000000-abcdef", "case_key": "a" * 32, "images": 3}
    search = gateway_pb2.SearchRequest(model=common_pb2.ModelRef(profile="ct-ild"), top_k=5)
    resp = gateway_pb2.SearchResponse(model=_ref(), hits=[gateway_pb2.SearchHit()] * 2)
    assert audit_fields("Search", search, resp) == {"model": "ct-ild@20260101-000000-abcdef", "hits": 2, "top_k": 5}
    assert audit_fields("Search", search, None) == {"model": "ct-ild"}  # a failed call: the model asked for
    get = gateway_pb2.GetCaseRequest(model=common_pb2.ModelRef(profile="ct-ild"), case_key="b" * 32)
    assert audit_fields("GetCase", get, None)["case_key"] == "b" * 32
    assert set(AUDITED.values()) <= set(__import__("lungsearch.pacs.audit", fromlist=["EVENTS"]).EVENTS)


def test_lines_are_written_and_nothing_free_text_gets_in(tmp_path):
    audit = GatewayAudit(tmp_path / "audit" / "gateway.jsonl")
    req = gateway_pb2.IngestRequest(
        model=common_pb2.ModelRef(profile="ct-ild"),
        images=[common_pb2.Image(data=b"x")],
        report=common_pb2.Report(text="Patient John Doe"),
        source_id="MRN-123",
    )
    asyncio.run(
        audit.record("Ingest", "bridge", "ok", req, gateway_pb2.IngestResponse(case_key="c" * 32, model=_ref()))
    )
    asyncio.run(audit.record("Health", "bridge", "ok", req, None))  # not an audited RPC: no line
    # an unsafe value (a token name with free text) is refused by the log: the call is not broken
    asyncio.run(audit.record("Search", "Dr. <John Doe>; DOB 1950", "ok", req, None))
    text = (tmp_path / "audit" / "gateway.jsonl").read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    assert [(ln["event"], ln["who"], ln["case_key"]) for ln in lines] == [("ingest", "bridge", "c" * 32)]
    assert "John" not in text and "MRN-123" not in text
    assert oct((tmp_path / "audit" / "gateway.jsonl").stat().st_mode & 0o777) == "0o600"
