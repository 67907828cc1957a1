"""The chart's PrometheusRule and Grafana dashboard: promtool accepts the rules, the alerts fire on
synthetic series (``promtool test rules``) and stay quiet otherwise, and every query of the rules and the
dashboard names a metric that lungsearch declares (lungsearch/serving/metrics.py, as Ray exports it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from chart_cases import by_kind, case_values, one

from lungsearch.serving.metrics import SCHEMA

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RAY_PREFIX = "ray_"  # Ray prefixes application metrics on its export port
_METRIC_RE = re.compile(r"\b(ray_lungsearch_[a-z_]+|lungsearch:[a-z0-9_:]+)\b")


def _promtool() -> str:
    if not Path(PROMTOOL).exists():
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return PROMTOOL


def _declared(name: str) -> bool:
    """A series name exported for a SCHEMA metric (histograms add _bucket/_sum/_count)."""
    base = name.removeprefix(RAY_PREFIX)
    return any(
        base == m or (s.kind == "histogram" and base in (f"{m}_bucket", f"{m}_sum", f"{m}_count"))
        for m, s in SCHEMA.items()
    )


def _groups(render, values=None) -> list[dict]:
    return one(render(values), "PrometheusRule")["spec"]["groups"]


def _rules_file(tmp_path: Path, groups: list[dict]) -> Path:
    path = tmp_path / "lungsearch.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_promtool_checks_the_rendered_rules(render, tmp_path):
    groups = _groups(render)
    out = subprocess.run(
        [_promtool(), "check", "rules", str(_rules_file(tmp_path, groups))], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert {
        "LungsearchEmbeddingDrift",
        "LungsearchLowSimilarityQueries",
        "LungsearchCodeBitsUnstable",
        "LungsearchBestSimilarityDropped",
        "LungsearchHighErrorRatio",
        "LungsearchHighLatency",
    } <= alerts


def test_rules_name_only_declared_metrics_and_their_own_records(render):
    groups = _groups(render)
    records = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    for g in groups:
        for r in g["rules"]:
            for name in _METRIC_RE.findall(r["expr"]):
                assert _declared(name) or name in records, f"{r.get('alert') or r.get('record')}: {name}"


def test_thresholds_come_from_values(render):
    groups = _groups(render, {"metrics": {"prometheusRule": {"driftCosine": 0.35, "labels": {"release": "kps"}}}})
    drift = next(r for g in groups for r in g["rules"] if r.get("alert") == "LungsearchEmbeddingDrift")
    assert drift["expr"].strip().endswith("> 0.35")
    assert (
        one(render({"metrics": {"prometheusRule": {"labels": {"release": "kps"}}}}), "PrometheusRule")["metadata"][
            "labels"
        ]["release"]
        == "kps"
    )
    assert by_kind(render(case_values("monitors-off")), "PrometheusRule") == []


def _series(name: str, labels: dict, values: str) -> dict:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{sel}}}", "values": values}


def test_quality_alerts_fire_on_drift_and_low_similarity_and_stay_quiet_otherwise(render, tmp_path):
    """promtool's rule unit tests: 2 h of synthetic series at a 1-minute step, one site drifting."""
    # Annotations are templates checked by `check rules`; the unit test compares labels only.
    groups = _groups(render)
    for g in groups:
        for r in g["rules"]:
            r.pop("annotations", None)
    rules = _rules_file(tmp_path, groups)
    drifted = {"profile": "cxr", "site": "north"}
    stable = {"profile": "cxr", "site": "south"}
    series = [
        _series("ray_lungsearch_quality_embedding_drift_cosine", drifted, "0.05x30 0.4x90"),
        _series("ray_lungsearch_quality_embedding_drift_cosine", stable, "0.05x120"),
        _series("ray_lungsearch_quality_code_bits_psi", drifted, "0.02x30 0.5x90"),
        _series("ray_lungsearch_quality_code_bits_psi", stable, "0.02x120"),
        # 10 searches a minute at each site; from minute 30, 6 of north's are low-similarity.
        _series("ray_lungsearch_quality_best_similarity_cosine_count", drifted, "0+10x120"),
        _series("ray_lungsearch_quality_best_similarity_cosine_count", stable, "0+10x120"),
        _series("ray_lungsearch_quality_low_similarity_queries_total", drifted, "0x30 0+6x90"),
        _series("ray_lungsearch_quality_low_similarity_queries_total", stable, "0+0.5x120"),
    ]

    def alert(name, labels):
        return {
            "eval_time": "120m",
            "alertname": name,
            "exp_alerts": [{"exp_labels": {"severity": "warning", **labels}}] if labels else [],
        }

    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    alert("LungsearchEmbeddingDrift", drifted),
                    alert("LungsearchCodeBitsUnstable", drifted),
                    alert("LungsearchLowSimilarityQueries", drifted),
                    {"eval_time": "25m", "alertname": "LungsearchEmbeddingDrift", "exp_alerts": []},
                    {"eval_time": "50m", "alertname": "LungsearchEmbeddingDrift", "exp_alerts": []},  # for: 30m not yet
                ],
            }
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run([_promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# ---- the dashboard ------------------------------------------------------------------------------------------


def _dashboard(render) -> tuple[dict, dict]:
    cm = one(render(), "ConfigMap", "lungsearch-dashboards")
    ((name, text),) = cm["data"].items()
    assert name.endswith(".json")
    return cm, json.loads(text)


def test_dashboard_configmap_is_picked_up_by_the_grafana_sidecar(render):
    cm, dash = _dashboard(render)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    off = render({"metrics": {"grafanaDashboard": {"enabled": False}}})
    assert [c for c in by_kind(off, "ConfigMap") if c["metadata"]["name"] == "lungsearch-dashboards"] == []
    moved = one(
        render({"metrics": {"grafanaDashboard": {"namespace": "monitoring"}}}), "ConfigMap", "lungsearch-dashboards"
    )
    assert moved["metadata"]["namespace"] == "monitoring"


def test_every_panel_queries_declared_metrics_and_the_signals_are_all_shown(render):
    _, dash = _dashboard(render)
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    rows = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert {"Traffic", "Latency", "Errors", "Saturation", "Retrieval quality"} <= rows
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    shown = set()
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = _METRIC_RE.findall(t["expr"])
            assert names, f"{p['title']}: no lungsearch metric in {t['expr']!r}"
            for n in names:
                assert _declared(n), f"{p['title']}: {n} is not declared in lungsearch/serving/metrics.py"
            shown |= {re.sub(r"_(bucket|sum|count)$", "", n.removeprefix(RAY_PREFIX)) for n in names}
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    quality = {m for m in SCHEMA if m.startswith("lungsearch_quality_")}
    assert quality and quality <= shown
    assert "lungsearch_gateway_report_phi_removed_total" in shown
    for v in dash["templating"]["list"]:
        for n in _METRIC_RE.findall(json.dumps(v.get("query", ""))):
            assert _declared(n), n
