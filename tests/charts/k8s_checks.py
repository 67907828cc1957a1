"""Offline checks for rendered Kubernetes objects: core kinds against Kubernetes' own schemas
(kubernetes-validate), KubeRay objects against the KubeRay v1.7.0 CRDs (tests/charts/kuberay-crds/,
strictly: unknown fields are errors, as the API server would prune them) plus the operator-side rules
of KubeRay's validation.go, and the RayService's serveConfigV2 against Ray Serve 2.60's own schema.

Every function returns a list of human-readable problems (empty = valid), so a test can show them all.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import kubernetes_validate
import yaml

__all__ = [
    "CRD_DIR",
    "KUBERAY_VERSION",
    "KUBE_VERSIONS",
    "KUBERAY_KINDS",
    "load_docs",
    "crd_schemas",
    "kuberay_schema_errors",
    "kuberay_semantic_errors",
    "core_errors",
    "serve_config_errors",
    "label_errors",
    "all_errors",
    "pod_templates",
]

CRD_DIR = Path(__file__).resolve().parent / "kuberay-crds"
#: The KubeRay release whose CRDs and validation rules these checks follow.
KUBERAY_VERSION = "v1.7.0"
#: Kubernetes versions core objects are validated against: the chart's floor and the newest schema shipped.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")
#: Operator-side limits (KubeRay utils/constant.go): a RayCluster name feeds "<name>-serve-svc".
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_OR_SERVICE_NAME = MAX_RAYCLUSTER_NAME - 6

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def load_docs(texts: Iterable[str]) -> list[dict]:
    """Every non-empty YAML document in ``texts`` (rendered templates, kustomize output)."""
    docs: list[dict] = []
    for text in texts:
        docs += [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if isinstance(d, dict)]
    return docs


def _strict(node: Any) -> Any:
    """The CRD's OpenAPI schema as JSON Schema with unknown fields forbidden and int-or-string expanded."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if (
            node.get("type") == "object"
            and "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node.setdefault("additionalProperties", False)
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return node
    if isinstance(node, list):
        return [_strict(x) for x in node]
    return node


@functools.cache
def crd_schemas() -> dict[str, dict]:
    """Kind -> strict JSON schema of ``spec`` for the ray.io/v1 version of each KubeRay CRD."""
    out: dict[str, dict] = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
        for version in crd["spec"]["versions"]:
            if version["name"] == "v1":
                out[crd["spec"]["names"]["kind"]] = _strict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    missing = set(KUBERAY_KINDS) - set(out)
    if missing:
        raise RuntimeError(f"KubeRay CRDs missing from {CRD_DIR}: {sorted(missing)}")
    return out


@functools.cache
def _validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schemas()[kind])


def _where(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def kuberay_schema_errors(doc: dict) -> list[str]:
    """Problems of a RayCluster/RayJob/RayService against its v1 CRD schema (strict)."""
    kind = doc.get("kind")
    if kind not in KUBERAY_KINDS:
        return []
    errs = []
    if doc.get("apiVersion") != "ray.io/v1":
        errs.append(f"{_where(doc)}: apiVersion {doc.get('apiVersion')!r}, want ray.io/v1")
    for e in _validator(kind).iter_errors(doc.get("spec", {})):
        errs.append(f"{_where(doc)}: {e.message[:240]} at spec.{'.'.join(map(str, e.absolute_path))}")
    return errs


def _cluster_spec(doc: dict) -> dict | None:
    spec = doc.get("spec", {})
    return {"RayCluster": spec, "RayService": spec.get("rayClusterConfig"), "RayJob": spec.get("rayClusterSpec")}[
        doc["kind"]
    ]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _cluster_rules(cluster: dict, where: str) -> list[str]:
    """KubeRay's ValidateRayClusterSpec (v1.7.0), the rules that apply to a freshly created object."""
    errs = []
    head = cluster.get("headGroupSpec", {})
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    groups = [("Head", head)] + [(g.get("groupName", "?"), g) for g in cluster.get("workerGroupSpecs", [])]
    for name, group in groups:
        containers = group.get("template", {}).get("spec", {}).get("containers", [])
        if not containers:
            errs.append(f"{where}: group {name} has no container")
        params = group.get("rayStartParams", {}) or {}
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
            errs.append(f"{where}: group {name} sets resources in both rayStartParams and resources")
        if "labels" in params:
            errs.append(f"{where}: group {name}: rayStartParams['labels'] is not supported")
        if not all(isinstance(v, str) for v in params.values()):
            errs.append(f"{where}: group {name}: rayStartParams values must be strings")
        if name == "Head":
            continue
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (lo is None or hi is None):
            errs.append(f"{where}: worker group {name} needs minReplicas and maxReplicas without autoscaling")
        if lo is not None and hi is not None and lo > hi:
            errs.append(f"{where}: worker group {name} has minReplicas {lo} > maxReplicas {hi}")
        if any(x is not None and x < 0 for x in (lo, hi, group.get("replicas"))):
            errs.append(f"{where}: worker group {name} has a negative replica count")
        if (
            group.get("replicas") is not None
            and lo is not None
            and hi is not None
            and not lo <= group["replicas"] <= hi
        ):
            errs.append(f"{where}: worker group {name}: replicas outside [minReplicas, maxReplicas]")
    names = [g.get("groupName") for g in cluster.get("workerGroupSpecs", [])]
    if len(names) != len(set(names)):
        errs.append(f"{where}: duplicate worker group names {names}")
    auth = cluster.get("authOptions") or {}
    if auth.get("mode") == "token":
        version = cluster.get("rayVersion", "")
        if not version:
            errs.append(f"{where}: authOptions.mode token needs rayVersion")
        elif _version_tuple(version) < (2, 52, 0):
            errs.append(f"{where}: authOptions.mode token needs Ray >= 2.52.0, got {version}")
    elif auth.get("enableK8sTokenAuth"):
        errs.append(f"{where}: enableK8sTokenAuth needs authOptions.mode token")
    opts = cluster.get("autoscalerOptions") or {}
    if opts.get("idleTimeoutSeconds", 0) < 0:
        errs.append(f"{where}: autoscalerOptions.idleTimeoutSeconds is negative")
    return errs


def kuberay_semantic_errors(doc: dict) -> list[str]:
    """The operator-side rules of KubeRay v1.7.0's validation.go that a schema cannot express."""
    kind = doc.get("kind")
    if kind not in KUBERAY_KINDS:
        return []
    where = _where(doc)
    name = doc.get("metadata", {}).get("name", "")
    errs = []
    limit = MAX_RAYCLUSTER_NAME if kind == "RayCluster" else MAX_RAYJOB_OR_SERVICE_NAME
    if len(name) > limit:
        errs.append(f"{where}: name longer than {limit} characters")
    if not _DNS1035.match(name):
        errs.append(f"{where}: name is not a DNS-1035 label")
    spec = doc.get("spec", {})
    cluster = _cluster_spec(doc)
    if cluster is not None:
        errs += _cluster_rules(cluster, where)
    if kind == "RayService":
        if cluster is None:
            errs.append(f"{where}: rayClusterConfig missing")
        head_svc = (cluster or {}).get("headGroupSpec", {}).get("headService") or {}
        if head_svc.get("metadata", {}).get("name"):
            errs.append(f"{where}: headService.metadata.name must not be set")
        upgrade = (spec.get("upgradeStrategy") or {}).get("type")
        if upgrade is not None and upgrade not in ("NewClusterWithIncrementalUpgrade", "NewCluster", "None"):
            errs.append(f"{where}: upgradeStrategy.type {upgrade!r} is invalid")
        if spec.get("rayClusterDeletionDelaySeconds", 0) < 0:
            errs.append(f"{where}: rayClusterDeletionDelaySeconds is negative")
        if not spec.get("serveConfigV2"):
            errs.append(f"{where}: serveConfigV2 is empty")
    if kind == "RayJob":
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"):
            errs.append(f"{where}: submissionMode {mode!r} is invalid")
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            errs.append(f"{where}: suspend needs shutdownAfterJobFinishes")
        if spec.get("ttlSecondsAfterFinished", 0) < 0:
            errs.append(f"{where}: ttlSecondsAfterFinished is negative")
        if not spec.get("shutdownAfterJobFinishes") and spec.get("ttlSecondsAfterFinished", 0) > 0:
            errs.append(f"{where}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes")
        selector = spec.get("clusterSelector") or {}
        if cluster is None and not selector:
            errs.append(f"{where}: one of rayClusterSpec or clusterSelector must be set")
        if selector:
            if not selector.get("ray.io/cluster"):
                errs.append(f"{where}: clusterSelector needs ray.io/cluster")
            if mode == "SidecarMode":
                errs.append(f"{where}: clusterSelector is not supported in SidecarMode")
            if (spec.get("backoffLimit") or 0) > 0:
                errs.append(f"{where}: backoffLimit is incompatible with clusterSelector")
        if mode == "InteractiveMode" and (spec.get("backoffLimit") or 0) > 0:
            errs.append(f"{where}: backoffLimit is incompatible with InteractiveMode")
        if mode == "SidecarMode" and (spec.get("submitterPodTemplate") or spec.get("submitterConfig")):
            errs.append(f"{where}: SidecarMode supports neither submitterPodTemplate nor submitterConfig")
        if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
            errs.append(f"{where}: activeDeadlineSeconds must be positive")
        if (spec.get("backoffLimit") or 0) < 0:
            errs.append(f"{where}: backoffLimit is negative")
        if spec.get("runtimeEnvYAML"):
            try:
                if not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
                    errs.append(f"{where}: runtimeEnvYAML is not a mapping")
            except yaml.YAMLError as exc:
                errs.append(f"{where}: runtimeEnvYAML is not YAML: {exc}")
        if not spec.get("entrypoint") and mode != "InteractiveMode":
            errs.append(f"{where}: entrypoint is empty")
        if mode == "K8sJobMode" and spec.get("submitterPodTemplate"):
            pod = spec["submitterPodTemplate"].get("spec", {})
            if pod.get("restartPolicy") not in (None, "Never"):
                errs.append(f"{where}: the submitter pod must not restart (restartPolicy Never)")
    return errs


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, PodTemplateSpec) for every pod template inside a KubeRay object or a workload."""
    out = []
    kind = doc.get("kind")
    if kind in KUBERAY_KINDS:
        cluster = _cluster_spec(doc) or {}
        if cluster.get("headGroupSpec", {}).get("template"):
            out.append((f"{_where(doc)} head", cluster["headGroupSpec"]["template"]))
        for group in cluster.get("workerGroupSpecs", []):
            out.append((f"{_where(doc)} group {group.get('groupName')}", group.get("template", {})))
        if kind == "RayJob" and doc["spec"].get("submitterPodTemplate"):
            out.append((f"{_where(doc)} submitter", doc["spec"]["submitterPodTemplate"]))
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        out.append((_where(doc), doc.get("spec", {}).get("template", {})))
    return out


def core_errors(doc: dict, kube_version: str) -> list[str]:
    """Problems of a core-kind object against Kubernetes ``kube_version``'s schema (strict).

    KubeRay objects contribute their embedded pod templates (as v1 PodTemplate objects) and the
    RayService's serveService (as a v1 Service); other custom kinds are skipped.
    """
    candidates: list[tuple[str, dict]] = []
    api = doc.get("apiVersion", "")
    if doc.get("kind") in KUBERAY_KINDS:
        for where, template in pod_templates(doc):
            candidates.append(
                (
                    where,
                    {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "embedded"}, "template": template},
                )
            )
        serve_svc = doc.get("spec", {}).get("serveService") if doc["kind"] == "RayService" else None
        if serve_svc:
            svc = {
                "apiVersion": "v1",
                "kind": "Service",
                **{k: v for k, v in serve_svc.items() if k not in ("apiVersion", "kind")},
            }
            candidates.append((f"{_where(doc)} serveService", svc))
    elif "." in api.split("/")[0] and not api.startswith(
        ("apps/", "batch/", "policy/", "networking.k8s.io/", "rbac.authorization.k8s.io/", "autoscaling/")
    ):
        return []  # another CRD (ServiceMonitor, PodMonitor): checked by the tests field by field
    else:
        candidates.append((_where(doc), doc))
    errs = []
    for where, obj in candidates:
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            errs.append(f"{where}: {exc.message[:240]} at {path} (Kubernetes {kube_version})")
        except kubernetes_validate.SchemaNotFoundError:
            errs.append(
                f"{where}: no schema for {obj.get('apiVersion')}/{obj.get('kind')} in Kubernetes {kube_version}"
            )
    return errs


def label_errors(doc: dict) -> list[str]:
    """Object names, label keys and values that Kubernetes would reject."""
    errs = []
    meta = doc.get("metadata", {})
    name = meta.get("name", "")
    if not name or len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        errs.append(f"{_where(doc)}: invalid object name {name!r}")
    label_sets = [meta.get("labels") or {}] + [
        (t.get("metadata") or {}).get("labels") or {} for _, t in pod_templates(doc)
    ]
    for labels in label_sets:
        for key, value in labels.items():
            prefix, _, short = key.rpartition("/")
            if len(short) > 63 or not _LABEL_NAME.match(short) or (prefix and not _DNS1123_SUBDOMAIN.match(prefix)):
                errs.append(f"{_where(doc)}: invalid label key {key!r}")
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                errs.append(f"{_where(doc)}: invalid label value {key}={value!r}")
    return errs


def serve_config_errors(text: str) -> list[str]:
    """Problems of a serveConfigV2 document against Ray Serve 2.60's ServeDeploySchema."""
    from pydantic import ValidationError  # Ray Serve's schema models are pydantic
    from ray.serve.schema import ServeDeploySchema

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"serveConfigV2 is not YAML: {exc}"]
    try:
        ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        return [f"serveConfigV2: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


def all_errors(docs: list[dict], *, kube_versions: Iterable[str] = KUBE_VERSIONS) -> list[str]:
    """Every problem of every object: names/labels, core schemas, KubeRay schemas and rules, Serve config."""
    errs: list[str] = []
    for doc in docs:
        errs += label_errors(doc)
        for version in kube_versions:
            errs += core_errors(doc, version)
        errs += kuberay_schema_errors(doc)
        errs += kuberay_semantic_errors(doc)
        if doc.get("kind") == "RayService":
            errs += serve_config_errors(doc["spec"].get("serveConfigV2", ""))
    return errs
