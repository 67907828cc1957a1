"""Fixtures for the chart, kustomize and Kubeflow tests: the loaded chart, a renderer that returns
parsed objects, and the example values files under charts/lungsearch/ci/. Nothing here needs a cluster,
a network or a helm binary (helm-python-sdk bundles Helm's Go SDK)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

import k8s_checks

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "lungsearch"
CI_VALUES = {p.stem.removesuffix("-values"): p for p in sorted((CHART_DIR / "ci").glob("*-values.yaml"))}
#: The render cases of the acceptance list: defaults plus every example values file.
CASES = ["defaults", *CI_VALUES]
RELEASE = "lungsearch"
NAMESPACE = "lungsearch"


def case_values(case: str) -> dict[str, Any]:
    """User values of a render case (defaults = none)."""
    return {} if case == "defaults" else yaml.safe_load(CI_VALUES[case].read_text()) or {}


@pytest.fixture(scope="session")
def chart():
    helm = pytest.importorskip("helm_python")
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart) -> Callable[..., list[dict]]:
    """render(values, name=..., namespace=...) -> the rendered objects (NOTES.txt excluded)."""

    def _render(values: dict | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
        out = chart.render(values=values or {}, name=name, namespace=namespace, is_install=True)
        return k8s_checks.load_docs(text for path, text in sorted(out.items()) if not path.endswith("NOTES.txt"))

    return _render


@pytest.fixture(scope="session")
def notes(chart) -> Callable[..., str]:
    def _notes(values: dict | None = None) -> str:
        out = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return next(text for path, text in out.items() if path.endswith("NOTES.txt"))

    return _notes


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]
