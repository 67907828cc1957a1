"""Fixtures for the chart, kustomize and Kubeflow tests: the loaded chart, a renderer that returns
parsed objects, and the example values files under charts/lungsearch/ci/. Nothing here needs a cluster,
a network or a helm binary (helm-python-sdk bundles Helm's Go SDK). Helpers: chart_cases.py."""

from __future__ import annotations

from typing import Callable

import k8s_checks
import pytest
from chart_cases import CHART_DIR, NAMESPACE, RELEASE


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
