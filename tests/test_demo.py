"""`make demo`'s main job (lungsearch.demo.run_demo) end to end on tiny phantoms: every profile
trained and evaluated on the shared local Ray, four indexed into a real milvus-lite file, Serve with
gRPC, the example queries through the SDK; then a second run that reuses everything.

The full-size demo is timed by hand (README); this keeps the whole path green in CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungsearch import constants

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = ["data.phantom.n=40", "data.phantom.size=64", "data.image_size=64", "train.epochs=1"]


def test_demo_end_to_end_then_cached(ray_cluster, tmp_path, monkeypatch):
    import ray

    from lungsearch.config import load_profile
    from lungsearch.data import load_records
    from lungsearch.demo import DEMO_PROFILES, SERVED_PROFILES, run_demo

    art, work = tmp_path / "artifacts", tmp_path / "demo"
    monkeypatch.setattr(constants, "ARTIFACTS_DIR", art)
    monkeypatch.setattr(constants, "HMAC_KEY_FILE", tmp_path / "hmac.key")
    overrides = [*TINY, f"data.root={tmp_path / 'phantoms'}", f"train.storage_path={tmp_path / 'runs'}"]
    lines: list[str] = []
    res = run_demo(workdir=work, registry_root=str(art), overrides=overrides, echo=lines.append)

    summary = json.loads((work / "summary.json").read_text())
    assert summary == json.loads(json.dumps(res.to_dict(), default=str)) and summary["synthetic_data"] is True
    for p in DEMO_PROFILES:
        m = summary["models"][p]
        assert m["reused"] is False and m["synthetic_data"] is True
        # The summary's figures are the ones this run's evaluation wrote, not constants.
        doc = json.loads((Path(m["report_dir"]) / "metrics.json").read_text())
        written = {k: float(v) for k, v in doc.get("metrics", doc).items() if isinstance(v, (int, float))}
        assert m["metrics"] == written and written
    for p in SERVED_PROFILES:
        n = len(load_records(load_profile(p, overrides).data))
        assert summary["index"][p]["cases"] == n and summary["index"][p]["reused"] is False

    q = summary["queries"]
    for name in ("image_query", "image_report_query", "report_query", "ct_series"):
        assert q[name]["hits"], name
    # The query image is in the index: it comes back first, with Hamming distance 0.
    assert q["image_query"]["hits"][0]["hamming"] == 0
    assert set(q["classify"]["probabilities"]) == set(load_profile("cxr-report").data.targets)
    assert Path(q["explain"]["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The DICOM series was indexed by build_index already: ingesting it again is the same case.
    assert q["ct_series"]["ingested_key_created"] is False
    assert q["bad_file"]["rejected"] is True and q["bad_file"]["status"] == "INVALID_ARGUMENT"
    assert q["bad_file"]["store_unchanged"] is True
    text = "\n".join(lines)
    assert "SYNTHETIC" in text and "summary:" in text
    # training shows one line per epoch with the time left (it used to be silent for minutes)
    assert any(x.startswith("[train]   ") and " left" in x for x in lines), "no epoch progress lines"
    # The demo leaves a Ray it did not start running (only its Serve application is gone).
    assert ray.is_initialized()
    _serve_again_serves_what_the_demo_built(lines, work, summary)

    again = run_demo(workdir=work, registry_root=str(art), overrides=overrides, echo=lambda _: None)
    assert all(m["reused"] for m in again.models.values())
    assert all(v["reused"] for v in again.index.values())
    assert again.index["ct-ild"]["cases"] == summary["index"]["ct-ild"]["cases"]  # no second copy
    assert again.queries["ct_series"]["ingested_key_created"] is False


def _serve_again_serves_what_the_demo_built(lines, work, summary):
    """The README's next step: the command the demo prints deploys a config whose store is the file
    the demo indexed, holding every served profile's cases (it used to open data/lungsearch.db)."""
    import shlex

    from lungsearch.cli import build_parser
    from lungsearch.cli._serve import build_config
    from lungsearch.store import MilvusStore

    line = next(x for x in lines if x.startswith("serve it again: "))
    argv = shlex.split(line.split(": ", 1)[1])
    assert argv[:2] == ["lungsearch", "serve"]
    args = dict(build_config(build_parser().parse_args(argv[1:]))["applications"][0]["args"])
    assert Path(args["milvus_uri"]).resolve() == (work / "lungsearch.db").resolve()
    assert sorted(args["profiles"]) == sorted(summary["index"])
    assert Path(args["hmac_key_file"]).resolve() == Path(constants.HMAC_KEY_FILE).resolve()
    with MilvusStore(args["milvus_uri"]) as store:
        for p, idx in summary["index"].items():
            version = summary["models"][p]["model"].split("@", 1)[1]
            assert store.count(p, version) == idx["cases"] > 0
