"""ExplainMatch against a real server (the web tests' session app): the SDK (sync and async), the CLI
and the errors. Models are untrained (synthetic phantoms): these tests check what the RPC returns and
how it is tied to the stored case, not how good a heat map is."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _png_ok(data: bytes, mode: str) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.mode == mode
    return np.asarray(im)


@pytest.fixture(scope="module")
def client(web_app):
    from lungsearch.client import LungSearchClient

    with LungSearchClient(web_app.target, token=web_app.read_token, timeout=120) as c:
        yield c


def test_explain_match_cxr(web_app, client):
    q = web_app.data["cxr"][0]
    hits = client.search(image=q["image_paths"][0], report=q["report"], top_k=3, model="cxr-hash")
    assert len(hits) == 3
    hit = hits[0]
    m = client.explain_match(hit.case.case_key, image=q["image_paths"][0], report=q["report"], model="cxr-hash")
    assert m.case.case_key == hit.case.case_key and m.case.labels == hit.case.labels
    targets = next(x for x in client.models(profile="cxr-hash") if x.live).targets
    assert m.label in targets
    assert set(m.shared_labels) <= set(m.case.labels) & set(m.query_labels)
    assert m.case_image_available
    for png in (m.query_heatmap_png, m.case_heatmap_png):
        assert _png_ok(png, "L").shape == (64, 64)
    for png in (m.query_overlay_png, m.case_overlay_png):
        assert _png_ok(png, "RGB").shape == (64, 64, 3)
    # every span indexes its phrase's words in the excerpts the response carries
    from lungsearch.web.match import tokens

    for p in m.shared_phrases:
        for text, spans in ((m.query_excerpt, p.query_spans), (m.case.report_excerpt, p.case_spans)):
            assert spans
            for a, b in spans:
                words = [w for w, _, _ in tokens(text[a:b])]
                assert words[0] == p.phrase.split()[0] and words[-1] == p.phrase.split()[-1]


def test_explain_match_shares_phrases_with_an_identical_report(web_app, client):
    """A query whose report is the stored case's own excerpt shares its content words."""
    rec = web_app.data["cxr"][10]
    hit = client.search(image=rec["image_paths"][0], top_k=1, model="cxr-hash")[0]
    case = client.get_case(hit.case.case_key, model="cxr-hash")
    m = client.explain_match(case.case_key, image=rec["image_paths"][0], report=case.report_excerpt, model="cxr-hash")
    if case.report_excerpt.strip():
        assert m.shared_phrases, "identical excerpts must share phrases"
    assert m.query_excerpt == case.report_excerpt


def test_explain_match_ct_and_label(web_app, client):
    q = web_app.data["ct"][0]
    hit = client.search(images=q["image_paths"], top_k=1, model="ct-ild")[0]
    m = client.explain_match(hit.case.case_key, images=q["image_paths"], label="ggo", model="ct-ild")
    assert m.label == "ggo"
    assert m.case_image_available and m.case_overlay_png and m.query_overlay_png


def test_explain_match_async(web_app):
    from lungsearch.client import AsyncLungSearchClient

    q = web_app.data["cxr"][1]

    async def go():
        async with AsyncLungSearchClient(web_app.target, token=web_app.read_token, timeout=120) as c:
            hit = (await c.search(image=q["image_paths"][0], top_k=1, model="cxr-hash"))[0]
            return hit, await c.explain_match(hit.case.case_key, image=q["image_paths"][0], model="cxr-hash")

    hit, m = asyncio.run(go())
    assert m.case.case_key == hit.case.case_key and m.case_overlay_png


def test_explain_match_errors(web_app, client):
    from lungsearch.client import InvalidArgument, LungSearchClient, NotFound, Unauthenticated

    q = web_app.data["cxr"][0]["image_paths"][0]
    with pytest.raises(NotFound):
        client.explain_match("0" * 32, image=q, model="cxr-hash")
    hit = client.search(image=q, top_k=1, model="cxr-hash")[0]
    with pytest.raises(InvalidArgument):
        client.explain_match(hit.case.case_key, image=q, label="NotALabel", model="cxr-hash")
    with pytest.raises(InvalidArgument):
        client.explain_match(hit.case.case_key, model="cxr-hash")  # no query at all (refused client-side)
    with LungSearchClient(web_app.target, timeout=30) as anon, pytest.raises(Unauthenticated):
        anon.explain_match(hit.case.case_key, image=q, model="cxr-hash")


def test_cli_explain_match(web_app, client, tmp_path, capsys):
    from lungsearch.cli import main

    q = web_app.data["cxr"][2]["image_paths"][0]
    key = client.search(image=q, top_k=1, model="cxr-hash")[0].case.case_key
    out = tmp_path / "why.png"
    rc = main(
        [
            "explain",
            "--target",
            web_app.target,
            "--token",
            web_app.read_token,
            "--model",
            "cxr-hash",
            "--image",
            q,
            "--match",
            key,
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["case"]["case_key"] == key and doc["case_image_available"]
    assert out.exists() and (tmp_path / "why-case.png").exists()
