"""The Helm chart renders offline for every acceptance case, lints, and every object validates:
core kinds against Kubernetes' schemas, KubeRay objects field by field against the KubeRay v1.7.0
CRDs and operator rules, the serve config against Ray Serve 2.60 and services/serve_config.yaml."""

from __future__ import annotations

import copy
import importlib.metadata
import re
import shutil
import tomllib

import k8s_checks
import pytest
import yaml
from chart_cases import (
    CASES,
    CHART_DIR,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    REPO,
    by_kind,
    case_values,
    entrypoint_errors,
    one,
)

helm = pytest.importorskip("helm_python")

SERVE_FILE = REPO / "services" / "serve_config.yaml"
#: Where the chart's default serve values differ from services/serve_config.yaml, and why: the file runs
#: Serve on one machine (loopback, local paths, demo auth); in a cluster proxies run on every node, paths
#: come from the chart's mounts ("" = filled in at render time) and the demo mode is off.
CLUSTER_OVERRIDES = {
    ("proxy_location",): "EveryNode",
    ("http_options", "host"): "0.0.0.0",
    ("applications", "lungsearch", "args", "artifacts_dir"): "",
    ("applications", "lungsearch", "args", "milvus_uri"): "",
    ("applications", "lungsearch", "args", "hmac_key_file"): "",
    ("applications", "lungsearch", "args", "tokens_file"): "",
    ("applications", "lungsearch", "args", "insecure_local"): False,
}


def _ray_container(template: dict) -> dict:
    return template["spec"]["containers"][0]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- every case renders and validates --------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_case_renders_and_every_object_validates(render, case):
    docs = render(case_values(case))
    assert docs, "nothing rendered"
    kinds = {d["kind"] for d in docs}
    assert {"RayService", "ConfigMap", "Service", "NetworkPolicy", "PodDisruptionBudget", "ServiceAccount"} <= kinds
    assert "Secret" not in kinds, "the chart must reference Secrets, never carry one"
    errors = k8s_checks.all_errors(docs)
    assert errors == [], "\n".join(errors)
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert "namespace" not in doc["metadata"] or doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("case", CASES)
def test_lint_passes(case):
    report = helm.lint(CHART_DIR, case_values(case), namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    warnings = [m["error"] for m in report["messages"] if m["severity"] >= 2]
    # The Milvus dependency is declared but not vendored (no network here); `helm dependency update`
    # fetches it. Nothing else may warn.
    assert warnings == ["chart directory is missing these dependencies: milvus"]


def test_strict_lint_without_the_milvus_dependency(tmp_path):
    """Strict lint (warnings are errors) of the chart with the dependency stanza removed."""
    copy_dir = tmp_path / "lungsearch"
    shutil.copytree(CHART_DIR, copy_dir, symlinks=False)  # the profiles link becomes real files
    meta = yaml.safe_load((copy_dir / "Chart.yaml").read_text())
    meta.pop("dependencies")
    (copy_dir / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    for case in CASES:
        report = helm.lint(copy_dir, case_values(case), strict=True, namespace=NAMESPACE)
        assert report["errors"] == [], (case, report)
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], (case, report)


def test_every_example_values_file_passes_the_schema(chart):
    assert CI_VALUES, "charts/lungsearch/ci/ has no example values"
    chart.validate_schema({})
    for path in CI_VALUES.values():
        chart.validate_schema(yaml.safe_load(path.read_text()))


# ---- Chart.yaml, versions ------------------------------------------------------------------------


def test_chart_metadata_matches_the_package_and_ray(chart):
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["appVersion"] == project["version"]
    ray_pin = next(d for d in project["optional-dependencies"]["serve"] if d.startswith("ray["))
    ray_version = ray_pin.split("==")[1]
    assert chart.values["rayVersion"] == ray_version == importlib.metadata.version("ray")
    assert meta["annotations"]["lungsearch.io/ray-version"] == ray_version
    assert meta["annotations"]["lungsearch.io/kuberay-version"] == k8s_checks.KUBERAY_VERSION
    (dep,) = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["dependencies"]
    assert (dep["name"], dep["condition"]) == ("milvus", "milvus.enabled")
    assert dep["repository"].startswith("https://")
    # Declared, not vendored: rendering works without it (only our templates), install needs
    # `helm dependency update` first (docs/kubernetes.md).
    assert [d["status"] for d in helm.dependency_list(CHART_DIR)] == ["missing"]


def _values_key_tree(lines: list[str]) -> list[dict]:
    """values.yaml keys as a tree: {"line", "key", "doc" (has its own `# --`), "children"}."""
    root: dict = {"indent": -1, "children": []}
    stack = [root]
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w./-]*):", line)
        if not m:
            continue
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1  # continuation lines of a multi-line `# --` comment
        node = {
            "indent": len(m.group(1)),
            "line": i + 1,
            "key": m.group(2),
            "children": [],
            "doc": j >= 0 and lines[j].strip().startswith("# --"),
        }
        while stack[-1]["indent"] >= node["indent"]:
            stack.pop()
        stack[-1]["children"].append(node)
        stack.append(node)
    return root["children"]


def test_values_are_documented_line_by_line():
    """Every value has a `# --` comment: on itself, on the block it belongs to, or (a section) on each child."""

    def undocumented(node: dict, inherited: bool) -> list[str]:
        if node["doc"] or inherited:
            return [x for c in node["children"] for x in undocumented(c, True)]
        if not node["children"]:
            return [f"line {node['line']}: {node['key']}"]
        return [x for c in node["children"] for x in undocumented(c, False)]

    tree = _values_key_tree((CHART_DIR / "values.yaml").read_text().splitlines())
    assert len(tree) > 15
    assert [x for n in tree for x in undocumented(n, False)] == []


# ---- bad values are rejected with a clear message ------------------------------------------------------

BAD_VALUES = {
    "negative worker replicas": (
        {"ray": {"workers": {"cpu": {"replicas": -1}}}},
        "/ray/workers/cpu/replicas",
        "minimum",
    ),
    "negative serve replicas": (
        {"serve": {"applications": {"lungsearch": {"deployments": {"Gateway": {"num_replicas": -2}}}}}},
        "/serve/applications/lungsearch/deployments/Gateway/num_replicas",
        "minimum: got -2, want 1",
    ),
    "GPU count as a string": (
        {"ray": {"workers": {"gpu": {"gpus": "1"}}}},
        "/ray/workers/gpu/gpus",
        "got string, want integer",
    ),
    "replica GPUs as a string": (
        {
            "serve": {
                "applications": {"lungsearch": {"deployments": {"Encoding": {"ray_actor_options": {"num_gpus": "1"}}}}}
            }
        },
        "/serve/applications/lungsearch/deployments/Encoding/ray_actor_options/num_gpus",
        "got string, want number",
    ),
    "unknown top-level key": ({"replicaCount": 3}, "at ''", "additional properties 'replicaCount' not allowed"),
    "misspelt deployment option": (
        {"serve": {"applications": {"lungsearch": {"deployments": {"Ranking": {"num_replica": 2}}}}}},
        "/serve/applications/lungsearch/deployments/Ranking",
        "additional properties 'num_replica' not allowed",
    ),
    "unknown TLS mode": ({"tls": {"mode": "plaintext"}}, "/tls/mode", "value must be one of"),
    "auth mode typo": ({"ray": {"authMode": "tokens"}}, "/ray/authMode", "value must be one of"),
    "run id with a capital": ({"jobs": {"runId": "Run1"}}, "/jobs/runId", "does not match pattern"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_rejected_with_a_clear_message(chart, render, case):
    values, where, what = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(values)
    message = str(info.value)
    assert where in message and what in message, message
    with pytest.raises(helm.HelmValuesError):  # install/template validate the same way
        render(values)


def test_external_milvus_without_a_uri_fails_with_a_clear_message(render):
    with pytest.raises(helm.HelmRenderError, match="set milvus.enabled=true .* or milvus.uri"):
        render({"milvus": {"enabled": False}})


# ---- KubeRay objects field by field --------------------------------------------------------------------


def test_rayservice_defaults(render):
    docs = render()
    svc = one(docs, "RayService")
    assert svc["apiVersion"] == "ray.io/v1"
    assert svc["metadata"]["name"] == "lungsearch"
    spec = svc["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0"}
    head_c = _ray_container(head["template"])
    assert head_c["name"] == "ray-head" and head_c["image"] == "ghcr.io/lungsearch/lungsearch:0.1.0"
    assert {p["name"]: p["containerPort"] for p in head_c["ports"]} == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "serve": 8000,
        "grpc": 9000,
        "metrics": 8080,
    }
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["cpu"]
    cpu = cluster["workerGroupSpecs"][0]
    assert (cpu["replicas"], cpu["minReplicas"], cpu["maxReplicas"]) == (2, 1, 4)
    worker_c = _ray_container(cpu["template"])
    assert "nvidia.com/gpu" not in worker_c["resources"]["limits"]
    assert {p["name"] for p in worker_c["ports"]} == {"serve", "grpc", "metrics"}
    env = _env(worker_c)
    assert env["LUNGSEARCH_MILVUS_URI"]["value"] == "http://lungsearch-milvus.lungsearch.svc:19530"
    assert env["LUNGSEARCH_ARTIFACTS_DIR"]["value"] == "/mnt/lungsearch/artifacts"
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    mounts = {m["name"]: m["mountPath"] for m in worker_c["volumeMounts"]}
    assert mounts == {"tmp": "/tmp", "dshm": "/dev/shm", "profiles": "/app/configs", "registry": "/mnt/lungsearch"}
    # The gRPC Service is KubeRay's serveService: it follows the live cluster through upgrades.
    serve_svc = spec["serveService"]
    assert serve_svc["metadata"]["name"] == "lungsearch-serve"
    assert {p["name"]: p["port"] for p in serve_svc["spec"]["ports"]} == {"grpc": 9000, "serve": 8000}
    # No RayJob unless asked for.
    assert by_kind(docs, "RayJob") == []
    one(docs, "PersistentVolumeClaim", "lungsearch-registry")
    assert one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("mode", ["throughput", "default"])
def test_serve_mode_env_is_the_runtimes_on_every_serving_container_and_on_no_job(render, mode):
    """ray.serveMode sets Serve's request-path variables on the head and every worker of the serving
    cluster, the same variables lungsearch.runtime starts a local Ray with; the RayJobs (no Serve)
    carry none."""
    from lungsearch.runtime import SERVE_MODES

    want = SERVE_MODES[mode]
    docs = render({"ray": {"serveMode": mode}, "jobs": {"train": {"enabled": True}}})
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        env = _env(_ray_container(template))
        got = {k: v["value"] for k, v in env.items() if k.startswith("RAY_SERVE_")}
        assert got == want, (template["metadata"].get("labels"), got)
    for job in by_kind(docs, "RayJob"):
        for group in [
            job["spec"]["rayClusterSpec"]["headGroupSpec"],
            *job["spec"]["rayClusterSpec"]["workerGroupSpecs"],
        ]:
            assert not [k for k in _env(_ray_container(group["template"])) if k.startswith("RAY_SERVE_")]


def test_serve_config_is_valid_for_ray_serve(render):
    cfg = yaml.safe_load(one(render(), "RayService")["spec"]["serveConfigV2"])
    assert k8s_checks.serve_config_errors(yaml.safe_dump(cfg)) == []
    assert cfg["grpc_options"]["port"] == 9000
    servicers = cfg["grpc_options"]["grpc_servicer_functions"]
    assert sum(f.startswith("lungsearch._proto.v1.") for f in servicers) == 5
    (app,) = cfg["applications"]
    assert app["import_path"] == "services.gateway:app"
    assert app["args"]["milvus_uri"] == "http://lungsearch-milvus.lungsearch.svc:19530"
    assert {d["name"] for d in app["deployments"]} == {"Gateway", "Encoding", "Fusion", "Hashing", "Ranking"}
    # The schema catches what Ray would reject.
    bad = copy.deepcopy(cfg)
    bad["applications"][0]["deployments"][0]["num_replicas"] = 0
    assert k8s_checks.serve_config_errors(yaml.safe_dump(bad))


def test_gpu_values(render):
    docs = render(case_values("gpu"))
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    c = _ray_container(gpu["template"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["template"]["spec"][
        "tolerations"
    ]
    cfg = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])
    deps = {d["name"]: d for d in cfg["applications"][0]["deployments"]}
    assert deps["Encoding"]["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.5}
    assert deps["Encoding"]["num_replicas"] == 2
    assert deps["Gateway"]["ray_actor_options"] == {"num_cpus": 0.2}  # untouched by the override
    job = one(docs, "RayJob")
    assert entrypoint_errors(job["spec"]["entrypoint"]) == []
    assert job["metadata"]["name"] == "lungsearch-train-gpu1"
    assert job["spec"]["entrypoint"] == (
        "python ray_jobs/train.py --config configs/cxr-report.yaml "
        "train.num_workers=2 train.use_gpu=true train.gpus_per_worker=1"
    )
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["groupName"], group["replicas"], group["minReplicas"], group["maxReplicas"]) == ("gpu", 2, 2, 2)
    assert _ray_container(group["template"])["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_rayjobs_for_every_entrypoint(render):
    docs = render(case_values("jobs"))
    jobs = {j["metadata"]["labels"]["lungsearch.io/job"]: j for j in by_kind(docs, "RayJob")}
    assert set(jobs) == {"train", "evaluate", "build-index"}
    expected = {
        "train": "python ray_jobs/train.py --config configs/ct-ild.yaml",
        "evaluate": "python ray_jobs/evaluate.py --config configs/ct-ild.yaml --model ct-ild",
        "build-index": "python ray_jobs/build_index.py --config configs/ct-ild.yaml",
    }
    for key, job in jobs.items():
        spec = job["spec"]
        assert job["metadata"]["name"] == f"lungsearch-{key}-20260101"
        assert spec["entrypoint"] == expected[key]
        assert entrypoint_errors(spec["entrypoint"]) == []
        assert spec["submissionMode"] == "K8sJobMode"
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 600
        assert spec["backoffLimit"] == 0 and spec["submitterConfig"] == {"backoffLimit": 2}
        assert spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
        assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is False
        head_env = _env(_ray_container(spec["rayClusterSpec"]["headGroupSpec"]["template"]))
        assert head_env["LUNGSEARCH_ARTIFACTS_DIR"]["value"] == "s3://lungsearch-models/prod"
        assert _ray_container(spec["rayClusterSpec"]["headGroupSpec"]["template"])["envFrom"] == [
            {"secretRef": {"name": "lungsearch-s3"}}
        ]
        for _, template in k8s_checks.pod_templates(job):
            assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "ray-job"
    assert jobs["build-index"]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
    # Job pods are scraped by the PodMonitor, not the Serve PodDisruptionBudget.
    monitor = one(docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchExpressions"][0]["values"] == ["ray", "ray-job"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_rayjob_other_submission_modes(render):
    for mode in ("HTTPMode", "InteractiveMode", "SidecarMode"):
        docs = render({"jobs": {"submissionMode": mode, "train": {"enabled": True}}})
        job = one(docs, "RayJob")
        assert job["spec"]["submissionMode"] == mode
        assert "submitterPodTemplate" not in job["spec"]
        assert k8s_checks.all_errors(docs, kube_versions=[k8s_checks.KUBE_VERSIONS[-1]]) == []


def test_kuberay_rules_catch_broken_objects(render):
    """The validators are not vacuous: break a rendered object and each layer notices."""
    svc = one(render(), "RayService")
    bad = copy.deepcopy(svc)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 3  # misspelt field
    assert any("replica" in e for e in k8s_checks.kuberay_schema_errors(bad))
    bad = copy.deepcopy(svc)
    bad["spec"]["rayClusterConfig"]["rayVersion"] = "2.40.0"  # token auth needs >= 2.52
    assert any("2.52.0" in e for e in k8s_checks.kuberay_semantic_errors(bad))
    bad = copy.deepcopy(svc)
    bad["metadata"]["name"] = "x" * 48
    assert any("longer than 47" in e for e in k8s_checks.kuberay_semantic_errors(bad))
    bad = copy.deepcopy(svc)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["securityContext"][
        "runAsUser"
    ] = "root"
    assert k8s_checks.kuberay_schema_errors(bad) and k8s_checks.core_errors(bad, "1.30.0")


# ---- Milvus ------------------------------------------------------------------------------------------


def test_in_cluster_milvus(render):
    docs = render(case_values("milvus"))
    uri = "http://vectors.lungsearch.svc:19530"  # the Milvus chart's fullnameOverride
    cfg = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])
    assert cfg["applications"][0]["args"]["milvus_uri"] == uri
    for _, template in k8s_checks.pod_templates(one(docs, "RayService")):
        assert _env(_ray_container(template))["LUNGSEARCH_MILVUS_URI"]["value"] == uri
        assert "LUNGSEARCH_MILVUS_TOKEN" not in _env(_ray_container(template))
    egress = one(docs, "NetworkPolicy", "lungsearch-ray")["spec"]["egress"]
    milvus_rule = next(r for r in egress if r.get("ports") == [{"port": 19530, "protocol": "TCP"}])
    assert milvus_rule["to"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/name": "milvus"}}}
    ]


def test_milvus_name_follows_the_release(render):
    docs = render({}, name="milvus-lungsearch")  # release name containing "milvus": no suffix
    cfg = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])
    assert cfg["applications"][0]["args"]["milvus_uri"] == "http://milvus-lungsearch.lungsearch.svc:19530"


def test_external_milvus_and_secret_references(render):
    docs = render(case_values("external-milvus"))
    for _, template in k8s_checks.pod_templates(one(docs, "RayService")):
        c = _ray_container(template)
        env = _env(c)
        assert env["LUNGSEARCH_MILVUS_URI"]["value"] == "http://milvus.vectors.svc.cluster.local:19530"
        assert env["LUNGSEARCH_MILVUS_TOKEN"] == {
            "name": "LUNGSEARCH_MILVUS_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "lungsearch-milvus", "key": "token"}},
        }
        assert env["LUNGSEARCH_TOKENS_FILE"]["value"] == "/etc/lungsearch/auth/tokens.yaml"
        assert env["LUNGSEARCH_HMAC_KEY_FILE"]["value"] == "/etc/lungsearch/hmac/hmac.key"
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["api-tokens"]["secret"]["secretName"] == "lungsearch-api-tokens"
        assert volumes["hmac-key"]["secret"]["secretName"] == "lungsearch-hmac"
    egress = one(docs, "NetworkPolicy", "lungsearch-ray")["spec"]["egress"]
    milvus_rule = next(r for r in egress if r.get("ports") == [{"port": 19530, "protocol": "TCP"}])
    assert milvus_rule["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "vectors"}}}]
    # ingress-nginx terminates TLS instead of Envoy.
    ingress = one(docs, "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert ingress["spec"]["tls"] == [{"hosts": ["lungsearch.hospital.example"], "secretName": "lungsearch-tls"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "lungsearch-serve", "port": {"name": "grpc"}}
    assert by_kind(docs, "Deployment") == []


# ---- monitoring ----------------------------------------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_service(render):
    docs = render()
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    metrics_svc = one(docs, "Service", "lungsearch-metrics")
    assert metrics_svc["spec"]["clusterIP"] == "None"
    labels = metrics_svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in metrics_svc["spec"]["ports"]}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The metrics Service selects the Ray pods, which expose a "metrics" port.
    svc = one(docs, "RayService")
    for _, template in k8s_checks.pod_templates(svc):
        pod_labels = template["metadata"]["labels"]
        assert all(pod_labels.get(k) == v for k, v in metrics_svc["spec"]["selector"].items())
        assert "metrics" in {p["name"] for p in _ray_container(template)["ports"]}
    assert by_kind(docs, "PodMonitor") == []


def test_monitors_off(render):
    docs = render(case_values("monitors-off"))
    assert by_kind(docs, "ServiceMonitor") == [] and by_kind(docs, "PodMonitor") == []
    ingress_rules = one(docs, "NetworkPolicy", "lungsearch-ray")["spec"]["ingress"]
    assert all({"port": 8080, "protocol": "TCP"} not in r.get("ports", []) for r in ingress_rules)
    # tls.mode=none: no proxy; the gRPC port is open only to the listed peers.
    assert by_kind(docs, "Deployment") == [] and by_kind(docs, "Ingress") == []
    grpc_rule = next(r for r in ingress_rules if r.get("ports") == [{"port": 9000, "protocol": "TCP"}])
    assert grpc_rule["from"] == [{"podSelector": {"matchLabels": {"lungsearch.io/client": "true"}}}]


# ---- TLS, network, security -------------------------------------------------------------------------------


def test_envoy_terminates_tls_in_front_of_serve(render):
    docs = render()
    config = yaml.safe_load(one(docs, "ConfigMap", "lungsearch-envoy")["data"]["envoy.yaml"])
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 8443
    (chain,) = listener["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("DownstreamTlsContext")
    assert tls["common_tls_context"]["alpn_protocols"] == ["h2"]
    assert tls["require_client_certificate"] is False
    (cluster,) = config["static_resources"]["clusters"]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "lungsearch-serve.lungsearch.svc", "port_value": 9000}
    assert (
        "http2_protocol_options"
        in cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
            "explicit_http_config"
        ]
    )
    deploy = one(docs, "Deployment", "lungsearch-envoy")
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "lungsearch-tls"
    svc = one(docs, "Service", "lungsearch-grpc")
    assert svc["spec"]["ports"][0]["port"] == 443 and svc["spec"]["ports"][0]["targetPort"] == "grpc-tls"
    # Mutual TLS on request.
    mtls = render({"tls": {"clientCaSecretName": "hospital-ca"}})
    config = yaml.safe_load(one(mtls, "ConfigMap", "lungsearch-envoy")["data"]["envoy.yaml"])
    tls = config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"] == "/etc/envoy/client-ca/ca.crt"


def test_network_policy_lets_only_grpc_in(render):
    docs = render()
    policy = one(docs, "NetworkPolicy", "lungsearch-ray")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ray_pods = {
        "matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "In", "values": ["ray", "ray-job"]}],
        "matchLabels": {"app.kubernetes.io/name": "lungsearch", "app.kubernetes.io/instance": RELEASE},
    }
    assert policy["podSelector"] == ray_pods
    external = [r for r in policy["ingress"] if r.get("from") != [{"podSelector": ray_pods}]]
    by_port = {tuple(p["port"] for p in r["ports"]): r["from"] for r in external}
    assert set(by_port) == {(9000,), (8265, 52365, 8000), (8080,)}
    assert by_port[(9000,)] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "lungsearch",
                    "app.kubernetes.io/instance": RELEASE,
                    "app.kubernetes.io/component": "tls-proxy",
                }
            }
        }
    ]
    assert by_port[(8265, 52365, 8000)] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}}
    ]
    envoy = one(docs, "NetworkPolicy", "lungsearch-envoy")["spec"]
    assert envoy["ingress"] == [{"ports": [{"port": 8443, "protocol": "TCP"}]}]
    assert {"port": 9000, "protocol": "TCP"} in envoy["egress"][1]["ports"]


def test_pod_disruption_budgets(render):
    docs = render()
    workers = one(docs, "PodDisruptionBudget", "lungsearch-ray-workers")["spec"]
    assert workers["maxUnavailable"] == 1
    assert workers["selector"]["matchLabels"]["ray.io/node-type"] == "worker"
    assert workers["selector"]["matchLabels"]["app.kubernetes.io/component"] == "ray"
    one(docs, "PodDisruptionBudget", "lungsearch-envoy")
    assert by_kind(render({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget") == []


@pytest.mark.parametrize("case", CASES)
def test_security_contexts(render, case):
    docs = render(case_values(case))
    templates = [t for d in docs for t in k8s_checks.pod_templates(d)]
    assert templates
    for where, template in templates:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        head_with_autoscaler = where.endswith(" head") and where.startswith("RayService")
        assert pod["automountServiceAccountToken"] is head_with_autoscaler, where
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert "resources" in c and c["resources"]["limits"], where


def test_autoscaler_rbac(render):
    docs = render()
    role = one(docs, "Role", "lungsearch-autoscaler")
    assert {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "patch"]} in role["rules"]
    binding = one(docs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lungsearch", "namespace": NAMESPACE}]
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    off = render({"ray": {"autoscaling": {"enabled": False}}})
    assert by_kind(off, "Role") == []
    assert k8s_checks.all_errors(off, kube_versions=[k8s_checks.KUBE_VERSIONS[-1]]) == []


def test_long_release_names_are_truncated_for_kuberay(render):
    name = "a" * 53  # Helm's longest release name
    docs = render({"jobs": {"runId": "abcdefghijkl", "buildIndex": {"enabled": True}}}, name=name)
    assert one(docs, "RayService")["metadata"]["name"] == "a" * 47
    job = one(docs, "RayJob")
    assert len(job["metadata"]["name"]) <= 47 and job["metadata"]["name"].endswith("-build-index-abcdefghijkl")
    assert k8s_checks.all_errors(docs, kube_versions=[k8s_checks.KUBE_VERSIONS[-1]]) == []


# ---- one source of truth ------------------------------------------------------------------------------


def _named(items: list[dict]) -> dict[str, dict]:
    out = {}
    for item in items:
        item = dict(item)
        out[item.pop("name")] = item
    return out


def _normalised(cfg: dict) -> dict:
    """Serve config with applications and deployments keyed by name (Ray treats both as sets by name)."""
    cfg = copy.deepcopy(cfg)
    apps = _named(cfg.pop("applications"))
    for app in apps.values():
        app["deployments"] = _named(app.get("deployments", []))
    cfg["applications"] = apps
    return cfg


def _serve_file() -> dict:
    assert SERVE_FILE.is_file(), f"{SERVE_FILE} is missing: the chart's serve config must follow it"
    return yaml.safe_load(SERVE_FILE.read_text())


def _as_replacement(defaults: dict, new: dict) -> dict:
    """``new`` as Helm user values that replace ``defaults`` instead of merging into them: keys only in
    the defaults are set to null, which Helm's value coalescing deletes."""
    out = {k: None for k in defaults if k not in new}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            out[key] = _as_replacement(defaults[key], value)
        else:
            out[key] = value
    return out


def test_rendered_serve_config_equals_services_serve_config(chart, render):
    """For values equal to services/serve_config.yaml, serveConfigV2 is that file (one source of truth)."""
    source = _serve_file()
    values = {"serve": _as_replacement(chart.values["serve"], _normalised(source))}
    rendered = yaml.safe_load(one(render(values), "RayService")["spec"]["serveConfigV2"])
    assert _normalised(rendered) == _normalised(source)
    assert k8s_checks.serve_config_errors(SERVE_FILE.read_text()) == []


def test_chart_default_serve_values_follow_services_serve_config(chart):
    """values.yaml's serve section is the file except CLUSTER_OVERRIDES (re-align it when the file changes)."""
    expected = _normalised(_serve_file())
    for path, value in CLUSTER_OVERRIDES.items():
        node = expected
        for key in path[:-1]:
            node = node[key]
        assert path[-1] in node, f"services/serve_config.yaml no longer has {'.'.join(path)}: update CLUSTER_OVERRIDES"
        node[path[-1]] = value
    assert chart.values["serve"] == expected, (
        "re-align charts/lungsearch/values.yaml `serve:` with services/serve_config.yaml"
    )


def test_cluster_args_are_filled_in(render):
    cfg = yaml.safe_load(one(render(), "RayService")["spec"]["serveConfigV2"])
    args = cfg["applications"][0]["args"]
    assert args["artifacts_dir"] == "/mnt/lungsearch/artifacts"
    assert args["milvus_uri"] == "http://lungsearch-milvus.lungsearch.svc:19530"
    assert args["hmac_key_file"] == "/mnt/lungsearch/data/hmac.key"  # on the shared volume: one key for all
    assert args["tokens_file"] == "" and args["insecure_local"] is False
    assert cfg["proxy_location"] == "EveryNode" and cfg["http_options"]["host"] == "0.0.0.0"
    cfg = yaml.safe_load(one(render(case_values("external-milvus")), "RayService")["spec"]["serveConfigV2"])
    args = cfg["applications"][0]["args"]
    assert args["hmac_key_file"] == "/etc/lungsearch/hmac/hmac.key"
    assert args["tokens_file"] == "/etc/lungsearch/auth/tokens.yaml"
    assert args["milvus_uri"] == "http://milvus.vectors.svc.cluster.local:19530"


def test_profiles_configmap_holds_every_profile(render):
    cm = one(render(), "ConfigMap", "lungsearch-profiles")
    expected = {p.name: p.read_text() for p in sorted((REPO / "configs").glob("*.yaml"))}
    assert cm["data"] == expected


def test_a_changed_profile_rolls_the_ray_cluster(tmp_path):
    """The profiles' checksum sits in the Ray pod templates: editing a profile changes rayClusterConfig,
    which is what makes KubeRay roll a new cluster."""
    copy_dir = tmp_path / "lungsearch"
    shutil.copytree(CHART_DIR, copy_dir, symlinks=False)

    def checksums() -> set[str]:
        with helm.Chart.load(copy_dir) as chart:
            docs = k8s_checks.load_docs(
                [chart.render(values={}, name=RELEASE, namespace=NAMESPACE)["lungsearch/templates/rayservice.yaml"]]
            )
        return {
            t["metadata"]["annotations"]["lungsearch.io/profiles-checksum"]
            for _, t in k8s_checks.pod_templates(one(docs, "RayService"))
        }

    before = checksums()
    assert len(before) == 1 and re.fullmatch(r"[0-9a-f]{16}", next(iter(before)))
    profile = copy_dir / "files" / "configs" / "cxr-hash.yaml"
    profile.write_text(profile.read_text() + "# tuned\n")
    after = checksums()
    assert len(after) == 1 and after != before


def test_notes_tell_how_to_reach_grpc(notes):
    text = notes()
    assert "port-forward svc/lungsearch-grpc 9443:443" in text
    assert "LungSearchClient(" in text and 'ca_file="ca.crt"' in text and 'model="cxr-hash"' in text
    assert "refuses every call" in text
    text = notes({"tls": {"mode": "none"}})
    assert "port-forward svc/lungsearch-serve 9000:9000" in text
