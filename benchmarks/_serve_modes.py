"""Ray Serve's request-path settings, measured side by side by the serving benchmarks.

Serve reads these variables when its modules are imported and the raylet passes its environment to
every worker it starts, so a setting holds for a whole local Ray: each mode runs in its own child
process (its own Ray), one after another, in rounds (A B C, A B C, ...) so that a drift of the
machine's load falls on every mode alike. ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` (Ray 2.60, FACTS.md)
turns on all of them at once, direct ingress included; direct ingress removes the proxy (each
Gateway replica listens on its own port, 40000+) and so the one address clients, nginx's TLS
termination and the chart's Service use: the ``throughput`` mode here keeps the proxy
(``RAY_SERVE_ENABLE_DIRECT_INGRESS=0``) and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lungsearch.runtime import SERVE_MODES as SHIPPED

__all__ = ["SERVE_MODES", "add_mode_arguments", "apply_serve_mode", "compare_modes"]

#: mode name -> the environment it sets (every variable of any mode is cleared first).
SERVE_MODES: dict[str, dict[str, str]] = {
    "default": {},
    # handle -> replica calls over gRPC instead of Ray actor calls
    "grpc-handles": {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"},
    # user code and the router on the replica's own event loop (no thread hop per request)
    "one-loop": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
    # the mode lungsearch ships (lungsearch.runtime.SERVE_MODES): the throughput-optimized mode with
    # the proxy kept (clients still reach one gRPC port) and log lines written at once
    "throughput": dict(SHIPPED["throughput"]),
}
_ALL_VARS = sorted({k for env in SERVE_MODES.values() for k in env})


def add_mode_arguments(ap) -> None:
    """``--serve-mode`` (default: the shipped one, so a plain run measures what ships),
    ``--serve-modes`` and ``--rounds`` on a benchmark's argument parser."""
    ap.add_argument(
        "--serve-mode",
        choices=sorted(SERVE_MODES),
        default="throughput",
        help="Ray Serve's request-path settings for this run (default: throughput, the shipped mode)",
    )
    ap.add_argument(
        "--serve-modes",
        default="",
        help="comma list: run once per mode (each in its own process and Ray, alternating) and compare them",
    )
    ap.add_argument("--rounds", type=int, default=1, help="with --serve-modes: runs per mode, in alternation")


def apply_serve_mode(mode: str) -> dict[str, str]:
    """Set ``mode``'s variables in this process before Ray starts (and before ``ray.serve`` is
    imported here); returns them. Inherited values of any mode's variables are cleared first, so a
    shell's setting cannot blur the comparison."""
    if mode not in SERVE_MODES:
        raise ValueError(f"unknown serve mode {mode!r}; expected one of {', '.join(SERVE_MODES)}")
    if "ray.serve" in sys.modules:
        raise RuntimeError("apply_serve_mode must run before ray.serve is imported (Serve reads it at import)")
    for k in _ALL_VARS:
        os.environ.pop(k, None)
    os.environ.update(SERVE_MODES[mode])
    os.environ["LUNGSEARCH_SERVE_MODE"] = "inherit"  # init_ray adds nothing of its own
    return dict(SERVE_MODES[mode])


def compare_modes(module: str, argv: list[str], modes: list[str], rounds: int = 1) -> dict[str, Any]:
    """Run ``python -m module *argv --serve-mode M --out F`` for each mode, ``rounds`` times in
    alternation; returns ``{"modes": {M: [result, ...]}, "order": [...], "loadavg": {...}}``.
    A child that fails is recorded with its exit code and the tail of its output, not retried."""
    for m in modes:
        if m not in SERVE_MODES:
            raise ValueError(f"unknown serve mode {m!r}; expected one of {', '.join(SERVE_MODES)}")
    out: dict[str, Any] = {"modes": {m: [] for m in modes}, "order": [], "env": {m: SERVE_MODES[m] for m in modes}}
    with tempfile.TemporaryDirectory(prefix="lungsearch-serve-modes-") as tmp:
        for r in range(rounds):
            for m in modes:
                path = Path(tmp) / f"{m}-{r}.json"
                print(f"== serve mode {m} (round {r + 1}/{rounds}) ==", flush=True)
                load = os.getloadavg()
                p = subprocess.run(
                    [sys.executable, "-m", module, *argv, "--serve-mode", m, "--out", str(path)],
                    capture_output=True,
                    text=True,
                )
                sys.stdout.write(p.stdout[-4000:])
                if p.returncode != 0 or not path.exists():
                    out["modes"][m].append({"failed": p.returncode, "output_tail": (p.stdout + p.stderr)[-3000:]})
                    print(f"!! serve mode {m} failed (exit {p.returncode})", flush=True)
                else:
                    res = json.loads(path.read_text())
                    res["loadavg_before"] = load
                    out["modes"][m].append(res)
                out["order"].append(m)
    return out
