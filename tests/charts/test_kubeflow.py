"""The Kubeflow pipeline (k8s/kubeflow/): the committed compiled YAML is current and well formed, and the
components' plain functions work, run here in the main venv without kfp: the RayJobs they build validate
against the KubeRay CRDs, their entry points survive KubeRay's and Ray's shells, and the runner, metrics and
rollout steps run against a fake Kubernetes API whose "operator" executes the RayJob on the local Ray."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import json
import os
import shlex
import subprocess
import sys
import textwrap
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import k8s_checks
import pytest
import yaml
from chart_cases import REPO, entrypoint_errors, one

KF_DIR = REPO / "k8s" / "kubeflow"
COMPILED = KF_DIR / "pipeline.yaml"
KFP_PYTHON = REPO / ".venv-kfp" / "bin" / "python"


def _load_components():
    spec = importlib.util.spec_from_file_location("lungsearch_kfp_components", KF_DIR / "components.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


C = _load_components()


# ---- the compiled pipeline -------------------------------------------------------------------------


def _compiled() -> tuple[str, dict, dict]:
    text = COMPILED.read_text()
    spec, platform = yaml.safe_load_all(text)
    return text, spec, platform


def _source_digest() -> str:  # the same digest as pipeline.source_digest(), without importing kfp
    digest = hashlib.sha256()
    for name in ("components.py", "pipeline.py"):
        digest.update(name.encode() + b"\0" + (KF_DIR / name).read_bytes())
    return digest.hexdigest()


def test_compiled_pipeline_is_current():
    text, spec, _ = _compiled()
    header = dict(line[2:].split(": ", 1) for line in text.splitlines()[:3] if ": " in line)
    assert header.get("source-sha256") == _source_digest(), (
        "k8s/kubeflow changed: run `make kubeflow` and commit pipeline.yaml"
    )
    assert spec["sdkVersion"] == "kfp-2.17.3"
    assert "kfp==2.17.3" in (REPO / "tools" / "ensure-kfp-venv.sh").read_text()


def test_compiled_pipeline_embeds_the_current_component_sources():
    """Each step's container runs exactly the functions of components.py (what the tests below exercise)."""
    _, spec, _ = _compiled()
    executors = spec["deploymentSpec"]["executors"]
    expected = {"rayjob_manifest", "run_rayjob", "collect_metrics", "rollout_rayservice"}
    seen = set()
    for name, executor in executors.items():
        container = executor["container"]
        function = container["args"][container["args"].index("--function_to_execute") + 1]
        program = container["command"][-1]
        seen.add(function)
        for func in [getattr(C, function), *C.helpers()]:
            source = textwrap.dedent(inspect.getsource(func))
            assert source in program, f"{name}: {func.__name__} differs from components.py (run `make kubeflow`)"
    assert seen == expected


def test_compiled_pipeline_structure():
    _, spec, platform = _compiled()
    assert spec["pipelineInfo"]["name"] == "lungsearch-lifecycle"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"profile", "dataset_uri", "gpus_per_worker", "num_workers"} <= set(params)
    assert params["profile"]["defaultValue"] == "cxr-report" and params["dataset_uri"]["defaultValue"] == "phantom"
    assert params["gpus_per_worker"]["parameterType"] == params["num_workers"]["parameterType"] == "NUMBER_INTEGER"
    # The RayJobs' defaults are the RayJob spec's (k8s/rayjob-spec.yaml, embedded in components.py).
    rayjob_spec = C._rayjob_spec()
    cpu_worker = rayjob_spec["workerGroups"]["cpu"]["resources"]["requests"]
    assert params["image"]["defaultValue"] == rayjob_spec["image"]
    assert params["registry_claim"]["defaultValue"] == rayjob_spec["registryClaim"]
    assert params["milvus_uri"]["defaultValue"] == rayjob_spec["milvusUri"]
    assert params["worker_cpus"]["defaultValue"] == int(cpu_worker["cpu"])
    assert params["worker_memory"]["defaultValue"] == cpu_worker["memory"]
    tasks = spec["root"]["dag"]["tasks"]
    # prepare -> train -> evaluate -> metrics -> [gate] build index -> roll out
    step_of = {}
    for name, task in tasks.items():
        if name.startswith("rayjob-manifest"):
            step_of[name] = task["inputs"]["parameters"]["step"]["runtimeValue"]["constant"]
    assert sorted(step_of.values()) == ["evaluate", "prepare", "train"]
    runs = {
        step: next(
            n
            for n, t in tasks.items()
            if t["componentRef"]["name"].startswith("comp-run-rayjob")
            and t["inputs"]["parameters"]["manifest"]["taskOutputParameter"]["producerTask"] == m
        )
        for m, step in step_of.items()
    }
    train_manifest = next(m for m, s in step_of.items() if s == "train")
    assert runs["prepare"] in tasks[train_manifest]["dependentTasks"]
    assert runs["evaluate"] in tasks["collect-metrics"]["dependentTasks"]
    gate = tasks["condition-1"]
    assert (
        gate["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--collect-metrics-Output'] == 'pass'"
    )
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    inner_steps = {
        t["inputs"]["parameters"]["step"]["runtimeValue"]["constant"]
        for n, t in inner.items()
        if n.startswith("rayjob-manifest")
    }
    assert inner_steps == {"build-index"}
    rollout = next(t for n, t in inner.items() if n.startswith("rollout-rayservice"))
    assert any(d.startswith("run-rayjob") for d in rollout["dependentTasks"])
    # Evaluation surfaces KFP metrics and a Markdown report.
    outputs = spec["components"]["comp-collect-metrics"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    # Nothing is served from KFP's cache (re-running must train again); every step pod is labelled.
    assert all(t.get("cachingOptions", {}).get("enableCache") is not True for t in tasks.values())
    labels = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(labels) == set(spec["deploymentSpec"]["executors"])
    assert all(e["podMetadata"]["labels"]["app.kubernetes.io/part-of"] == "lungsearch" for e in labels.values())


def test_recompiling_reproduces_the_committed_yaml(tmp_path):
    if not KFP_PYTHON.exists():
        # CI builds .venv-kfp (`make test` runs tools/ensure-kfp-venv.sh first): there the check must run.
        if os.environ.get("CI"):
            pytest.fail("no .venv-kfp in CI: `make test` should have built it (tools/ensure-kfp-venv.sh)")
        pytest.skip("no .venv-kfp (`make kfp-venv` creates it; `make test` does too)")
    out = tmp_path / "pipeline.yaml"
    subprocess.run(
        [str(KFP_PYTHON), "-m", "k8s.kubeflow.pipeline", "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert out.read_text() == COMPILED.read_text(), "run `make kubeflow` and commit k8s/kubeflow/pipeline.yaml"


def test_kubeflow_rbac_validates():
    docs = k8s_checks.load_docs([(KF_DIR / "rbac.yaml").read_text()])
    assert k8s_checks.all_errors(docs) == []
    binding = one(docs, "RoleBinding")
    role = one(k8s_checks.load_docs([(REPO / "k8s" / "base" / "rbac.yaml").read_text()]), "Role")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


# ---- the RayJobs the pipeline creates ------------------------------------------------------------------

TRAIN_RESULT = json.dumps({"step": "train", "profile": "ct-ild", "version": "20260101-120000-abc123"})


@pytest.mark.parametrize("gpus", [0, 1])
@pytest.mark.parametrize("step", C.STEPS)
def test_rayjob_manifest_validates_against_kuberay(step, gpus):
    manifest = json.loads(
        C.rayjob_manifest(
            step,
            "ct-ild",
            "ild-ct:/mnt/lungsearch/datasets/ild",
            2,
            gpus,
            "3F2A9C1D-77aa",
            upstream_result=TRAIN_RESULT,
        )
    )
    errors = k8s_checks.all_errors([manifest])
    assert errors == [], "\n".join(errors)
    assert manifest["metadata"]["name"] == f"lungsearch-{step}-3f2a9c1d"
    assert manifest["metadata"]["namespace"] == "lungsearch"
    spec = manifest["spec"]
    assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0" and spec["submissionMode"] == "K8sJobMode"
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]
    limits = worker["containers"][0]["resources"]["limits"]
    if gpus and step != "prepare":
        assert group["groupName"] == "gpu" and limits["nvidia.com/gpu"] == 1
        assert worker["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    else:
        assert group["groupName"] == "cpu" and "nvidia.com/gpu" not in limits
    assert group["replicas"] == (2 if step in ("train", "build-index") else 1)


def _bash_words(line: str) -> list[str]:
    """How bash splits ``line`` into words (KubeRay's submitter pastes the entrypoint into a bash line)."""
    out = subprocess.run(["bash", "-c", f"set -- {line}; printf '%s\\0' \"$@\""], capture_output=True, check=True)
    return out.stdout.decode().split("\0")[:-1]


def _driver_argv(entrypoint: str) -> list[str]:
    """The argv the Ray job driver runs: submitter bash -> `ray job submit` (shlex.join) -> driver shell."""
    return _bash_words(shlex.join(_bash_words(entrypoint)))


def test_entrypoints_survive_kuberay_and_ray_shells():
    for step in C.STEPS:
        manifest = json.loads(
            C.rayjob_manifest(
                step, "cxr-hash", "nih:/mnt/data/nih chest (2024)", 3, 1, "r1", upstream_result=TRAIN_RESULT
            )
        )
        argv = _driver_argv(manifest["spec"]["entrypoint"])
        assert argv[:2] == ["python", "-c"] and argv[2] == C._step_runner_code()
        assert argv[3:5] == [step, "cxr-hash"]
        data = ["data.source=nih", "data.root=/mnt/data/nih chest (2024)"]
        if step == "train":
            assert argv[6:] == [
                "python",
                "ray_jobs/train.py",
                "--config",
                "configs/cxr-hash.yaml",
                *data,
                "train.num_workers=3",
                "train.use_gpu=true",
                "train.gpus_per_worker=1",
            ]
        elif step == "prepare":
            assert argv[6:] == data
        else:  # the model card carries the training data config: no dataset overrides after training
            script = {"evaluate": "ray_jobs/evaluate.py", "build-index": "ray_jobs/build_index.py"}[step]
            assert argv[5] == "20260101-120000-abc123"
            assert argv[6:] == [
                "python",
                script,
                "--config",
                "configs/cxr-hash.yaml",
                "--model",
                "cxr-hash@20260101-120000-abc123",
            ]


def test_default_commands_match_the_ray_jobs_scripts():
    """The scripts, flags and overrides the pipeline passes exist (argparse of ray_jobs/, lungsearch.config)."""
    for step in ("train", "evaluate", "build-index"):
        for gpus in (0, 1):
            manifest = json.loads(
                C.rayjob_manifest(
                    step, "ct-ild", "ild-ct:/mnt/lungsearch/datasets/ild", 2, gpus, "r", upstream_result=TRAIN_RESULT
                )
            )
            command = _driver_argv(manifest["spec"]["entrypoint"])[6:]
            assert entrypoint_errors(shlex.join(command)) == []


def test_entrypoint_check_is_not_vacuous():
    assert entrypoint_errors("python ray_jobs/train.py --config configs/cxr-hash.yaml train.epochz=2")
    assert entrypoint_errors("python ray_jobs/train.py --config configs/cxr-hash.yaml train.num_workers=-1")
    assert entrypoint_errors("python ray_jobs/evaluate.py --config configs/cxr-hash.yaml --modle cxr-hash")
    assert entrypoint_errors("python ray_jobs/build_index.py --config configs/cxr-hash.yaml data.root=/x")
    assert entrypoint_errors("python ray_jobs/serve.py --config configs/cxr-hash.yaml")


def test_rayjob_manifest_rejects_bad_input():
    with pytest.raises(ValueError, match="step"):
        C.rayjob_manifest("deploy", "cxr-hash", "phantom", 1, 0, "r")
    with pytest.raises(ValueError, match="dataset_uri"):
        C.rayjob_manifest("train", "cxr-hash", "s3-bucket-without-source", 1, 0, "r")
    with pytest.raises(ValueError, match="absolute"):
        C.rayjob_manifest("train", "cxr-hash", "nih:relative/path", 1, 0, "r")
    with pytest.raises(ValueError, match="version"):
        C.rayjob_manifest("evaluate", "cxr-hash", "phantom", 1, 0, "r", upstream_result="{}")
    with pytest.raises(ValueError, match="num_workers"):
        C.rayjob_manifest("train", "cxr-hash", "phantom", 0, 0, "r")
    with pytest.raises(ValueError, match="profile"):
        C.rayjob_manifest("train", "../etc", "phantom", 1, 0, "r")


def test_dataset_sources_follow_the_profile_config():
    from lungsearch.config import DataConfig

    allowed = set(typing.get_args(DataConfig.model_fields["source"].annotation))
    for source in allowed - {"phantom"}:
        assert C._dataset_overrides(f"{source}:/data/x") == [f"data.source={source}", "data.root=/data/x"]
    assert C._dataset_overrides("phantom") == C._dataset_overrides("") == []
    with pytest.raises(ValueError):
        C._dataset_overrides("imagenet:/data")


# ---- metrics and report ----------------------------------------------------------------------------


class FakeMetrics:
    def __init__(self):
        self.logged: dict[str, float] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


class FakeArtifact:
    def __init__(self, path: Path):
        self.path = str(path)


def test_collect_metrics(tmp_path):
    result = json.dumps(
        {
            "step": "evaluate",
            "profile": "cxr-hash",
            "version": "v1",
            "synthetic_data": True,
            "metrics": {
                "test_accuracy": 0.875,
                "map@10": {"16": 0.5, "64": 0.75},
                "n": 40,
                "seed": 0,
                "note": "phantom",
                "ok": True,
                "auc": float("nan"),
            },
            "report": "## Table 2\n| bits | mAP@10 |",
        }
    )
    metrics, report = FakeMetrics(), FakeArtifact(tmp_path / "report.md")
    assert C.collect_metrics(result, "test_accuracy", 0.8, metrics, report) == "pass"
    assert metrics.logged == {"test_accuracy": 0.875, "map@10.16": 0.5, "map@10.64": 0.75, "n": 40.0, "seed": 0.0}
    text = Path(report.path).read_text()
    assert "cxr-hash@v1" in text and "synthetic phantom data" in text and "## Table 2" in text
    assert "| map@10.64 | 0.75 |" in text
    assert C.collect_metrics(result, "map@10.16", 0.6, FakeMetrics(), report) == "fail"
    assert C.collect_metrics(result, "", 0.0, FakeMetrics(), report) == "pass"
    with pytest.raises(ValueError, match="gate metric 'f1'"):
        C.collect_metrics(result, "f1", 0.5, FakeMetrics(), report)


def test_parse_result_takes_the_last_marker_line():
    log = 'INFO starting\nLUNGSEARCH_RESULT {"version": "a"}\nnoise\nLUNGSEARCH_RESULT {"version": "b"}\n'
    assert C._parse_result(log) == {"version": "b"}
    with pytest.raises(RuntimeError, match="no LUNGSEARCH_RESULT"):
        C._parse_result("Traceback ...\n")


def test_pin_profile():
    cfg = yaml.safe_dump(
        {"applications": [{"name": "lungsearch", "args": {"profiles": ["cxr-hash", "ct-ild@old", "ct-ild"]}}]}
    )
    out = yaml.safe_load(C._pin_profile(cfg, "lungsearch", "ct-ild", "v2"))
    assert out["applications"][0]["args"]["profiles"] == ["cxr-hash", "ct-ild@v2"]
    out = yaml.safe_load(C._pin_profile(cfg, "lungsearch", "cxr-cnn", "v3"))
    assert out["applications"][0]["args"]["profiles"] == ["cxr-hash", "ct-ild@old", "ct-ild", "cxr-cnn@v3"]
    with pytest.raises(ValueError, match="no application"):
        C._pin_profile(cfg, "other", "ct-ild", "v2")


# ---- against a fake Kubernetes API -------------------------------------------------------------------


class FakeKube:
    """The few Kubernetes/KubeRay endpoints the components call. ``operator(job) -> (jobStatus, log)``
    plays KubeRay: it runs when a RayJob is created; status moves Initializing -> Running -> final."""

    def __init__(self, operator=None):
        self.rayjobs: dict[str, dict] = {}
        self.logs: dict[str, str] = {}
        self.final: dict[str, str] = {}
        self.polls: dict[str, int] = {}
        self.rayservices: dict[str, dict] = {}
        self.service_polls = 0
        self.app_status_after_patch = "RUNNING"
        self.operator = operator
        self.requests: list[tuple[str, str]] = []
        kube = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, code: int, body, raw: bool = False):
                data = body.encode() if raw else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if raw else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def do_POST(self):
                kube.requests.append(("POST", self.path))
                obj = self._body()
                errors = k8s_checks.all_errors([obj], kube_versions=[k8s_checks.KUBE_VERSIONS[-1]])
                if errors:  # the API server's schema validation
                    return self._send(422, {"message": "; ".join(errors)})
                name = obj["metadata"]["name"]
                if name in kube.rayjobs:
                    return self._send(409, {"message": f'rayjobs.ray.io "{name}" already exists'})
                kube.rayjobs[name] = obj
                kube.final[name], kube.logs[name] = kube.operator(obj)
                return self._send(201, obj)

            def do_GET(self):
                kube.requests.append(("GET", self.path))
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if parts[:2] == ["apis", "ray.io"] and parts[5] == "rayjobs":
                    name = parts[6]
                    kube.polls[name] = kube.polls.get(name, 0) + 1
                    job = copy.deepcopy(kube.rayjobs[name])
                    n = kube.polls[name]
                    job["status"] = (
                        {"jobDeploymentStatus": "Initializing"}
                        if n == 1
                        else {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
                        if n == 2
                        else {
                            "jobDeploymentStatus": "Complete" if kube.final[name] == "SUCCEEDED" else "Failed",
                            "jobStatus": kube.final[name],
                            "message": f"job {kube.final[name].lower()}",
                        }
                    )
                    return self._send(200, job)
                if parts[:2] == ["apis", "ray.io"] and parts[5] == "rayservices":
                    return self._send(200, kube.rayservice_view(parts[6]))
                if parts[:2] == ["api", "v1"] and parts[4] == "pods" and len(parts) == 5:
                    name = parse_qs(url.query)["labelSelector"][0].removeprefix("job-name=")
                    items = [
                        {"metadata": {"name": f"{name}-submitter-x1", "creationTimestamp": "2026-01-01T00:00:00Z"}}
                    ]
                    return self._send(200, {"items": items if name in kube.logs else []})
                if parts[:2] == ["api", "v1"] and parts[-1] == "log":
                    return self._send(200, kube.logs[parts[5].removesuffix("-submitter-x1")], raw=True)
                return self._send(404, {"message": "not found"})

            def do_PATCH(self):
                kube.requests.append(("PATCH", self.path))
                assert self.headers["Content-Type"] == "application/merge-patch+json"
                name = self.path.strip("/").split("/")[6]
                svc = kube.rayservices[name]
                svc["spec"].update(self._body()["spec"])
                svc["metadata"]["generation"] += 1
                kube.service_polls = 0
                return self._send(200, svc)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def rayservice_view(self, name: str) -> dict:
        """The RayService with KubeRay's status: the new generation is observed after two polls."""
        svc = copy.deepcopy(self.rayservices[name])
        self.service_polls += 1
        gen = svc["metadata"]["generation"]
        settled = self.service_polls >= 3 or gen == 1
        app_status = self.app_status_after_patch if settled else "DEPLOYING"
        svc["status"] = {
            "observedGeneration": gen if settled else gen - 1,
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "UpgradeInProgress", "status": "False"}],
            "activeServiceStatus": {"applicationStatuses": {"lungsearch": {"status": app_status, "message": "x"}}},
        }
        return svc

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _scripted(final: str, result: dict | None):
    def operator(job):
        log = "submitting\n" + (f"LUNGSEARCH_RESULT {json.dumps(result)}\n" if result else "")
        return final, log

    return operator


def test_run_rayjob_succeeds_and_returns_the_result():
    manifest = C.rayjob_manifest("train", "cxr-hash", "phantom", 2, 0, "run1")
    with FakeKube(_scripted("SUCCEEDED", {"step": "train", "version": "v9", "profile": "cxr-hash"})) as kube:
        out = C.run_rayjob(manifest, timeout_s=30, poll_s=0, api_server=kube.url)
        assert json.loads(out) == {"profile": "cxr-hash", "step": "train", "version": "v9"}
        assert kube.polls["lungsearch-train-run1"] == 3
        # A retried KFP step adopts the existing RayJob instead of failing on 409.
        kube.polls.clear()
        assert json.loads(C.run_rayjob(manifest, timeout_s=30, poll_s=0, api_server=kube.url))["version"] == "v9"
        assert sum(1 for method, _ in kube.requests if method == "POST") == 2


def test_run_rayjob_failures():
    with FakeKube(_scripted("FAILED", None)) as kube:
        with pytest.raises(RuntimeError, match="ended FAILED: job failed"):
            C.run_rayjob(
                C.rayjob_manifest("train", "cxr-hash", "phantom", 1, 0, "f1"),
                timeout_s=30,
                poll_s=0,
                api_server=kube.url,
            )
    with FakeKube(_scripted("SUCCEEDED", None)) as kube:
        with pytest.raises(RuntimeError, match="no LUNGSEARCH_RESULT"):
            C.run_rayjob(
                C.rayjob_manifest("train", "cxr-hash", "phantom", 1, 0, "f2"),
                timeout_s=30,
                poll_s=0,
                api_server=kube.url,
            )
    with FakeKube(_scripted("RUNNING", None)) as kube:
        with pytest.raises(TimeoutError):
            C.run_rayjob(
                C.rayjob_manifest("train", "cxr-hash", "phantom", 1, 0, "f3"),
                timeout_s=0,
                poll_s=0,
                api_server=kube.url,
            )
    bad = json.loads(C.rayjob_manifest("train", "cxr-hash", "phantom", 1, 0, "f4"))
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 1  # the API server rejects unknown fields
    with FakeKube(_scripted("SUCCEEDED", None)) as kube:
        with pytest.raises(RuntimeError, match="HTTP 422"):
            C.run_rayjob(json.dumps(bad), timeout_s=30, poll_s=0, api_server=kube.url)


def test_rollout_pins_the_version_in_the_rendered_rayservice(render):
    rayservice = one(render(), "RayService")
    rayservice["metadata"]["generation"] = 1
    result = json.dumps({"step": "train", "profile": "cxr-hash", "version": "20260101-120000-abc123"})
    with FakeKube() as kube:
        kube.rayservices["lungsearch"] = rayservice
        pinned = C.rollout_rayservice("lungsearch", "lungsearch", result, timeout_s=30, poll_s=0, api_server=kube.url)
        assert pinned == "cxr-hash@20260101-120000-abc123"
        new_config = kube.rayservices["lungsearch"]["spec"]["serveConfigV2"]
        assert k8s_checks.serve_config_errors(new_config) == []
        app = yaml.safe_load(new_config)["applications"][0]
        assert app["args"]["profiles"] == ["cxr-hash@20260101-120000-abc123"]
        assert kube.rayservices["lungsearch"]["metadata"]["generation"] == 2
        assert kube.service_polls >= 3  # waited for KubeRay to observe the new generation
        kube.app_status_after_patch = "DEPLOY_FAILED"
        with pytest.raises(RuntimeError, match="DEPLOY_FAILED"):
            C.rollout_rayservice("lungsearch", "lungsearch", result, timeout_s=30, poll_s=0, api_server=kube.url)


# ---- end to end on a local Ray: the fake operator runs the RayJob's entry point --------------------------

TINY_EVALUATION = """
import json, os, pathlib, sys, ray
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
accuracy = ray.get(ray.remote(lambda: 0.75).remote())
out = pathlib.Path(os.environ["REPORTS"]) / "somewhere-else"
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({"test_accuracy": accuracy, "per_class": {"Normal": 0.5}}))
(out / "report.md").write_text("# evaluation (phantom data)")
print("evaluation done")
print(json.dumps({"profile": sys.argv[1], "report_dir": str(out), "metrics": {"test_accuracy": accuracy}}, indent=2))
"""


def _run_entrypoint(manifest: str, env: dict) -> subprocess.CompletedProcess:
    """Run a RayJob's entry point the way KubeRay + `ray job submit` would (two shells), in the repo."""
    argv = _driver_argv(json.loads(manifest)["spec"]["entrypoint"])
    return subprocess.run(
        ["bash", "-c", shlex.join(argv)], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def _local_env(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "LUNGSEARCH_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "REPORTS": str(tmp_path / "reports"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _fake_script(code: str) -> str:
    return f"python -c {shlex.quote(textwrap.dedent(code))}"


def test_step_runner_reads_the_scripts_summaries(tmp_path):
    """The driver-side runner turns each ray_jobs script's final JSON summary into the result line."""
    env = _local_env(tmp_path)
    train = _fake_script("""
        import json
        print("epoch 1 loss 0.9")
        print(json.dumps({"profile": "cxr-hash", "model": "cxr-hash@20260102-030405-abcdef", "synthetic_data": True,
                          "metrics": {"test_map10": 0.61}}, indent=2))
    """)
    run = _run_entrypoint(C.rayjob_manifest("train", "cxr-hash", "phantom", 1, 0, "t", command_template=train), env)
    assert run.returncode == 0, run.stderr
    assert "epoch 1 loss 0.9" in run.stdout  # the job's own output passes through
    assert C._parse_result(run.stdout) == {
        "step": "train",
        "profile": "cxr-hash",
        "version": "20260102-030405-abcdef",
        "synthetic_data": True,
        "metrics": {"test_map10": 0.61},
    }
    kfold = _fake_script('import json; print(json.dumps({"profile": "cxr-hash", "folds": 4}))')
    run = _run_entrypoint(C.rayjob_manifest("train", "cxr-hash", "phantom", 1, 0, "k", command_template=kfold), env)
    assert run.returncode != 0 and "K-fold" in run.stderr and "LUNGSEARCH_RESULT" not in run.stdout
    index = _fake_script(
        'import json; print(json.dumps({"profile": "cxr-hash", "version": "v1", "collection": "c_v1", '
        '"cases": 40, "inserted": 40, "updated": 0, "count_in_store": 40, "device": "cpu"}, indent=2))'
    )
    run = _run_entrypoint(
        C.rayjob_manifest(
            "build-index",
            "cxr-hash",
            "phantom",
            1,
            0,
            "i",
            upstream_result=json.dumps({"version": "v1"}),
            command_template=index,
        ),
        env,
    )
    assert C._parse_result(run.stdout)["index"] == {
        "collection": "c_v1",
        "cases": 40,
        "inserted": 40,
        "updated": 0,
        "count_in_store": 40,
    }
    # No summary: evaluate falls back to evaluate.py's default report folder.
    default_dir = tmp_path / "artifacts" / "reports" / "cxr-hash" / "v1-eval"
    default_dir.mkdir(parents=True)
    (default_dir / "metrics.json").write_text(json.dumps({"test_f1": 0.5}))
    run = _run_entrypoint(
        C.rayjob_manifest(
            "evaluate",
            "cxr-hash",
            "phantom",
            1,
            0,
            "e",
            upstream_result=json.dumps({"version": "v1"}),
            command_template="true",
        ),
        env,
    )
    assert C._parse_result(run.stdout)["metrics"] == {"test_f1": 0.5}
    failing = _fake_script("import sys; sys.exit(3)")
    run = _run_entrypoint(C.rayjob_manifest("train", "cxr-hash", "phantom", 1, 0, "f", command_template=failing), env)
    assert run.returncode != 0 and "exited with status 3" in run.stderr and "LUNGSEARCH_RESULT" not in run.stdout


@pytest.mark.ray
def test_pipeline_steps_against_a_local_ray(ray_cluster, tmp_path):
    """evaluate -> metrics: the RayJob's real entry point (the step runner and a Ray program) goes through
    bash and `ray job submit`'s quoting and runs as a driver on the local Ray; its log feeds the next step."""
    import ray

    env = {**_local_env(tmp_path), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}

    def operator(job):
        run = _run_entrypoint(json.dumps(job), env)
        return ("SUCCEEDED" if run.returncode == 0 else "FAILED"), run.stdout + run.stderr

    template = f"python -c {shlex.quote(TINY_EVALUATION)} {{profile}} {{version}}"
    train_result = json.dumps(
        {"step": "train", "profile": "cxr-hash", "version": "20260101-000000-aaaaaa", "synthetic_data": True}
    )
    manifest = C.rayjob_manifest(
        "evaluate", "cxr-hash", "phantom", 1, 0, "local1", upstream_result=train_result, command_template=template
    )
    with FakeKube(operator) as kube:
        result = C.run_rayjob(manifest, timeout_s=240, poll_s=0, api_server=kube.url)
    data = json.loads(result)
    assert data["step"] == "evaluate" and data["version"] == "20260101-000000-aaaaaa"
    assert data["metrics"] == {"test_accuracy": 0.75, "per_class": {"Normal": 0.5}}  # the full metrics.json
    assert data["report_dir"] == str(tmp_path / "reports" / "somewhere-else")
    metrics, report = FakeMetrics(), FakeArtifact(tmp_path / "report.md")
    assert C.collect_metrics(result, "test_accuracy", 0.7, metrics, report) == "pass"
    assert metrics.logged == {"test_accuracy": 0.75, "per_class.Normal": 0.5}
    assert "# evaluation (phantom data)" in Path(report.path).read_text()
