"""The client commands of `lungsearch`, run for real in a subprocess against a real local server."""

from __future__ import annotations

import json

import pytest

from lungsearch.cli._client import EXIT_AUTH, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE


@pytest.fixture
def tree(tmp_path, png, dicom):
    """Two PNG cases (one with a sidecar report), one DICOM series folder, one bad file, a manifest."""
    root = tmp_path / "cases"
    (root / "ct-0001").mkdir(parents=True)
    (root / "a.png").write_bytes(png(seed=1))
    (root / "a.txt").write_text("bilateral pleural effusion")
    (root / "b.png").write_bytes(png(seed=2))
    for i in range(3):
        (root / "ct-0001" / f"{i:03d}.dcm").write_bytes(dicom(bytes([i]) * 700_000))
    (root / "ct-0001" / "report.txt").write_text("ground-glass opacities")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNX-not-really")
    (tmp_path / "manifest.jsonl").write_text(
        json.dumps({"case_id": "m1", "image_paths": ["cases/b.png"], "labels": ["Normal"], "report": "clear"})
        + "\n"
        + json.dumps(
            {"case_id": "m2", "image_paths": [f"cases/ct-0001/{i:03d}.dcm" for i in range(3)], "labels": ["ggo"]}
        )
        + "\n"
    )
    return tmp_path


def test_ingest_folder_search_get_delete(cli, server, servicer, tree):
    t = ["--target", server.target]
    r = cli("ingest", str(tree / "cases"), "--labels", "Effusion", "--json", *t)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(row["ok"], row["series"], row["images"]) for row in rows] == [
        (True, False, 1),
        (True, False, 1),
        (True, True, 3),
    ]
    assert servicer.calls["IngestStream"] == 1 and servicer.calls["Ingest"] == 2
    series = servicer.store[rows[2]["case_key"]]
    assert series.report == "ground-glass opacities" and len(series.images) == 3
    assert servicer.store[rows[0]["case_key"]].report == "bilateral pleural effusion"  # sidecar <stem>.txt
    assert all(s.case.labels == ["Effusion"] for s in servicer.store.values())

    r = cli("search", "--report", "pleural effusion", "--top-k", "2", "--filter", "modality=cxr", *t)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("model: cxr-report@v1") and lines[1].split()[:3] == ["RANK", "SCORE", "CASE"]
    assert rows[0]["case_key"] in lines[3] and len(lines) == 5  # header, rule, 2 hits

    r = cli("search", "--image", str(tree / "cases" / "b.png"), "--json", *t)
    assert json.loads(r.stdout)["hits"][0]["case"]["case_key"] == rows[1]["case_key"]

    r = cli("get", rows[2]["case_key"], "--json", *t)
    assert r.returncode == 0 and json.loads(r.stdout)["num_images"] == 3
    assert cli("delete", rows[2]["case_key"], *t).returncode == 0
    r = cli("delete", rows[2]["case_key"], *t)
    assert r.returncode == EXIT_NOT_FOUND and "nothing deleted" in r.stdout
    r = cli("get", rows[2]["case_key"], *t)
    assert r.returncode == EXIT_NOT_FOUND and "unknown case key" in r.stderr


def test_ingest_rejects_a_bad_file_and_reads_manifests(cli, server, servicer, tree):
    t = ["--target", server.target]
    r = cli("ingest", str(tree / "cases" / "a.png"), str(tree / "bad.png"), "--json", *t)
    assert r.returncode == EXIT_INVALID
    rows = json.loads(r.stdout)
    assert rows[0]["ok"] and not rows[1]["ok"] and rows[1]["error"]["reason"] == "INVALID_IMAGE"
    assert "bad.png" in r.stderr
    r = cli("ingest", "--manifest", str(tree / "manifest.jsonl"), *t)
    assert r.returncode == 0, r.stderr
    assert "2/2 ingested" in r.stdout
    stored = {len(s.images): s for s in servicer.store.values() if s.case.labels in (["Normal"], ["ggo"])}
    assert stored[1].report == "clear" and stored[3].case.labels == ["ggo"]
    assert cli("ingest", str(tree / "missing.png"), *t).returncode == EXIT_NOT_FOUND
    assert cli("ingest", *t).returncode == EXIT_USAGE


def test_classify_explain_models_health(cli, server, tree, png, make_server):
    t = ["--target", server.target]
    assert cli("ingest", str(tree / "cases" / "a.png"), "--labels", "Effusion", *t).returncode == 0
    r = cli("classify", "--image", str(tree / "cases" / "a.png"), "--knn-k", "1", *t)
    assert r.returncode == 0, r.stderr
    assert "top label: Effusion" in r.stdout and "KNN VOTE" in r.stdout

    out = tree / "heat.png"
    r = cli(
        "explain", "--image", str(tree / "cases" / "a.png"), "--out", str(out), "--overlay", str(tree / "o.png"), *t
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(b"\x89PNG") and (tree / "o.png").read_bytes().startswith(b"\x89PNG")

    r = cli("models", *t)
    assert r.returncode == 0 and "cxr-report" in r.stdout and "phantom" in r.stdout
    r = cli("activate", "cxr-report@v2", "--json", *t)
    assert r.returncode == 0 and json.loads(r.stdout)["live"]["version"] == "v2"

    r = cli("health", *t)
    assert r.returncode == 0 and r.stdout.startswith("SERVING")
    server.health.set("", 2)  # NOT_SERVING
    assert cli("health", *t).returncode == EXIT_UNAVAILABLE
    dead = make_server()
    dead_target = dead.target
    dead.stop()
    r = cli("health", "--target", dead_target, "--timeout", "1", "--json")
    assert r.returncode == EXIT_UNAVAILABLE and json.loads(r.stdout)["error"]["status"] == "UNAVAILABLE"


def test_auth_flags_env_target_and_help(cli, server, servicer, tmp_path):
    servicer.behaviour.token = "tok-123"
    env = {"LUNGSEARCH_TARGET": server.target}
    r = cli("models", env=env)
    assert r.returncode == EXIT_AUTH and "missing bearer token" in r.stderr
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    assert cli("models", "--token-file", str(token_file), env=env).returncode == 0
    assert cli("models", env=dict(env, LUNGSEARCH_TOKEN="tok-123")).returncode == 0
    assert cli("models", "--token", "nope", env=env).returncode == EXIT_AUTH
    r = cli("search", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "lungsearch search --image" in r.stdout
    assert "exit codes:" in r.stdout
    r = cli("search", "--report", "x", "--filter", "colour=red", env=env)
    assert r.returncode == EXIT_USAGE and "unknown filter key" in r.stderr
