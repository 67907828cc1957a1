import pytest

from lungsearch.config import load_profile
from lungsearch.errors import ConfigError
from lungsearch.serving.appconfig import AppArgs, deployment_options


def test_args_defaults_and_errors():
    a = AppArgs.parse({"profiles": ["cxr-hash", "ct-ild@v1"]})
    assert a.milvus_uri.endswith(".db") and not a.insecure_local and a.tokens_file == ""
    with pytest.raises(ConfigError, match="unknown key"):
        AppArgs.parse({"profile": "x"})
    with pytest.raises(ConfigError, match="profiles"):
        AppArgs.parse({"profiles": []})


def test_deployment_options_from_profile():
    cfg = load_profile(
        "cxr-hash",
        [
            "serve.deployments.encoding.num_cpus=0.5",
            "serve.deployments.encoding.max_batch_size=32",
            "serve.deployments.encoding.max_ongoing_requests=8",
            "serve.deployments.encoding.num_gpus=1",
        ],
    )
    enc = deployment_options(cfg, "encoding")
    assert enc["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1.0}
    assert enc["user_config"]["max_batch_size"] == 32
    assert enc["max_ongoing_requests"] == 128  # 4 batches: a batch fills while one computes
    assert enc["num_replicas"] == 1 and enc["max_queued_requests"] == 64


def test_autoscaling():
    cfg = load_profile(
        "cxr-hash", ["serve.deployments.gateway.num_replicas=auto", "serve.deployments.gateway.max_replicas=4"]
    )
    g = deployment_options(cfg, "gateway")
    assert "num_replicas" not in g and g["autoscaling_config"]["max_replicas"] == 4


def test_default_graph_fits_on_two_cpus():
    cfg = load_profile("cxr-hash")
    total = sum(
        deployment_options(cfg, n)["ray_actor_options"]["num_cpus"]
        for n in ("gateway", "encoding", "fusion", "hashing", "ranking")
    )
    assert total <= 2.0
