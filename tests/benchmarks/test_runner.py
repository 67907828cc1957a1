"""benchmarks/__main__.py (``make bench``) knows every benchmark module, and the serve-mode
comparison's environment handling, without running a benchmark."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as runner
from benchmarks import _serve_modes


def test_every_benchmark_module_is_run_by_make_bench():
    here = Path(runner.__file__).parent
    modules = {p.stem for p in here.glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(runner.ALL_BENCHMARKS)


def test_an_unknown_name_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exc:
        runner.main(["no_such_bench"])
    assert exc.value.code == 2 and "unknown benchmark" in capsys.readouterr().err


def test_a_serve_mode_clears_every_other_modes_variables(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray.serve", raising=False)
    for k in (*_serve_modes._ALL_VARS, "LUNGSEARCH_SERVE_MODE"):  # restored after the test
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_SERVE_USE_GRPC_BY_DEFAULT", "1")  # inherited from a shell
    assert _serve_modes.apply_serve_mode("default") == {}
    assert "RAY_SERVE_USE_GRPC_BY_DEFAULT" not in os.environ
    _serve_modes.apply_serve_mode("throughput")
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    assert os.environ["LUNGSEARCH_SERVE_MODE"] == "inherit"  # init_ray adds nothing to the mode measured
    with pytest.raises(ValueError, match="unknown serve mode"):
        _serve_modes.apply_serve_mode("fastest")
