"""The Kubeflow pipeline's steps as plain Python functions (no kfp import needed to use or test them).

The pipeline (k8s/kubeflow/pipeline.py) wraps each public function here as a KFP lightweight component and
ships the private helpers with it (``additional_funcs``), so every function imports what it uses inside its
body and refers to nothing else at module level. The KFP pods are thin Kubernetes API clients: the data
work runs in RayJobs in the lungsearch namespace (which holds the registry volume), and each RayJob ends by
printing one ``LUNGSEARCH_RESULT {json}`` line that the next step reads from the submitter's log.

Steps: ``rayjob_manifest`` (build a RayJob for prepare/train/evaluate/build-index) -> ``run_rayjob``
(create it, wait, return the job's result JSON) -> ``collect_metrics`` (evaluation metrics as KFP metrics,
report as a Markdown artifact, a pass/fail gate) -> ``rollout_rayservice`` (pin ``profile@version`` in the
RayService's serve config; KubeRay redeploys the Serve application).
"""

try:  # kfp only exists in .venv-kfp and in the component containers (it pins its own protobuf).
    from kfp.dsl import Markdown, Metrics, Output
except ImportError:  # the main venv: stand-ins so the annotations below evaluate; tests pass plain objects.

    class Output:  # noqa: D101 - a stand-in for kfp.dsl.Output
        def __class_getitem__(cls, item):
            return item

    class Markdown:  # noqa: D101
        pass

    class Metrics:  # noqa: D101
        pass


__all__ = [
    "RESULT_MARKER",
    "STEPS",
    "rayjob_manifest",
    "run_rayjob",
    "collect_metrics",
    "rollout_rayservice",
    "helpers",
]

#: The line prefix a RayJob prints its result JSON after (see _step_runner_code).
RESULT_MARKER = "LUNGSEARCH_RESULT "
#: The RayJob steps of the pipeline.
STEPS = ("prepare", "train", "evaluate", "build-index")


# ---- helpers shipped with every component (self-contained: imports inside) ----------------------------


def _dataset_overrides(dataset_uri: str) -> list:
    """Profile overrides for a dataset: "phantom" (or "") keeps the profile's built-in phantoms;
    "<source>:<path>" points a real dataset adapter (lungsearch.config.DataConfig.source) at a folder."""
    sources = (
        "phantom",
        "nih",
        "openi",
        "covid19-radiography",
        "chexpert",
        "mimic-cxr",
        "ild-ct",
        "rsna-pneumonia",
        "covidx",
        "folder",
    )
    uri = (dataset_uri or "").strip()
    if uri in ("", "phantom"):
        return []
    source, sep, root = uri.partition(":")
    if not sep or source not in sources or source == "phantom" or not root:
        raise ValueError(
            f"dataset_uri {dataset_uri!r}: expected 'phantom' or '<source>:<path>' with source one of "
            f"{', '.join(s for s in sources if s != 'phantom')}"
        )
    if not (root.startswith("/") or "://" in root):
        raise ValueError(f"dataset_uri {dataset_uri!r}: the path must be absolute (a mounted volume) or a URI")
    return [f"data.source={source}", f"data.root={root}"]


def _default_commands() -> dict:
    """Command templates of the ray_jobs entry points ({profile}, {version}, {overrides} are filled in); the
    scripts are the RayJob spec's."""
    script = {step: job["script"] for step, job in _rayjob_spec()["jobs"].items()}
    config = " --config configs/{profile}.yaml"
    return {
        "prepare": "",  # the step runner prepares the data itself (lungsearch.data.load_records)
        "train": f"python {script['train']}" + config + " {overrides}",
        # The model card carries the training config (dataset included): no overrides needed after training.
        "evaluate": f"python {script['evaluate']}" + config + " --model {profile}@{version}",
        "build-index": f"python {script['build-index']}" + config + " --model {profile}@{version}",
    }


def _step_runner_code() -> str:
    """Python run by every RayJob driver: run the step's command (no shell) with its output passed through,
    then print the ``LUNGSEARCH_RESULT`` line built from the JSON summary the ray_jobs script prints last.

    argv: step, profile, version ("-" if none yet), then the command.
    """
    return r'''
import collections, json, os, pathlib, subprocess, sys
step, profile, version, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
overrides = [a for a in cmd if "=" in a and not a.startswith("-")]
result = {"step": step, "profile": profile}

def last_json(lines):
    """The last JSON object the command printed (ray_jobs scripts end with an indented summary)."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return json.loads("".join(lines[i:]))
            except ValueError:
                continue
    return {}

summary = {}
if step == "prepare" and cmd == overrides:  # no command of its own: prepare the profile's dataset here
    from lungsearch.config import load_profile
    from lungsearch.data import load_records
    cfg = load_profile(profile, overrides=overrides)
    records = load_records(cfg.data)
    result.update(cases=len(records), synthetic_data=cfg.data.source == "phantom", source=cfg.data.source)
else:
    tail = collections.deque(maxlen=4000)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # pass the job's output through as it comes (training runs for hours)
        sys.stdout.write(line)
        tail.append(line)
    if proc.wait() != 0:
        sys.exit(f"{step} command exited with status {proc.returncode}")
    summary = last_json(list(tail))
if step == "train":
    if summary.get("folds"):
        sys.exit("a K-fold run registers no model: the pipeline trains one split (set data.folds=1)")
    ref = summary.get("model") or ""
    if "@" in ref:
        version = ref.split("@", 1)[1]
    else:  # no summary line: the newest registered version of the profile (versions sort by time)
        from lungsearch.registry import list_cards
        cards = list_cards(profile=profile)
        if not cards:
            sys.exit("training finished but the registry has no model for " + profile)
        version = max(cards, key=lambda c: c.version).version
    result.update(synthetic_data=summary.get("synthetic_data"), metrics=summary.get("metrics", {}))
if step == "evaluate":
    metrics_file = pathlib.Path(summary.get("report_dir") or "/nonexistent") / "metrics.json"
    if not metrics_file.is_file():  # no summary: look where evaluate.py writes by default
        artifacts = pathlib.Path(os.environ.get("LUNGSEARCH_ARTIFACTS_DIR", "artifacts"))
        places = [artifacts / "reports" / profile, artifacts / profile / version]
        found = [f for place in places if place.is_dir() for f in place.rglob("metrics.json") if version in str(f)]
        if not found:
            sys.exit("evaluation finished but no metrics.json of this model version was found")
        metrics_file = max(found, key=lambda f: f.stat().st_mtime)
    result["metrics"] = json.loads(metrics_file.read_text())
    report = metrics_file.with_name("report.md")
    result["report"] = report.read_text()[:200000] if report.is_file() else ""
    result["report_dir"] = str(metrics_file.parent)
if step == "build-index":
    keys = ("collection", "cases", "inserted", "updated", "count_in_store")
    result["index"] = {k: summary[k] for k in keys if k in summary}
result["version"] = version
print("LUNGSEARCH_RESULT " + json.dumps(result, sort_keys=True, default=str), flush=True)
'''


def _kube_request(
    method: str,
    path: str,
    body=None,
    *,
    content_type: str = "application/json",
    api_server: str = "",
    token: str = "",
    ca_file: str = "",
    raw: bool = False,
    timeout: float = 30.0,
):
    """One Kubernetes API call (in-cluster service account by default). Returns the decoded JSON (or text
    when ``raw``); raises RuntimeError with the API's status message on an HTTP error."""
    import json
    import os
    import ssl
    import urllib.error
    import urllib.request

    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    if not api_server:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset) and no api_server given")
        api_server = f"https://{host}:{port}"
        ca_file = ca_file or f"{sa_dir}/ca.crt"
    if not token and os.path.exists(f"{sa_dir}/token"):
        with open(f"{sa_dir}/token") as fh:
            token = fh.read().strip()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api_server.rstrip("/") + path, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=ca_file or None) if api_server.startswith("https") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except ValueError:
            pass
        raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail[:300]}") from None
    return text if raw else json.loads(text or "{}")


# ---- the RayJob spec: generated by tools/gen_rayjobs.py from k8s/rayjob-spec.yaml; do not edit -------------
# fmt: off
def _rayjob_spec() -> dict:
    """k8s/rayjob-spec.yaml (without the descriptions and the interactive cluster), as a literal:
    a KFP step pod has no repository to read the file from."""
    return (
        {'image': 'ghcr.io/lungsearch/lungsearch:0.1.0',
         'rayVersion': '2.60.0',
         'workingDir': '/app',
         'authMode': 'token',
         'serviceAccountName': 'lungsearch-ray',
         'registryClaim': 'lungsearch-registry',
         'registryMountPath': '/mnt/lungsearch',
         'milvusUri': 'http://lungsearch-milvus:19530',
         'milvusTokenSecret': {'name': 'lungsearch-milvus', 'key': 'token'},
         'jobs': {'train': {'script': 'ray_jobs/train.py', 'profile': 'cxr-report'},
                  'evaluate': {'script': 'ray_jobs/evaluate.py', 'profile': 'cxr-report'},
                  'build-index': {'script': 'ray_jobs/build_index.py', 'profile': 'cxr-report'},
                  'reproduce': {'script': 'ray_jobs/reproduce.py', 'profile': 'cxr-report'}},
         'rayjob': {'submissionMode': 'K8sJobMode',
                    'shutdownAfterJobFinishes': True,
                    'ttlSecondsAfterFinished': 600,
                    'activeDeadlineSeconds': 86400,
                    'backoffLimit': 0,
                    'submitterBackoffLimit': 2,
                    'workerGroup': 'cpu',
                    'replicas': 1},
         'submitter': {'resources': {'requests': {'cpu': '100m', 'memory': '256Mi'},
                                     'limits': {'cpu': '500m', 'memory': '512Mi'}},
                       'tmpSize': '1Gi'},
         'pod': {'securityContext': {'runAsNonRoot': True,
                                     'runAsUser': 1000,
                                     'runAsGroup': 1000,
                                     'fsGroup': 1000,
                                     'seccompProfile': {'type': 'RuntimeDefault'}},
                 'containerSecurityContext': {'allowPrivilegeEscalation': False,
                                              'readOnlyRootFilesystem': True,
                                              'capabilities': {'drop': ['ALL']}},
                 'env': {'HF_HUB_OFFLINE': '1',
                         'TRANSFORMERS_OFFLINE': '1',
                         'RAY_USAGE_STATS_ENABLED': '0',
                         'HOME': '/tmp/home',
                         'MPLCONFIGDIR': '/tmp/matplotlib',
                         'PYTHONDONTWRITEBYTECODE': '1'},
                 'tmpSize': '20Gi',
                 'shmSize': '2Gi',
                 'metricsPort': 8080},
         'head': {'rayStartParams': {'num-cpus': '0'},
                  'resources': {'requests': {'cpu': '2', 'memory': '8Gi'}, 'limits': {'cpu': '2', 'memory': '8Gi'}}},
         'workerGroups': {'cpu': {'resources': {'requests': {'cpu': '4', 'memory': '16Gi'},
                                                'limits': {'cpu': '4', 'memory': '16Gi'}}},
                          'gpu': {'gpus': 1,
                                  'resources': {'requests': {'cpu': '8', 'memory': '64Gi'},
                                                'limits': {'cpu': '8', 'memory': '64Gi'}},
                                  'shmSize': '16Gi',
                                  'nodeSelector': {'nvidia.com/gpu.present': 'true'},
                                  'tolerations': [{'key': 'nvidia.com/gpu',
                                                   'operator': 'Exists',
                                                   'effect': 'NoSchedule'}]}},
         'kubeflow': {'ttlSecondsAfterFinished': 3600, 'activeDeadlineSeconds': 172800}}
    )
# fmt: on
# ---- end of the generated block ----------------------------------------------------------------------------


def _ray_pod(
    spec: dict,
    role: str,
    component: str,
    group: str = "",
    *,
    image: str = "",
    registry_claim: str = "",
    milvus_uri: str = "",
    resources=None,
    gpus=None,
    api_access: bool = False,
) -> dict:
    """A Ray pod template from the RayJob spec (k8s/rayjob-spec.yaml): the head (``role`` "head") or a pod
    of the worker group ``group``; non-root, read-only root, the registry mounted.

    ``image``, ``registry_claim``, ``milvus_uri``, ``resources`` and ``gpus`` override the spec's (the pipeline's
    parameters); ``api_access`` leaves the service account to KubeRay and mounts its token (the interactive
    cluster's head, whose autoscaler sidecar talks to the API)."""
    import copy

    pod = spec["pod"]
    settings = spec["head"] if role == "head" else spec["workerGroups"][group]
    gpus = settings.get("gpus", 0) if gpus is None else gpus
    mount = spec["registryMountPath"]
    env = [
        {"name": "LUNGSEARCH_ARTIFACTS_DIR", "value": f"{mount}/artifacts"},
        {"name": "LUNGSEARCH_DATA_DIR", "value": f"{mount}/data"},
        {"name": "LUNGSEARCH_HMAC_KEY_FILE", "value": f"{mount}/data/hmac.key"},
        {"name": "LUNGSEARCH_MILVUS_URI", "value": milvus_uri or spec["milvusUri"]},
        # Optional: a Milvus without authentication has no such Secret.
        {
            "name": "LUNGSEARCH_MILVUS_TOKEN",
            "valueFrom": {"secretKeyRef": {**spec["milvusTokenSecret"], "optional": True}},
        },
    ] + [{"name": name, "value": value} for name, value in pod["env"].items()]
    resources = copy.deepcopy(resources or settings["resources"])
    if gpus > 0:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = gpus
    ports = [{"name": "metrics", "containerPort": pod["metricsPort"]}]
    if role == "head":
        ports = [
            {"name": "gcs-server", "containerPort": 6379},
            {"name": "dashboard", "containerPort": 8265},
            {"name": "client", "containerPort": 10001},
        ] + ports
    out = {}
    if not api_access:
        out = {"serviceAccountName": spec["serviceAccountName"], "automountServiceAccountToken": False}
    out.update(
        {
            "securityContext": copy.deepcopy(pod["securityContext"]),
            "containers": [
                {
                    "name": f"ray-{role}",
                    "image": image or spec["image"],
                    "workingDir": spec["workingDir"],
                    "env": env,
                    "ports": ports,
                    "resources": resources,
                    "securityContext": copy.deepcopy(pod["containerSecurityContext"]),
                    "volumeMounts": [
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "dshm", "mountPath": "/dev/shm"},
                        {"name": "registry", "mountPath": mount},
                    ],
                }
            ],
            "volumes": [
                {"name": "tmp", "emptyDir": {"sizeLimit": pod["tmpSize"]}},
                {
                    "name": "dshm",
                    "emptyDir": {"medium": "Memory", "sizeLimit": settings.get("shmSize", pod["shmSize"])},
                },
                {"name": "registry", "persistentVolumeClaim": {"claimName": registry_claim or spec["registryClaim"]}},
            ],
        }
    )
    for key in ("tolerations", "nodeSelector"):  # where the group's pods may run (GPU nodes)
        if settings.get(key):
            out[key] = copy.deepcopy(settings[key])
    labels = {"app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "lungsearch"}
    return {"metadata": {"labels": labels}, "spec": out}


def _rayjob(
    spec: dict,
    name: str,
    labels: dict,
    entrypoint: str,
    *,
    group: str = "",
    replicas: int = 0,
    namespace: str = "",
    image: str = "",
    registry_claim: str = "",
    milvus_uri: str = "",
    worker_resources=None,
    gpus=None,
    settings=None,
) -> dict:
    """A RayJob (ray.io/v1, KubeRay v1.7) from the RayJob spec: ``entrypoint`` on a Ray cluster of its own
    (the head and ``replicas`` pods of worker group ``group``; the spec's by default), deleted after the job.
    ``settings`` overrides the spec's job settings (``rayjob:``, e.g. the pipeline's ``kubeflow:``); the other
    keyword arguments are :func:`_ray_pod`'s."""
    import copy

    job = {**spec["rayjob"], **(settings or {})}
    group = group or job["workerGroup"]
    replicas = replicas or job["replicas"]
    pods = {"image": image, "registry_claim": registry_claim, "milvus_uri": milvus_uri}
    security = spec["pod"]
    submitter = {
        "metadata": {"labels": {"app.kubernetes.io/component": "ray-job", "app.kubernetes.io/part-of": "lungsearch"}},
        "spec": {
            # KubeRay fills in the command (`ray job submit`); the pod needs no API token.
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": copy.deepcopy(security["securityContext"]),
            "containers": [
                {
                    "name": "ray-job-submitter",
                    "image": image or spec["image"],
                    "env": [{"name": "HOME", "value": "/tmp/home"}],
                    "resources": copy.deepcopy(spec["submitter"]["resources"]),
                    "securityContext": copy.deepcopy(security["containerSecurityContext"]),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": spec["submitter"]["tmpSize"]}}],
        },
    }
    metadata = {"name": name, **({"namespace": namespace} if namespace else {}), "labels": dict(labels)}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": entrypoint,
            "submissionMode": job["submissionMode"],
            "shutdownAfterJobFinishes": job["shutdownAfterJobFinishes"],
            "ttlSecondsAfterFinished": job["ttlSecondsAfterFinished"],
            "activeDeadlineSeconds": job["activeDeadlineSeconds"],
            "backoffLimit": job["backoffLimit"],
            "submitterConfig": {"backoffLimit": job["submitterBackoffLimit"]},
            "submitterPodTemplate": submitter,
            "rayClusterSpec": {
                "rayVersion": spec["rayVersion"],
                "authOptions": {"mode": spec["authMode"]},
                "enableInTreeAutoscaling": False,
                "headGroupSpec": {
                    "rayStartParams": dict(spec["head"]["rayStartParams"]),
                    "template": _ray_pod(spec, "head", "ray-job", **pods),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": group,
                        "replicas": replicas,
                        "minReplicas": replicas,
                        "maxReplicas": replicas,
                        "rayStartParams": {},
                        "template": _ray_pod(
                            spec, "worker", "ray-job", group, resources=worker_resources, gpus=gpus, **pods
                        ),
                    }
                ],
            },
        },
    }


def _flatten_metrics(obj, prefix: str = "") -> dict:
    """Finite numbers of a (nested) metrics document as {"a.b": float}; booleans and text are skipped."""
    import math

    out = {}
    if isinstance(obj, dict):
        for key in sorted(obj):
            out.update(_flatten_metrics(obj[key], f"{prefix}{key}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix[:-1]] = float(obj)
    return out


def _parse_result(log_text: str) -> dict:
    """The JSON of the last ``LUNGSEARCH_RESULT`` line of a job log."""
    import json

    lines = [line for line in log_text.splitlines() if line.startswith("LUNGSEARCH_RESULT ")]
    if not lines:
        raise RuntimeError("the job log has no LUNGSEARCH_RESULT line")
    return json.loads(lines[-1][len("LUNGSEARCH_RESULT ") :])


def _pin_profile(serve_config: str, app_name: str, profile: str, version: str) -> str:
    """serveConfigV2 with ``profile@version`` in the application's ``args.profiles`` (replacing any
    other version of the profile, appended if the profile was not served)."""
    import yaml

    cfg = yaml.safe_load(serve_config) or {}
    apps = [a for a in cfg.get("applications", []) if a.get("name") == app_name]
    if not apps:
        raise ValueError(f"the serve config has no application {app_name!r}")
    args = apps[0].setdefault("args", {})
    pinned = f"{profile}@{version}"
    entries, placed = [], False
    for entry in args.get("profiles", []):
        if str(entry).split("@", 1)[0] != profile:
            entries.append(entry)
        elif not placed:  # the profile keeps its position; duplicates of it go
            entries.append(pinned)
            placed = True
    if not placed:
        entries.append(pinned)
    args["profiles"] = entries
    return yaml.safe_dump(cfg, sort_keys=False)


def helpers() -> list:
    """The private helpers the components call (``additional_funcs`` of every component)."""
    return [
        _dataset_overrides,
        _default_commands,
        _step_runner_code,
        _kube_request,
        _rayjob_spec,
        _ray_pod,
        _rayjob,
        _flatten_metrics,
        _parse_result,
        _pin_profile,
    ]


# ---- components -------------------------------------------------------------------------------------


def rayjob_manifest(
    step: str,
    profile: str,
    dataset_uri: str,
    num_workers: int,
    gpus_per_worker: int,
    run_id: str,
    upstream_result: str = "",
    namespace: str = "lungsearch",
    image: str = "",
    registry_claim: str = "",
    milvus_uri: str = "",
    worker_cpus: int = 0,
    worker_memory: str = "",
    command_template: str = "",
) -> str:
    """A RayJob (ray.io/v1, KubeRay v1.7) running one lifecycle step on its own short-lived Ray cluster,
    built from the RayJob spec (k8s/rayjob-spec.yaml, the same as k8s/base's RayJobs) with the pipeline's
    parameters and its ``kubeflow:`` settings.

    Args:
        step: prepare, train, evaluate or build-index.
        profile: a profile of configs/ (e.g. cxr-report).
        dataset_uri: "phantom" or "<source>:<path>" (see ``_dataset_overrides``).
        num_workers: Ray Train workers (train) and worker pods (train, build-index).
        gpus_per_worker: GPUs per worker pod; 0 = CPU only.
        run_id: the pipeline run (names the RayJob: lungsearch-<step>-<8 chars>).
        upstream_result: the training step's result JSON (evaluate/build-index read the model version).
        namespace, image, registry_claim, milvus_uri: where and what the job runs with ("" = the spec's).
        worker_cpus, worker_memory: per CPU worker pod (a GPU pod gets twice the CPUs and 4x the memory);
            0 and "" = the spec's worker group (cpu, or gpu with GPUs).
        command_template: override of the step's command (placeholders {profile}, {version}, {overrides}).

    Returns:
        The manifest as JSON.

    Raises:
        ValueError: unknown step, bad dataset_uri, negative counts, or no model version for a step that needs one.
    """
    import json
    import re
    import shlex

    if step not in ("prepare", "train", "evaluate", "build-index"):
        raise ValueError(f"step {step!r}: expected prepare, train, evaluate or build-index")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", profile or ""):
        raise ValueError(f"profile {profile!r}: expected a configs/<profile>.yaml name")
    if num_workers < 1 or gpus_per_worker < 0:
        raise ValueError("num_workers must be >= 1 and gpus_per_worker >= 0")
    overrides = _dataset_overrides(dataset_uri)
    if step == "train":
        overrides += [f"train.num_workers={num_workers}", f"train.use_gpu={'true' if gpus_per_worker > 0 else 'false'}"]
        if gpus_per_worker > 0:
            overrides.append(f"train.gpus_per_worker={gpus_per_worker}")
    version = ""
    if step in ("evaluate", "build-index"):
        version = str(json.loads(upstream_result or "{}").get("version", ""))
        if not version:
            raise ValueError(f"step {step} needs the training result's model version (upstream_result)")
    template = command_template or _default_commands()[step]
    # Plain replacement, not str.format: a custom command may carry braces of its own (Python, JSON).
    filled = {
        "{profile}": profile,
        "{version}": version or "latest",
        "{overrides}": " ".join(shlex.quote(o) for o in overrides),
    }
    for placeholder, value in filled.items():
        template = template.replace(placeholder, value)
    command = shlex.split(template)
    if step == "prepare" and not command:
        command = list(overrides)  # the step runner reads overrides from its arguments
    argv = ["python", "-c", _step_runner_code(), step, profile, version or "-", *command]
    # KubeRay pastes the entrypoint into a shell line and `ray job submit` re-joins it with shlex: quoted
    # tokens survive both, so the driver gets exactly this argv.
    entrypoint = " ".join(shlex.quote(a) for a in argv)

    run = re.sub(r"[^a-z0-9]", "", run_id.lower())[:8] or "run"
    spec = _rayjob_spec()
    workers = {"prepare": 1, "train": num_workers, "evaluate": 1, "build-index": num_workers}[step]
    gpus = 0 if step == "prepare" else gpus_per_worker
    group = "gpu" if gpus else "cpu"
    worker_resources = None  # the spec's group
    if worker_cpus or worker_memory:
        default = spec["workerGroups"]["cpu"]["resources"]["requests"]
        cpus, memory = worker_cpus or int(default["cpu"]), worker_memory or default["memory"]
        if gpus:
            cpus *= 2
            number = re.match(r"(\d+)(.*)", memory)
            memory = f"{int(number.group(1)) * 4}{number.group(2)}" if number else memory
        amount = {"cpu": str(cpus), "memory": memory}
        worker_resources = {"requests": dict(amount), "limits": dict(amount)}
    labels = {
        "app.kubernetes.io/component": "ray-job",
        "app.kubernetes.io/part-of": "lungsearch",
        "app.kubernetes.io/managed-by": "kubeflow-pipelines",
        "lungsearch.io/job": step,
        "lungsearch.io/profile": profile,
        "lungsearch.io/run": run,
    }
    manifest = _rayjob(
        spec,
        f"lungsearch-{step}-{run}",
        labels,
        entrypoint,
        group=group,
        replicas=workers,
        namespace=namespace,
        image=image,
        registry_claim=registry_claim,
        milvus_uri=milvus_uri,
        worker_resources=worker_resources,
        gpus=gpus,
        settings=spec["kubeflow"],
    )
    return json.dumps(manifest, sort_keys=True)


def run_rayjob(
    manifest: str, timeout_s: int = 172800, poll_s: int = 15, api_server: str = "", token: str = "", ca_file: str = ""
) -> str:
    """Create the RayJob (or adopt it if a retried step created it already), wait until it finishes, and
    return its result JSON (the ``LUNGSEARCH_RESULT`` line of the submitter's log).

    Raises:
        RuntimeError: the job failed or stopped, or its log has no result line.
        TimeoutError: not finished within ``timeout_s``.
    """
    import json
    import time

    obj = json.loads(manifest)
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    api = {"api_server": api_server, "token": token, "ca_file": ca_file}
    base = f"/apis/ray.io/v1/namespaces/{ns}/rayjobs"
    try:
        _kube_request("POST", base, obj, **api)
        print(f"created RayJob {ns}/{name}", flush=True)
    except RuntimeError as exc:
        if "HTTP 409" not in str(exc):
            raise
        print(f"RayJob {ns}/{name} exists (a retried step): following it", flush=True)
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        status = _kube_request("GET", f"{base}/{name}", **api).get("status", {}) or {}
        state = (status.get("jobStatus") or "", status.get("jobDeploymentStatus") or "")
        if state != last:
            print(f"RayJob {name}: jobStatus={state[0] or '-'} deployment={state[1] or '-'}", flush=True)
            last = state
        if state[0] == "SUCCEEDED":
            break
        if state[0] in ("FAILED", "STOPPED") or state[1] in ("Failed", "ValidationFailed"):
            raise RuntimeError(f"RayJob {ns}/{name} ended {state[0] or state[1]}: {status.get('message', '')[:500]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"RayJob {ns}/{name} did not finish within {timeout_s} s")
        time.sleep(poll_s)
    # KubeRay's submitter is a Kubernetes Job named after the RayJob; its pod streams the driver's output.
    pods = _kube_request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name%3D{name}", **api).get("items", [])
    if not pods:
        raise RuntimeError(f"RayJob {ns}/{name} succeeded but its submitter pod is gone (no result to read)")
    pod = max(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp", ""))["metadata"]["name"]
    log = _kube_request("GET", f"/api/v1/namespaces/{ns}/pods/{pod}/log?tailLines=500", raw=True, **api)
    return json.dumps(_parse_result(log), sort_keys=True)


def collect_metrics(
    result: str, gate_metric: str, gate_min: float, metrics: Output[Metrics], report: Output[Markdown]
) -> str:
    """The evaluation step's numbers as KFP metrics, its report.md as a Markdown artifact, and a gate.

    Args:
        result: the evaluation RayJob's result JSON ({"metrics": {...}, "report": "...", ...}).
        gate_metric: a (dotted) metric name that must reach ``gate_min`` for the rollout; "" = no gate.
        gate_min: the lowest acceptable value of ``gate_metric``.
        metrics: KFP Metrics artifact (anything with ``log_metric(name, value)``).
        report: KFP Markdown artifact (anything with a writable ``path``).

    Returns:
        "pass" or "fail".

    Raises:
        ValueError: the gate metric is missing from the evaluation.
    """
    import json

    data = json.loads(result)
    flat = _flatten_metrics(data.get("metrics", {}))
    for name, value in flat.items():
        metrics.log_metric(name, value)
    synthetic = data.get("synthetic_data")
    lines = [f"# lungsearch evaluation: {data.get('profile', '?')}@{data.get('version', '?')}", ""]
    if synthetic is None or synthetic:
        lines += [
            "> Numbers from synthetic phantom data unless the run used a real dataset: they show the pipeline",
            "> works and compare methods; they are not clinical results.",
            "",
        ]
    lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in flat.items()] + [""]
    if data.get("report"):
        lines += ["## report.md", "", data["report"]]
    with open(report.path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    if not gate_metric:
        return "pass"
    if gate_metric not in flat:
        raise ValueError(
            f"gate metric {gate_metric!r} is not in the evaluation (has: {', '.join(sorted(flat)) or 'none'})"
        )
    verdict = "pass" if flat[gate_metric] >= gate_min else "fail"
    print(f"gate {gate_metric}={flat[gate_metric]:.4g} >= {gate_min}: {verdict}", flush=True)
    return verdict


def rollout_rayservice(
    rayservice: str,
    namespace: str,
    train_result: str,
    app_name: str = "lungsearch",
    timeout_s: int = 3600,
    poll_s: int = 10,
    api_server: str = "",
    token: str = "",
    ca_file: str = "",
) -> str:
    """Serve the newly trained model: pin ``profile@version`` in the RayService's serveConfigV2 and wait
    until KubeRay reports the application RUNNING on the new config (an in-place Serve update).

    Returns:
        The pinned ``profile@version``.

    Raises:
        RuntimeError: the application failed to deploy (DEPLOY_FAILED / UNHEALTHY).
        TimeoutError: not RUNNING within ``timeout_s``.
    """
    import json
    import time

    data = json.loads(train_result)
    profile, version = data["profile"], data["version"]
    api = {"api_server": api_server, "token": token, "ca_file": ca_file}
    path = f"/apis/ray.io/v1/namespaces/{namespace}/rayservices/{rayservice}"
    current = _kube_request("GET", path, **api)
    new_config = _pin_profile(current["spec"]["serveConfigV2"], app_name, profile, version)
    patched = _kube_request(
        "PATCH", path, {"spec": {"serveConfigV2": new_config}}, content_type="application/merge-patch+json", **api
    )
    generation = patched.get("metadata", {}).get("generation", 0)
    print(f"RayService {namespace}/{rayservice}: serving {profile}@{version} (generation {generation})", flush=True)
    deadline = time.monotonic() + timeout_s
    while True:
        status = _kube_request("GET", path, **api).get("status", {}) or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions", [])}
        app = ((status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}).get(app_name, {})
        if app.get("status") in ("DEPLOY_FAILED", "UNHEALTHY") and status.get("observedGeneration", 0) >= generation:
            raise RuntimeError(f"application {app_name} is {app['status']}: {app.get('message', '')[:500]}")
        if (
            status.get("observedGeneration", 0) >= generation
            and conditions.get("Ready") == "True"
            and conditions.get("UpgradeInProgress") != "True"
            and app.get("status") == "RUNNING"
        ):
            return f"{profile}@{version}"
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"RayService {namespace}/{rayservice} not RUNNING on {profile}@{version} within {timeout_s} s"
            )
        time.sleep(poll_s)
