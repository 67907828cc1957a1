"""The chart's DICOM receiver: off by default; on, its Deployment runs `python -m lungsearch.pacs` with a
receiver.yaml that lungsearch.pacs itself accepts, behind its own Service, and the Ray pods' policy lets
it reach the gRPC port. (tests/charts validates every rendered object, the pacs-values case included.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lungsearch"
helm = pytest.importorskip("helm_python")


def _render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values=values, name="lungsearch", namespace="lungsearch", is_install=True)
    return [d for p, t in sorted(out.items()) if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]


def _dicom(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "dicom-receiver"]


def test_off_by_default():
    docs = _render({})
    assert _dicom(docs) == []
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-ray"))
    assert "dicom-receiver" not in yaml.safe_dump(policy)


def test_on_renders_a_receiver_lungsearch_accepts(tmp_path):
    from lungsearch.pacs.config import load_receiver_config

    values = yaml.safe_load((CHART / "ci" / "pacs-values.yaml").read_text())
    docs = _render(values)
    kinds = sorted(d["kind"] for d in _dicom(docs))
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "Service"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "lungsearch-dicom")
    (tmp_path / "receiver.yaml").write_text(cm["data"]["receiver.yaml"])
    cfg = load_receiver_config(tmp_path / "receiver.yaml")
    assert cfg.caller("PACS_MAIN").site == "site-a" and cfg.tls.ca_file and cfg.destination.port == 104
    assert cfg.target.startswith("lungsearch-serve.lungsearch.svc:") or ".lungsearch.svc:" in cfg.target
    assert cfg.host == "0.0.0.0" and cfg.token_file == "/run/secrets/lungsearch/token"
    assert cfg.stow_port == 8043 and cfg.stow_tokens_file.endswith("tokens.yaml")
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "lungsearch-dicom")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "lungsearch.pacs"]
    assert dep["spec"]["strategy"]["type"] == "Recreate" and dep["spec"]["replicas"] == 1
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "lungsearch-dicom")
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["ports"][0]["port"] == 11112
    assert [p["name"] for p in svc["spec"]["ports"]] == ["dicom", "metrics", "stow"]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-ray"))
    assert any(
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "dicom-receiver"
        for rule in policy["spec"]["ingress"]
        for p in rule.get("from", [])
    )


def test_stow_without_tokens_fails_with_a_clear_message():
    with pytest.raises(Exception, match="tokensSecretName"):
        _render({"pacs": {"enabled": True, "stow": {"enabled": True}}})


def test_bad_receiver_values_are_refused_by_the_schema():
    with pytest.raises(Exception) as exc:
        _render({"pacs": {"enabled": True, "callers": [{"ae_title": "A" * 17}]}})
    assert "ae_title" in str(exc.value)
