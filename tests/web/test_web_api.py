"""The page's JSON API over HTTP against the session app: the token gate, error mapping, headers,
and the same answers as gRPC. Plus the request parsing helpers (pure)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lungsearch._proto.v1 import common_pb2
from lungsearch.errors import InvalidRequestError
from lungsearch.web.app import _enum_tail, case_json, filter_from_json, query_from_json


def test_query_and_filter_from_json():
    ref, images, report = query_from_json(
        {
            "profile": "ct-ild@v1",
            "report": "r",
            "images": [{"data": base64.b64encode(b"abc").decode(), "format": "dicom"}],
        }
    )
    assert (ref.profile, ref.version, report.text) == ("ct-ild", "v1", "r")
    assert images[0].data == b"abc" and images[0].format == common_pb2.IMAGE_FORMAT_DICOM
    f = filter_from_json({"modality": "CT", "view": "axial", "labels_any": "ggo, normal", "labels_none": ["x"]})
    assert f.modality == common_pb2.MODALITY_CT and f.view == common_pb2.VIEW_AXIAL
    assert list(f.labels_any) == ["ggo", "normal"] and list(f.labels_none) == ["x"]
    assert filter_from_json(None) == common_pb2.Filter()
    for bad in ({"images": [{"data": "not base64!"}]}, {"images": "x"}, {"profile": 3}, [], {"report": 1}):
        with pytest.raises(InvalidRequestError):
            query_from_json(bad)
    with pytest.raises(InvalidRequestError):
        filter_from_json({"modality": "xray"})


def test_case_json_names():
    c = common_pb2.Case(case_key="ab", modality=common_pb2.MODALITY_CXR, labels=["A"])
    j = case_json(c)
    assert (j["modality"], j["view"], j["labels"]) == ("cxr", "", ["A"])
    assert _enum_tail("VIEW_LATERAL", "view_") == "lateral"


def _call(url, token=None, body=None):
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return (
                r.status,
                dict(r.headers),
                json.loads(r.read() or b"null") if "json" in r.headers.get("content-type", "") else None,
            )
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


@pytest.mark.ray
@pytest.mark.slow
def test_http_api(web_app):
    base = web_app.http
    status, headers, _ = _call(base)
    assert (
        status == 200
        and headers["cache-control"] == "no-store"
        and "script-src 'self'" in headers["content-security-policy"]
    )
    assert _call(base + "api/models")[0] == 401
    assert _call(base + "api/models", token="wrong-token-wrong-token")[0] == 401
    status, _, doc = _call(base + "api/models", token=web_app.read_token)
    assert status == 200 and {m["profile"] for m in doc["models"]} == {"cxr-hash", "ct-ild"}
    q = web_app.data["cxr"][0]
    img = {"data": base64.b64encode(Path(q["image_paths"][0]).read_bytes()).decode(), "format": "png"}
    status, _, doc = _call(
        base + "api/search", web_app.read_token, {"profile": "cxr-hash", "images": [img], "top_k": 3}
    )
    assert status == 200 and len(doc["hits"]) == 3 and doc["query"]["slices"]
    # the same hits as the gRPC API
    from lungsearch.client import LungSearchClient

    with LungSearchClient(web_app.target, token=web_app.read_token, timeout=120) as c:
        grpc_keys = [h.case.case_key for h in c.search(image=q["image_paths"][0], top_k=3, model="cxr-hash")]
    assert [h["case"]["case_key"] for h in doc["hits"]] == grpc_keys
    # filters reach the ranking: labels_none excludes what it names
    lab = doc["hits"][0]["case"]["labels"][0]
    status, _, f = _call(
        base + "api/search",
        web_app.read_token,
        {"profile": "cxr-hash", "images": [img], "top_k": 5, "filter": {"labels_none": [lab]}},
    )
    assert status == 200 and all(lab not in h["case"]["labels"] for h in f["hits"])
    status, _, e = _call(
        base + "api/explain_match",
        web_app.read_token,
        {"profile": "cxr-hash", "images": [img], "case_key": doc["hits"][0]["case"]["case_key"]},
    )
    assert status == 200 and e["case_overlay_png"] and e["query_overlay_png"]
    status, _, cls = _call(base + "api/classify", web_app.read_token, {"profile": "cxr-hash", "images": [img]})
    assert status == 200 and cls["probabilities"] and cls["radiomics_roi"] is None  # cxr-hash has no radiomics
    status, _, rec = _call(base + f"api/case/{doc['hits'][0]['case']['case_key']}?profile=cxr-hash", web_app.read_token)
    assert status == 200 and rec["slices"]
    # errors are mapped, PHI-free, and never a traceback
    status, _, err = _call(
        base + "api/explain_match", web_app.read_token, {"profile": "cxr-hash", "images": [img], "case_key": "0" * 32}
    )
    assert status == 404 and err["error"]["code"] == "NOT_FOUND"
    status, _, err = _call(base + "api/search", web_app.read_token, {"profile": "cxr-hash", "images": [{"data": "@@"}]})
    assert status == 400 and "Traceback" not in json.dumps(err)
    status, _, err = _call(
        base + "api/search",
        web_app.read_token,
        {"profile": "cxr-hash", "images": [{"data": base64.b64encode(b"not an image").decode()}]},
    )
    assert status == 400 and err["error"]["reason"] == "INVALID_IMAGE"
    # every page call that reads cases is in the gateway's audit trail, under the token's name, with
    # its outcome, as the gRPC calls are (and a refused token too)
    assert _call(base + "api/search", "wrong-token-wrong-token", {"profile": "cxr-hash", "images": [img]})[0] == 401
    lines = [json.loads(x) for x in (web_app.workdir / "audit" / "gateway.jsonl").read_text().splitlines() if x]
    viewer = [(x["event"], x["outcome"]) for x in lines if x.get("who") == "viewer"]
    for seen in (
        ("search", "ok"),
        ("classify", "ok"),
        ("explain", "ok"),
        ("get_case", "ok"),
        ("explain", "not_found"),
        ("search", "invalid_image"),
    ):
        assert seen in viewer, (seen, viewer[-12:])
    assert ("search", "unauthenticated") in [(x["event"], x["outcome"]) for x in lines if x.get("who") == "anonymous"]
    searches = [x for x in lines if x.get("who") == "viewer" and x["event"] == "search" and x["outcome"] == "ok"]
    assert {x.get("hits") for x in searches} >= {3}  # the answer's facts, as on the gRPC path
