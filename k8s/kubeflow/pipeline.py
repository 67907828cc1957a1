"""The lungsearch lifecycle as a Kubeflow Pipelines (kfp v2) pipeline.

prepare data -> train (RayJob) -> evaluate (RayJob; metrics as KFP metrics, report.md as an artifact,
an optional metric gate) -> build the index (RayJob) -> roll the RayService to the new model version.
Each heavy step is a RayJob on KubeRay in the lungsearch namespace (where the registry volume lives); the
KFP steps only talk to the Kubernetes API (see components.py, whose plain functions this wraps).

Compile with ``make kubeflow`` (kfp lives in .venv-kfp: it pins its own protobuf), which writes
k8s/kubeflow/pipeline.yaml; upload that file in the Kubeflow Pipelines UI, or::

    kfp.Client().create_run_from_pipeline_package("k8s/kubeflow/pipeline.yaml",
        arguments={"profile": "ct-ild", "gpus_per_worker": 1, "num_workers": 2},
        service_account="default-editor")  # bound to lungsearch-rayjob-submitter (k8s/kubeflow/rbac.yaml)
"""

# No `from __future__ import annotations`: kfp reads the pipeline parameters' annotations as real types.
import argparse
import hashlib
import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from k8s.kubeflow import components as steps

__all__ = ["build_pipeline", "compile_pipeline", "source_digest", "main", "DEFAULT_IMAGE", "COMPONENT_IMAGE"]

HERE = Path(__file__).resolve().parent
#: The RayJob spec (k8s/rayjob-spec.yaml, embedded in components.py): the pipeline's defaults come from it.
SPEC = steps._rayjob_spec()
#: The lungsearch image the RayJobs run (Ray 2.60.0 + lungsearch, repository in /app).
DEFAULT_IMAGE = SPEC["image"]
_CPU_WORKER = SPEC["workerGroups"]["cpu"]["resources"]["requests"]
#: Image of the KFP steps themselves (API clients: stdlib + PyYAML; KFP installs kfp into it at start).
COMPONENT_IMAGE = "python:3.11-slim"
COMPONENT_PACKAGES = ["pyyaml==6.0.4"]


def source_digest() -> str:
    """sha256 of the files the compiled YAML comes from (checked by tests/charts/test_kubeflow.py)."""
    digest = hashlib.sha256()
    for name in ("components.py", "pipeline.py"):
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    return digest.hexdigest()


def build_pipeline(component_image: str = COMPONENT_IMAGE, *, offline: bool = False):
    """The pipeline function, its components built on ``component_image``.

    Args:
        component_image: image of the KFP steps.
        offline: the image already has kfp and PyYAML (an air-gapped cluster): install nothing at start.
    """

    def component(func):
        return dsl.component(
            func,
            base_image=component_image,
            additional_funcs=steps.helpers(),
            packages_to_install=[] if offline else COMPONENT_PACKAGES,
            install_kfp_package=not offline,
        )

    rayjob_manifest = component(steps.rayjob_manifest)
    run_rayjob = component(steps.run_rayjob)
    collect_metrics = component(steps.collect_metrics)
    rollout_rayservice = component(steps.rollout_rayservice)

    def tidy(task, name: str):
        # Re-running the pipeline must train again: never serve a step from KFP's cache.
        task.set_caching_options(False).set_display_name(name)
        kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "lungsearch")
        kubernetes.add_pod_label(task, "app.kubernetes.io/component", "kubeflow-step")
        return task

    @dsl.pipeline(
        name="lungsearch-lifecycle",
        description="Prepare data, train (RayJob), evaluate (KFP metrics), build the index and roll the RayService "
        "to the new model. Phantom data unless dataset_uri names a real dataset.",
    )
    def lifecycle(
        profile: str = "cxr-report",
        dataset_uri: str = "phantom",
        gpus_per_worker: int = 0,
        num_workers: int = 1,
        namespace: str = "lungsearch",
        image: str = DEFAULT_IMAGE,
        rayservice: str = "lungsearch",
        registry_claim: str = SPEC["registryClaim"],
        milvus_uri: str = SPEC["milvusUri"],
        worker_cpus: int = int(_CPU_WORKER["cpu"]),
        worker_memory: str = _CPU_WORKER["memory"],
        gate_metric: str = "",
        gate_min: float = 0.0,
        job_timeout_s: int = 172800,
    ):
        common = dict(
            profile=profile,
            dataset_uri=dataset_uri,
            num_workers=num_workers,
            gpus_per_worker=gpus_per_worker,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            namespace=namespace,
            image=image,
            registry_claim=registry_claim,
            milvus_uri=milvus_uri,
            worker_cpus=worker_cpus,
            worker_memory=worker_memory,
        )

        prep_job = tidy(rayjob_manifest(step="prepare", **common), "prepare: RayJob manifest")
        prep = tidy(run_rayjob(manifest=prep_job.output, timeout_s=job_timeout_s), "prepare data")

        train_job = tidy(rayjob_manifest(step="train", **common), "train: RayJob manifest").after(prep)
        train = tidy(run_rayjob(manifest=train_job.output, timeout_s=job_timeout_s), "train")

        eval_job = tidy(
            rayjob_manifest(step="evaluate", upstream_result=train.output, **common), "evaluate: RayJob manifest"
        )
        evaluation = tidy(run_rayjob(manifest=eval_job.output, timeout_s=job_timeout_s), "evaluate")
        gate = tidy(
            collect_metrics(result=evaluation.output, gate_metric=gate_metric, gate_min=gate_min), "metrics and report"
        )

        with dsl.If(gate.outputs["Output"] == "pass", name="metrics-gate"):
            index_job = tidy(
                rayjob_manifest(step="build-index", upstream_result=train.output, **common),
                "build-index: RayJob manifest",
            )
            index = tidy(run_rayjob(manifest=index_job.output, timeout_s=job_timeout_s), "build index")
            tidy(
                rollout_rayservice(rayservice=rayservice, namespace=namespace, train_result=train.output),
                "roll out the RayService",
            ).after(index)

    return lifecycle


def compile_pipeline(out: Path, component_image: str = COMPONENT_IMAGE, *, offline: bool = False) -> Path:
    """Compile to ``out`` with a provenance header (the digest of the sources it came from)."""
    import kfp

    out = Path(out)
    compiler.Compiler().compile(build_pipeline(component_image, offline=offline), package_path=str(out))
    header = (
        f"# Generated by `make kubeflow` (kfp {kfp.__version__}) from k8s/kubeflow/components.py and pipeline.py; "
        f"do not edit.\n# source-sha256: {source_digest()}\n# component-image: {component_image}"
        f"{' (offline)' if offline else ''}\n"
    )
    out.write_text(header + out.read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "pipeline.yaml", help="compiled pipeline YAML")
    parser.add_argument("--component-image", default=COMPONENT_IMAGE, help="image of the KFP steps")
    parser.add_argument(
        "--offline", action="store_true", help="the component image already has kfp and PyYAML (air-gapped clusters)"
    )
    args = parser.parse_args(argv)
    path = compile_pipeline(args.out, args.component_image, offline=args.offline)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
