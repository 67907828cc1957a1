"""`lungsearch serve` without starting anything: config merging, bind policy, model checks, and
the plain /metrics endpoint."""

import argparse
import urllib.request

import pytest

from lungsearch.cli import _serve
from lungsearch.errors import ConfigError, ModelNotFoundError


def _args(**kw):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    _serve.register(sub)
    argv = ["serve"]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            argv.append(flag)
        elif isinstance(v, list):
            for item in v:
                argv += [flag, item]
        else:
            argv += [flag, str(v)]
    return p.parse_args(argv)


def test_overrides_are_applied(tmp_path):
    doc = _serve.build_config(
        _args(
            profile=["ct-ild", "cxr-hash@v1"],
            grpc_port=9555,
            milvus_uri=str(tmp_path / "s.db"),
            artifacts_dir=str(tmp_path),
        )
    )
    a = doc["applications"][0]["args"]
    assert a["profiles"] == ["ct-ild", "cxr-hash@v1"] and a["milvus_uri"].endswith("s.db")
    assert doc["grpc_options"]["port"] == 9555 and a["insecure_local"]  # the shipped config is local-demo


def _gateway(doc) -> dict:
    return next(d for d in doc["applications"][0]["deployments"] if d["name"] == "Gateway")


def test_two_gateway_replicas_by_default_and_replicas_flag(tmp_path):
    assert _gateway(_serve.build_config(_args()))["num_replicas"] == 2
    doc = _serve.build_config(_args(replicas=3))
    gw = _gateway(doc)
    assert gw["num_replicas"] == 3 and gw["max_ongoing_requests"] == 32  # the rest of the block is kept
    stages = [d for d in doc["applications"][0]["deployments"] if d["name"] != "Gateway"]
    assert all(d["num_replicas"] == 1 for d in stages)
    cfg = tmp_path / "auto.yaml"
    import yaml

    base = yaml.safe_load(open(_serve.DEFAULT_CONFIG))
    gw = next(d for d in base["applications"][0]["deployments"] if d["name"] == "Gateway")
    gw.pop("num_replicas")
    gw["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 4}
    cfg.write_text(yaml.safe_dump(base))
    assert "autoscaling_config" in _gateway(_serve.build_config(_args(config=str(cfg))))
    fixed = _gateway(_serve.build_config(_args(config=str(cfg), replicas=1)))
    assert fixed["num_replicas"] == 1 and "autoscaling_config" not in fixed
    with pytest.raises(ConfigError, match="at least one"):
        _serve.build_config(_args(replicas=0))


def test_non_loopback_needs_tokens(tmp_path):
    with pytest.raises(ConfigError, match="without auth tokens"):
        _serve.build_config(_args(host="0.0.0.0"))
    with pytest.raises(ConfigError):
        _serve.build_config(_args(tls_cert="c.pem", tls_host="0.0.0.0"))
    tokens = tmp_path / "t.yaml"
    tokens.write_text("tokens: [{name: a, role: read, token: aaaaaaaaaaaaaaaaaaaa}]")
    doc = _serve.build_config(_args(host="0.0.0.0", tokens_file=str(tokens)))
    assert doc["applications"][0]["args"]["insecure_local"] is False


def test_missing_model_names_the_fix(tmp_path):
    doc = _serve.build_config(_args(artifacts_dir=str(tmp_path), profile=["ct-ild"]))
    with pytest.raises(ModelNotFoundError, match="lungsearch train ct-ild"):
        _serve._check_models(doc["applications"][0]["args"])


def test_bad_config_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("applications: []")
    with pytest.raises(ConfigError, match="no application"):
        _serve.build_config(_args(config=str(bad)))


def test_metrics_endpoint():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = _serve.start_metrics_server("127.0.0.1", port, lambda: "# TYPE x gauge\nx 1.0\n")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert body.endswith("x 1.0\n")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        srv.shutdown()


def test_tls_makes_the_plaintext_port_loopback_only(tmp_path):
    """With --tls-cert (and the default loopback --host) the gateway refuses non-loopback peers:
    Serve's plaintext port listens on every interface and only the TLS proxy should use it."""
    tokens = tmp_path / "t.yaml"
    tokens.write_text("tokens: [{name: a, role: read, token: aaaaaaaaaaaaaaaaaaaa}]")
    doc = _serve.build_config(_args(tokens_file=str(tokens), tls_cert="c.pem", tls_key="k.pem", tls_host="0.0.0.0"))
    assert doc["applications"][0]["args"]["loopback_only"] is True
    plain = _serve.build_config(_args(tokens_file=str(tokens)))
    assert plain["applications"][0]["args"]["loopback_only"] is False
    # an operator who asks for plaintext on the network (with tokens) keeps it
    both = _serve.build_config(_args(tokens_file=str(tokens), host="0.0.0.0", tls_cert="c.pem", tls_key="k.pem"))
    assert both["applications"][0]["args"]["loopback_only"] is False


def test_environment_beats_the_config_file(tmp_path, monkeypatch):
    """The shipped serve config spells out data/hmac.key etc.; an operator's LUNGSEARCH_* variables
    must still win (else the server keys cases with another secret than the jobs beside it)."""
    from lungsearch import constants

    monkeypatch.setenv("LUNGSEARCH_HMAC_KEY_FILE", str(tmp_path / "k"))
    monkeypatch.setattr(constants, "HMAC_KEY_FILE", tmp_path / "k")
    a = _serve.build_config(_args())["applications"][0]["args"]
    assert a["hmac_key_file"] == str(tmp_path / "k") and a["milvus_uri"].endswith("data/lungsearch.db")
    # the command line still beats the environment
    a = _serve.build_config(_args(hmac_key_file=str(tmp_path / "cli")))["applications"][0]["args"]
    assert a["hmac_key_file"] == str(tmp_path / "cli")
