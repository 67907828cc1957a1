"""services/serve_config.yaml is THE serve config (the Helm chart embeds it): it must validate
against Serve's own schema, name importable servicers and app builder, and fit on 2 CPUs."""

from pathlib import Path

import pytest
import yaml

from lungsearch.serving.appconfig import AppArgs

CONFIG = Path(__file__).resolve().parents[2] / "services" / "serve_config.yaml"


@pytest.fixture(scope="module")
def doc():
    return yaml.safe_load(CONFIG.read_text())


def test_validates_against_serve_schema(doc):
    from ray.serve.schema import ServeDeploySchema

    cfg = ServeDeploySchema.model_validate(doc)
    assert cfg.grpc_options.port == 9000 and cfg.grpc_options.enable_reflection


def test_servicers_and_app_import(doc):
    from ray._common.utils import import_attr

    fns = doc["grpc_options"]["grpc_servicer_functions"]
    services = {f.rsplit(".add_", 1)[1].removesuffix("Servicer_to_server") for f in fns}
    assert services == {"LungSearch", "Encoding", "Fusion", "Hashing", "Ranking", "Health"}
    for f in fns:
        assert callable(import_attr(f))
    (app,) = doc["applications"]
    assert app["import_path"] == "services.gateway:app" and callable(import_attr(app["import_path"]))
    AppArgs.parse(app["args"])  # the args are exactly what the builder accepts


def test_deployments_fit_on_two_cpus_and_one_ranking_replica(doc):
    deps = {d["name"]: d for d in doc["applications"][0]["deployments"]}
    assert set(deps) == {"Gateway", "Encoding", "Fusion", "Hashing", "Ranking"}
    assert sum(d["ray_actor_options"]["num_cpus"] for d in deps.values()) <= 2.0
    assert deps["Ranking"]["num_replicas"] == 1  # milvus-lite: one process per file
    enc = deps["Encoding"]
    assert enc["max_ongoing_requests"] >= 4 * enc["user_config"]["max_batch_size"]


def test_every_stage_admits_what_the_gateways_send(doc):
    """A stage that admits fewer requests than the Gateways have in flight makes Serve's router back
    off and retry, and the stage idles between retries (benchmarks/encode_throughput.py measured
    0.27x direct PyTorch with 256 in flight against a limit of 64, 1.0x within it)."""
    deps = {d["name"]: d for d in doc["applications"][0]["deployments"]}
    cap = lambda d: d["num_replicas"] * d["max_ongoing_requests"]  # noqa: E731
    for name in ("Encoding", "Fusion", "Hashing", "Ranking"):
        assert cap(deps[name]) >= cap(deps["Gateway"]), name


def test_every_rpc_has_a_method_on_the_gateway():
    """Serve routes by method name to the ingress: every RPC of every listed service must exist."""
    from grpc_health.v1 import health_pb2

    from lungsearch._proto.v1 import encoding_pb2, fusion_pb2, gateway_pb2, hashing_pb2, ranking_pb2
    from services.gateway import Gateway

    cls = Gateway.func_or_class
    for mod in (gateway_pb2, encoding_pb2, fusion_pb2, hashing_pb2, ranking_pb2, health_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                assert callable(getattr(cls, m.name, None)), f"{svc.full_name}/{m.name}"


def test_app_builder_refuses_two_ranking_replicas_on_milvus_lite(tmp_path, monkeypatch):
    from lungsearch.errors import ConfigError
    from services import gateway

    real = gateway.deployment_options

    def two(cfg, name):
        o = real(cfg, name)
        if name == "ranking":
            o["num_replicas"] = 2
        return o

    monkeypatch.setattr(gateway, "deployment_options", two)
    with pytest.raises(ConfigError, match="one process"):
        gateway.app({"profiles": ["cxr-hash"], "milvus_uri": str(tmp_path / "x.db")})
    gateway.app({"profiles": ["cxr-hash"], "milvus_uri": "http://milvus:19530"})  # a server may scale out
