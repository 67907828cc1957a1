"""One RayJob spec (k8s/rayjob-spec.yaml): the kustomize manifests and the Kubeflow components' copy are
generated from it and current (tools/gen_rayjobs.py --check), it has a job for every ray_jobs/ entry point,
what it produces validates against the KubeRay v1.7.0 CRDs, and the Helm chart's and the Kubeflow
pipeline's RayJobs equal it except where listed below, each difference with its reason."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys

import k8s_checks
import pytest
import yaml
from chart_cases import REPO, by_kind, case_values, entrypoint_errors, one, ray_job_scripts

GEN = REPO / "tools" / "gen_rayjobs.py"


def _load_gen():
    spec = importlib.util.spec_from_file_location("lungsearch_gen_rayjobs", GEN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


G = _load_gen()
C = G.load_components()
SPEC = G.load_spec()


def _job(name: str, group: str = "") -> dict:
    return G.rayjob(SPEC, name, group=group, C=C)


# ---- the spec and what is generated from it ------------------------------------------------------------


def test_generated_files_are_current():
    run = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]


def test_check_notices_a_changed_spec():
    """--check compares what it would write; a changed knob changes every file that carries it."""
    changed = copy.deepcopy(SPEC)
    changed["rayjob"]["ttlSecondsAfterFinished"] += 1
    changed["workerGroups"]["gpu"]["shmSize"] = "15Gi"
    before, after = G.outputs(SPEC), G.outputs(changed)
    differ = {p.relative_to(REPO).as_posix() for p in before if before[p] != after[p]}
    assert differ == {
        *(f"k8s/base/rayjob-{name}.yaml" for name in SPEC["jobs"]),
        "k8s/kubeflow/components.py",
        "k8s/overlays/gpu-prod/gpu-workers.yaml",
        "k8s/overlays/gpu-prod/interactive-gpu-group.yaml",
    }
    assert all(p.read_text() == text for p, text in before.items())  # the committed files are these


def test_components_carry_the_spec():
    assert C._rayjob_spec() == G.embedded_spec(SPEC)


def test_a_job_for_every_entrypoint():
    scripts = {job["script"] for job in SPEC["jobs"].values()}
    assert scripts == ray_job_scripts(), "k8s/rayjob-spec.yaml `jobs:` must name every ray_jobs/ entry point"
    for name in SPEC["jobs"]:
        assert entrypoint_errors(_job(name)["spec"]["entrypoint"]) == []


def test_generated_manifests_validate_against_kuberay():
    docs = k8s_checks.load_docs(
        [(G.BASE / f"rayjob-{name}.yaml").read_text() for name in SPEC["jobs"]]
        + [(G.BASE / "raycluster-interactive.yaml").read_text()]
    )
    gpu_jobs = [_job(name, "gpu") for name in SPEC["jobs"]]
    interactive = _apply(
        one(docs, "RayCluster"), yaml.safe_load((G.GPU_OVERLAY / "interactive-gpu-group.yaml").read_text())
    )
    assert [g["groupName"] for g in interactive["spec"]["workerGroupSpecs"]] == ["cpu", "gpu"]
    errors = k8s_checks.all_errors(docs + gpu_jobs + [interactive])
    assert errors == [], "\n".join(errors)
    assert {d["metadata"]["name"] for d in by_kind(docs, "RayJob")} == {f"lungsearch-{n}" for n in SPEC["jobs"]}


def _apply(doc, ops: list[dict]):
    """RFC 6902 add/replace/remove (what kustomize does with the overlay's patch; test_kustomize builds it)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) and last != "-" else last
        if op["op"] == "remove":
            del node[key]
        elif op["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if key == "-" else key, op["value"])
        else:
            assert op["op"] == "add" or key in node, op
            node[key] = op["value"]
    return doc


def test_gpu_patch_turns_a_job_into_the_gpu_group():
    """The generated JSON patch, applied to a base RayJob, gives exactly the spec's gpu group."""
    ops = yaml.safe_load((G.GPU_OVERLAY / "gpu-workers.yaml").read_text())
    for name in SPEC["jobs"]:
        assert _apply(_job(name), ops) == _job(name, "gpu")
    group = _job("train", "gpu")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    pod = group["template"]["spec"]
    assert group["groupName"] == "gpu" and pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_json_patch_is_not_vacuous():
    assert G.json_patch({"a": 1}, {"a": 1}) == []
    assert G.json_patch({"a": {"b": 1}, "c": 2}, {"a": {"b": 2}, "d/e": 3}) == [
        {"op": "replace", "path": "/a/b", "value": 2},
        {"op": "remove", "path": "/c"},
        {"op": "add", "path": "/d~1e", "value": 3},
    ]


# ---- the Helm chart's RayJobs ------------------------------------------------------------------------

#: Where the chart's RayJobs differ from the spec's, and why. Everything else must be equal.
CHART_ONLY = {
    "pod labels app.kubernetes.io/name and /instance": "Helm's selector labels of the release",
    "annotation lungsearch.io/profiles-checksum": "the chart mounts configs/ from a ConfigMap; a change rolls the pods",
    "volume and mount `profiles`": "that ConfigMap (the kustomize jobs read configs/ from the image)",
    "imagePullPolicy": "a chart value (image.pullPolicy)",
    "env LUNGSEARCH_GRPC_PORT": "the chart's Ray environment is shared with the Serve pods",
    "LUNGSEARCH_MILVUS_TOKEN not optional": "the chart names the token Secret only when it exists (milvus.tokenSecret)",
    "env order": "by name here: no variable refers to another",
    "/dev/shm of GPU workers": "the chart has one ray.shmSize for every group (spec: workerGroups.gpu.shmSize)",
}


def _aligned_values() -> dict:
    """Chart values for the spec's settings where the chart has a value for them (the rest must match)."""
    repository, tag = SPEC["image"].rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag},
        "serviceAccount": {"name": SPEC["serviceAccountName"]},
        "registry": {"persistence": {"existingClaim": SPEC["registryClaim"]}, "mountPath": SPEC["registryMountPath"]},
        "milvus": {"enabled": False, "uri": SPEC["milvusUri"], "tokenSecret": dict(SPEC["milvusTokenSecret"])},
        "jobs": {key: {"enabled": True} for key in ("train", "evaluate", "buildIndex")},
    }


def _merged(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _normalised(job: dict, *, chart: bool) -> dict:
    """The RayJob's spec with CHART_ONLY applied (to a chart job) and env sorted (to both)."""
    spec = copy.deepcopy(job["spec"])
    for _, template in k8s_checks.pod_templates({**job, "spec": spec}):
        meta, pod = template.setdefault("metadata", {}), template["spec"]
        if chart:
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance"):
                meta.get("labels", {}).pop(key, None)
            meta.get("annotations", {}).pop("lungsearch.io/profiles-checksum", None)
            if not meta.get("annotations"):
                meta.pop("annotations", None)
            pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] != "profiles"]
        for container in pod["containers"]:
            env = container.get("env", [])
            if chart:
                container.pop("imagePullPolicy", None)
                container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "profiles"]
                env = [e for e in env if e["name"] != "LUNGSEARCH_GRPC_PORT"]
                for var in env:
                    if var["name"] == "LUNGSEARCH_MILVUS_TOKEN":
                        var["valueFrom"]["secretKeyRef"]["optional"] = True
            container["env"] = sorted(env, key=lambda e: e["name"])
    return spec


def test_chart_rayjobs_follow_the_spec(render):
    docs = render(_aligned_values())
    jobs = {j["metadata"]["labels"]["lungsearch.io/job"]: j for j in by_kind(docs, "RayJob")}
    assert set(jobs) == {"train", "evaluate", "build-index"} and set(jobs) <= set(SPEC["jobs"])
    for name, job in jobs.items():
        want = _job(name)
        assert {k: job["metadata"]["labels"][k] for k in want["metadata"]["labels"]} == want["metadata"]["labels"]
        got, expected = _normalised(job, chart=True), _normalised(want, chart=False)
        assert got == expected, f"the chart's RayJob {name} drifted from k8s/rayjob-spec.yaml"
    # The comparison is not vacuous: a changed chart value shows.
    other = render(_merged(_aligned_values(), {"jobs": {"ttlSecondsAfterFinished": 601}}))
    job = one(other, "RayJob", jobs["train"]["metadata"]["name"])
    assert _normalised(job, chart=True) != _normalised(_job("train"), chart=False)


def test_chart_gpu_job_follows_the_spec_gpu_group(render):
    docs = render(
        _merged(
            _aligned_values(),
            {
                **case_values("gpu"),
                "jobs": {
                    **case_values("gpu")["jobs"],
                    "evaluate": {"enabled": False},
                    "buildIndex": {"enabled": False},
                },
            },
        )
    )
    (group,) = one(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    want = copy.deepcopy(_job("train", "gpu")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])
    for volume in want["template"]["spec"]["volumes"]:  # CHART_ONLY: one /dev/shm size for every group
        if volume["name"] == "dshm":
            volume["emptyDir"]["sizeLimit"] = SPEC["pod"]["shmSize"]
    for key in ("replicas", "minReplicas", "maxReplicas"):
        want[key] = group[key]  # the values file's 2-worker training
    got = _normalised(
        {"kind": "RayJob", "metadata": {}, "spec": {"rayClusterSpec": {"workerGroupSpecs": [group]}}}, chart=True
    )
    expected = _normalised(
        {"kind": "RayJob", "metadata": {}, "spec": {"rayClusterSpec": {"workerGroupSpecs": [want]}}}, chart=False
    )
    assert got == expected


# ---- the Kubeflow pipeline's RayJobs -----------------------------------------------------------------

#: Where the pipeline's RayJobs differ from the spec's (k8s/base's), and why.
KUBEFLOW_ONLY = {
    "metadata": "named per run (lungsearch-<step>-<run>) in the pipeline's namespace, labelled with the run",
    "entrypoint": "the step runner around the ray_jobs script (it prints the LUNGSEARCH_RESULT line)",
    "ttlSecondsAfterFinished, activeDeadlineSeconds": "the spec's `kubeflow:` settings",
    "worker replicas": "the pipeline's num_workers parameter",
}


@pytest.mark.parametrize("gpus", [0, 1])
@pytest.mark.parametrize("step", ["train", "evaluate", "build-index"])
def test_kubeflow_rayjobs_follow_the_spec(step, gpus):
    pipeline_defaults = {
        "worker_cpus": int(SPEC["workerGroups"]["cpu"]["resources"]["requests"]["cpu"]),
        "worker_memory": SPEC["workerGroups"]["cpu"]["resources"]["requests"]["memory"],
    }
    for params in ({}, pipeline_defaults):  # the component's defaults and the pipeline's parameter defaults
        got = json.loads(
            C.rayjob_manifest(
                step, "cxr-report", "phantom", 2, gpus, "run1", upstream_result=json.dumps({"version": "v1"}), **params
            )
        )
        want = _job(step, "gpu" if gpus else "")
        spec = copy.deepcopy(got["spec"])
        spec["entrypoint"] = want["spec"]["entrypoint"]
        for key, value in SPEC["kubeflow"].items():
            assert spec[key] == value
            spec[key] = SPEC["rayjob"][key]
        group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
        assert group["replicas"] == (2 if step != "evaluate" else 1)
        group.update(replicas=1, minReplicas=1, maxReplicas=1)
        assert spec == want["spec"], f"kubeflow RayJob {step} (gpus={gpus}) drifted from the spec"
        assert got["metadata"]["labels"]["lungsearch.io/job"] == step
