"""Shared helpers of the chart, kustomize and Kubeflow tests (constants, render cases, object
lookups, RayJob entry-point checks). A module with its own name, not conftest: ``from conftest
import`` finds whichever conftest was imported first when several test folders run together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

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


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def ray_job_scripts() -> set[str]:
    """ray_jobs/*.py scripts that run as a program (have a __main__ block): each needs a RayJob."""
    import ast

    found = set()
    for path in sorted((REPO / "ray_jobs").glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body):
            found.add(f"ray_jobs/{path.name}")
    return found


def script_flags(script: Path) -> set[str]:
    """Option strings and positional names a ray_jobs script's argparse parser defines (read, not run)."""
    import ast

    return {
        node.args[0].value
        for node in ast.walk(ast.parse(script.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") == "add_argument"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def entrypoint_errors(entrypoint: str) -> list[str]:
    """Problems of a RayJob entry point `python ray_jobs/<script>.py --config configs/<p>.yaml [k=v ...] [--flags]`:
    the script exists, its flags exist, and the profile loads with the overrides (lungsearch.config)."""
    import shlex

    from lungsearch.config import load_profile
    from lungsearch.errors import ConfigError

    words = shlex.split(entrypoint)
    if words[:1] != ["python"] or len(words) < 2 or not (REPO / words[1]).is_file():
        return [f"{entrypoint!r}: not `python ray_jobs/<script>.py ...` of this repository"]
    flags = script_flags(REPO / words[1])
    errors = [
        f"{entrypoint!r}: {w} is not an option of {words[1]}"
        for w in words[2:]
        if w.startswith("--") and w.split("=", 1)[0] not in flags
    ]
    overrides = [w for w in words[2:] if "=" in w and not w.startswith("-")]
    if overrides and "overrides" not in flags:
        errors.append(f"{entrypoint!r}: {words[1]} takes no key=value overrides")
    if "--config" in words:
        try:
            load_profile(REPO / words[words.index("--config") + 1], overrides)
        except ConfigError as exc:
            errors.append(f"{entrypoint!r}: {exc}")
    return errors
