"""`lungsearch.jobs` and `lungsearch jobs`: entrypoints, runtime_env, token handling, and a real
job submitted over HTTP to a separate local Ray head (its own temp dir, ports and token; it never
touches the session-scoped ``ray_cluster``)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from _ports import free_port

from lungsearch.cli import main as cli_main
from lungsearch.errors import ConfigError, InvalidRequestError, UnauthenticatedError
from lungsearch.jobs import REPO_ROOT, JobsClient, build_entrypoint, build_runtime_env, job_summary, resolve_token


def test_entrypoint_and_runtime_env(tmp_path):
    ep = build_entrypoint(
        "train", str(REPO_ROOT / "configs" / "cxr-cnn.yaml"), overrides=["train.epochs=2"], args=["--folds", "4"]
    )
    assert ep == "python ray_jobs/train.py --config configs/cxr-cnn.yaml --folds 4 train.epochs=2"
    assert build_entrypoint("build-index", "ct-ild").endswith("build_index.py --config ct-ild")
    with pytest.raises(InvalidRequestError):
        build_entrypoint("rm", "ct-ild")
    outside = tmp_path / "mine.yaml"
    outside.write_text("x: 1")
    with pytest.raises(ConfigError, match="outside"):
        build_entrypoint("train", str(outside))

    env = build_runtime_env(env_vars={"LUNGSEARCH_MILVUS_URI": "http://m:19530"})
    assert env["working_dir"] == str(REPO_ROOT)
    assert {"/.venv", "/data", "/artifacts"} <= set(env["excludes"])
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1" and env["env_vars"]["LUNGSEARCH_MILVUS_URI"] == "http://m:19530"
    assert "pip" not in env
    locked = build_runtime_env(pip="lock")["pip"]["packages"]
    assert any(p.startswith("ray") for p in locked) and not any(p.startswith("#") for p in locked)
    assert build_runtime_env(pip=["tqdm==4.67.1"])["pip"]["packages"] == ["tqdm==4.67.1"]


def test_job_summary_is_the_last_json_object():
    out = 'INFO start\n{"epoch": 1}\n{\n  "model": "cxr-cnn@v1",\n  "metrics": {"acc": 0.5}\n}\nINFO ray: {not json\n'
    assert job_summary(out) == {"model": "cxr-cnn@v1", "metrics": {"acc": 0.5}}
    assert job_summary('{"only": true}') == {"only": True}
    assert job_summary("no summary\n[1, 2]\n") == {}


def test_token_resolution_order(tmp_path, monkeypatch):
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "nohome")
    assert resolve_token("explicit", env={"RAY_AUTH_TOKEN": "env"}) == "explicit"
    assert resolve_token(None, env={"RAY_AUTH_TOKEN": "env", "RAY_AUTH_TOKEN_PATH": str(f)}) == "env"
    assert resolve_token(None, env={"RAY_AUTH_TOKEN_PATH": str(f)}) == "from-file"
    assert resolve_token(None, env={}) is None


def test_token_mode_without_token_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    with pytest.raises(UnauthenticatedError):
        JobsClient("http://127.0.0.1:1", auth_mode="token")
    with pytest.raises(ConfigError):
        JobsClient("127.0.0.1:6379")


def test_cli_dry_run(capsys):
    rc = cli_main(
        [
            "jobs",
            "submit",
            "train",
            "--config",
            "configs/ct-ild.yaml",
            "train.epochs=1",
            "--dry-run",
            "--env",
            "A=b",
            "--folds",
            "5",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["entrypoint"] == "python ray_jobs/train.py --config configs/ct-ild.yaml --folds 5 train.epochs=1"
    assert out["runtime_env"]["env_vars"]["A"] == "b"


@pytest.fixture(scope="module")
def ray_head():
    """A separate Ray head with token auth and the dashboard on 127.0.0.1, torn down by pid."""
    ray_bin = Path(sys.executable).with_name("ray")
    token = secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="lsj-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    dash, gcs = free_port(), free_port()
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    )
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--num-cpus",
        "1",
        "--temp-dir",
        str(tmp),
        "--disable-usage-stats",
        "--include-dashboard",
        "true",
        # Own agent ports: Ray's defaults (e.g. 52365) are taken by the session's other Ray cluster,
        # and a head whose job agent cannot bind answers "No available agent to submit job".
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
    ]
    log = open(tmp / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except OSError as exc:
                if getattr(exc, "code", None) in (401, 403):
                    break  # dashboard up and demanding the token
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("ray head did not start: " + (tmp / "head.log").read_text()[-2000:]) from None
                time.sleep(1)
        yield url, token
    finally:
        # The head runs in its own session: signal only that process group (never `ray stop`,
        # which would kill every Ray on the machine, other tests' included).
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            # `ray start --block` took the whole 30 s it was given to exit on SIGTERM (CI durations):
            # the group is killed after a short grace, as a node loss would end it anyway.
            proc.wait(timeout=8)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_submit_real_job_with_token(ray_head, monkeypatch, tmp_path):
    url, token = ray_head
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setattr(Path, "home", lambda: tmp_path)  # no ~/.ray/auth_token to fall back on

    # Wrong token: refused with a typed error, not a traceback.
    with pytest.raises(UnauthenticatedError):
        JobsClient(url, token="not-the-token").submit_entrypoint("true")

    jobs = JobsClient(url, token=token)
    # The job imports lungsearch from the uploaded working_dir and reads a profile from it.
    code = "import lungsearch.config as c; print('profile=' + c.load_profile('cxr-cnn').profile)"
    job_id = jobs.submit_entrypoint(f"python -c {json.dumps(code)}")
    text = "".join(jobs.follow(job_id))
    info = jobs.wait(job_id, timeout=120)
    assert info.status == "SUCCEEDED", jobs.logs(job_id)[-2000:]
    assert "profile=cxr-cnn" in text
    assert "profile=cxr-cnn" in jobs.logs(job_id)

    # The CLI with a token file, and stop on a long job.
    tok_file = tmp_path / "tok"
    tok_file.write_text(token)
    long_id = jobs.submit_entrypoint("python -c 'import time; time.sleep(600)'")
    assert cli_main(["jobs", "stop", "--address", url, "--token-file", str(tok_file), long_id]) == 0
    assert jobs.wait(long_id, timeout=60).status == "STOPPED"
    assert cli_main(["jobs", "status", "--address", url, "--token-file", str(tok_file), job_id]) == 0


def test_the_uploaded_package_holds_every_lungsearch_module_and_no_data(tmp_path):
    """What Ray actually zips with these excludes (its own packaging code, gitignore syntax): every
    tracked ``lungsearch/**.py`` (``lungsearch/data`` once fell to the bare ``data`` pattern), and none
    of the repository-root data, artifacts or environments."""
    import subprocess
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    zpath = tmp_path / "pkg.zip"
    create_package(
        str(REPO_ROOT),
        zpath,
        include_parent_dir=False,
        excludes=build_runtime_env()["excludes"],
        include_gitignore=True,
    )
    names = set(zipfile.ZipFile(zpath).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "lungsearch", "ray_jobs", "configs"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked and not [f for f in tracked if f not in names]
    assert not [n for n in names if n.split("/")[0] in {"data", "artifacts", ".venv", ".git"}]
