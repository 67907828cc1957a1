"""k8s/: the kustomize base and overlays build with `kubectl kustomize` (offline) and every object
validates like the chart's: core kinds against Kubernetes' schemas, KubeRay objects against the v1.7.0
CRDs and operator rules."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import k8s_checks
import pytest
from chart_cases import REPO, by_kind, entrypoint_errors, one, ray_job_scripts

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (for `kubectl kustomize`) is not installed")

TARGETS = {"base": "k8s/base", "cpu-dev": "k8s/overlays/cpu-dev", "gpu-prod": "k8s/overlays/gpu-prod"}
NAMESPACES = {"base": "lungsearch", "cpu-dev": "lungsearch-dev", "gpu-prod": "lungsearch"}


def _load_gen():
    spec = importlib.util.spec_from_file_location("lungsearch_gen_rayjobs_k", REPO / "tools" / "gen_rayjobs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(target: str) -> list[dict]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(REPO / TARGETS[target])], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return k8s_checks.load_docs([out.stdout])


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    return {target: build(target) for target in TARGETS}


@pytest.mark.parametrize("target", TARGETS)
def test_builds_and_validates(built, target):
    docs = built[target]
    errors = k8s_checks.all_errors(docs)
    assert errors == [], "\n".join(errors)
    namespace = NAMESPACES[target]
    assert one(docs, "Namespace")["metadata"]["name"] == namespace
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lungsearch"
    assert "Secret" not in {d["kind"] for d in docs}


@pytest.mark.parametrize("target", TARGETS)
def test_rayjob_per_entrypoint_and_a_raycluster(built, target):
    docs = built[target]
    jobs = by_kind(docs, "RayJob")
    scripts = {job["spec"]["entrypoint"].split()[1] for job in jobs}
    assert {"ray_jobs/train.py", "ray_jobs/evaluate.py", "ray_jobs/build_index.py"} <= scripts
    missing = ray_job_scripts() - scripts
    assert not missing, f"add a job to k8s/rayjob-spec.yaml for {sorted(missing)}"
    for job in jobs:
        spec = job["spec"]
        assert spec["entrypoint"].startswith("python ray_jobs/") and "--config configs/" in spec["entrypoint"]
        assert entrypoint_errors(spec["entrypoint"]) == []
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
        assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
        for where, template in k8s_checks.pod_templates(job):
            pod = template["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["automountServiceAccountToken"] is False, where
            assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True, where
    cluster = one(docs, "RayCluster", "lungsearch-interactive")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True


def test_submission_rbac(built):
    docs = built["cpu-dev"]
    role = one(docs, "Role", "lungsearch-rayjob-submitter")
    rules = {(tuple(r["apiGroups"]), res): set(r["verbs"]) for r in role["rules"] for res in r["resources"]}
    assert {"create", "get", "watch", "delete"} <= rules[(("ray.io",), "rayjobs")]
    assert "patch" in rules[(("ray.io",), "rayservices")]
    assert all("secrets" not in res for (_, res) in rules)
    binding = one(docs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "lungsearch-submitter", "namespace": "lungsearch-dev"}
    ]
    sa_names = {sa["metadata"]["name"] for sa in by_kind(docs, "ServiceAccount")}
    assert {"lungsearch-submitter", "lungsearch-ray"} <= sa_names


def test_overlays_differ_where_they_should(built):
    def workers(docs, name):
        return one(docs, "RayJob", name)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]

    dev, prod = built["cpu-dev"], built["gpu-prod"]
    for name in ("lungsearch-train", "lungsearch-evaluate", "lungsearch-build-index"):
        limits = workers(prod, name)["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1
        assert workers(prod, name)["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert "nvidia.com/gpu" not in workers(dev, name)["template"]["spec"]["containers"][0]["resources"]["limits"]
    # gpu-prod's jobs run the spec's gpu group exactly (the patch is generated from k8s/rayjob-spec.yaml).
    gen = _load_gen()
    spec, components = gen.load_spec(), gen.load_components()
    for name in ("evaluate", "build-index", "reproduce"):
        want = gen.rayjob(spec, name, group="gpu", C=components)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        assert workers(prod, f"lungsearch-{name}") == want
    train = one(prod, "RayJob", "lungsearch-train")["spec"]
    assert "train.use_gpu=true" in train["entrypoint"] and "train.num_workers=2" in train["entrypoint"]
    assert workers(prod, "lungsearch-train")["replicas"] == 2
    assert one(dev, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert one(prod, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    groups = [g["groupName"] for g in one(prod, "RayCluster")["spec"]["workerGroupSpecs"]]
    assert groups == ["cpu", "gpu"]
