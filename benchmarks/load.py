"""Sustained ``Search`` load: concurrency stepped up until p99 degrades; the highest QPS with
p99 <= 250 ms on this machine and the error rate at every step.

The whole serving graph runs on a local Ray with ``--num-cpus`` (2: this machine, and the target's
"2 cores"), gRPC on a loopback port; the client threads run on the same machine (their CPU is part
of what the machine spends: say so when comparing with a remote client). The index holds
``--cases`` synthetic cases written straight into the milvus-lite store (unit embeddings and the
model's own codes of them, as benchmarks/serve_latency.py does); queries are phantom radiographs
(synthetic), so the encoder runs for every call as in production. The model is untrained: load
measures the machinery, not relevance.

Each step is closed-loop: ``c`` client threads, one gRPC channel each, each sending its next
``Search`` when the previous answer arrives, for ``--step-seconds`` (bounded also by
``--max-requests``) after a short warm-up. Steps go 1, 2, 4, ... (at least to
``--min-concurrency``) until p99 is over the target at two consecutive steps or
``--max-concurrency`` is reached.

    .venv/bin/python -m benchmarks.load --quick
    .venv/bin/python -m benchmarks.load                  # writes benchmarks/results/load.json

A real Prometheus (``/usr/bin/prometheus``, Debian's) scrapes the plain ``/metrics`` endpoint every 2 s
during the steps (``--no-prometheus`` to skip); the result records the series it stored and whether any
label value looks like an identifier (``benchmarks/_prometheus.py``).

Target (shared/TARGETS.md): report the max sustained QPS with p99 <= 250 ms on 2 cores; 0 errors
below saturation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._prometheus import PROMETHEUS
from benchmarks._serve_modes import SERVE_MODES, add_mode_arguments, apply_serve_mode, compare_modes
from benchmarks._util import format_table, latency_stats, provenance, write_json

__all__ = ["main", "run", "step"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "load.json"
TOP_K = 10


def tree_cpu_seconds(root_pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by ``root_pid`` (default: this process) and all its
    descendants: here the client threads, Ray's GCS and raylet, and every worker and replica of the
    local cluster this process started. Linux /proc; 0.0 elsewhere."""
    root_pid = os.getpid() if root_pid is None else root_pid
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    try:
        entries = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return 0.0
    for d in entries:
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d)] = int(fields[1])
        cpu[int(d)] = (int(fields[11]) + int(fields[12])) / tick
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return total


def step(
    target: str,
    make_request,
    concurrency: int,
    *,
    seconds: float,
    max_requests: int,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """One closed-loop step: ``concurrency`` threads, one channel each, for ``seconds``.

    Only calls *started* inside the measured window count (warm-up calls are discarded); a call
    that fails counts as an error with its status code, and is not in the latency figures. The CPU
    time of the whole app and the client (this process tree) over the window gives the CPU cost
    of one Search, the figure that does not depend on how busy the shared machine was.
    """
    import grpc

    from lungsearch._proto.v1 import gateway_pb2_grpc

    lock = threading.Lock()
    lat: list[float] = []
    errors: dict[str, int] = {}
    samples: dict[str, list[str]] = {}  # a few status details per error code, for the report
    started = [0]
    t_start = time.perf_counter() + warmup_s
    t_end = t_start + seconds

    def worker(w: int) -> None:
        channel = grpc.insecure_channel(target)
        stub = gateway_pb2_grpc.LungSearchStub(channel)
        i = w
        try:
            while True:
                now = time.perf_counter()
                if now >= t_end:
                    return
                measured = now >= t_start
                if measured:
                    with lock:
                        if started[0] >= max_requests:
                            return
                        started[0] += 1
                t = time.perf_counter()
                try:
                    stub.Search(make_request(i), timeout=timeout_s)
                    ok, code = True, ""
                except grpc.RpcError as exc:
                    ok, code = False, exc.code().name
                    with lock:
                        if len(samples.setdefault(code, [])) < 3:
                            samples[code].append((exc.details() or "")[:300])
                dt = time.perf_counter() - t
                i += concurrency
                if measured:
                    with lock:
                        if ok:
                            lat.append(dt)
                        else:
                            errors[code] = errors.get(code, 0) + 1
        finally:
            channel.close()

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for th in threads:
        th.start()
    time.sleep(max(0.0, t_start - time.perf_counter()))
    cpu0 = tree_cpu_seconds()
    for th in threads:
        th.join()
    cpu = tree_cpu_seconds() - cpu0
    wall = max(1e-9, min(time.perf_counter(), t_end) - t_start)
    n_err = sum(errors.values())
    total = len(lat) + n_err
    return {
        "concurrency": concurrency,
        **latency_stats(lat),
        "qps": len(lat) / wall,
        "requests": total,
        "errors": errors,
        "error_samples": samples,
        "error_rate": (n_err / total) if total else 0.0,
        "seconds": wall,
        "cpu_s": cpu,
        "cpu_ms_per_request": 1e3 * cpu / total if total else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    import torch
    import yaml

    from benchmarks.serve_latency import _query_images, _synthetic_cases  # the same data recipe
    from lungsearch._proto.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
    from lungsearch.config import load_profile
    from lungsearch.models import create_model
    from lungsearch.registry import load_model, save_model
    from lungsearch.store import MilvusStore

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="lungsearch-bench-load-"))
    prom = metrics_server = None
    result: dict[str, Any] = {
        "provenance": provenance(
            "load",
            seed=args.seed,
            profile=args.profile,
            cases=args.cases,
            image_size=args.image_size,
            num_cpus=args.num_cpus,
            step_seconds=args.step_seconds,
            p99_target_ms=args.p99_ms,
            serve_mode=getattr(args, "serve_mode", "throughput"),
            serve_env=SERVE_MODES[getattr(args, "serve_mode", "throughput")],
            untrained_model=True,
            client="same machine, loopback",
        )
    }
    try:
        cfg = load_profile(args.profile, [f"data.image_size={args.image_size}"])
        torch.manual_seed(args.seed)
        reg = work / "artifacts"
        card = save_model(
            create_model(cfg).eval(), cfg, metrics={}, data_fingerprint="synthetic", synthetic_data=True, root=reg
        )
        model, card = load_model(f"{args.profile}@{card.version}", root=reg)
        db = work / "load.db"
        with MilvusStore(str(db), timeout=120) as store:
            _, _, cases = _synthetic_cases(model, card, args.cases, seed=args.seed)
            for i in range(0, len(cases), 20000):
                store.upsert(args.profile, card.version, cases[i : i + 20000])
            store.wait_for_index(args.profile, card.version, timeout=1800)
        del model
        queries = _query_images("ct" if cfg.modality == "ct" else "cxr", 32, args.image_size, work)

        from ray import serve
        from ray.serve.config import HTTPOptions, gRPCOptions

        from lungsearch.runtime import init_ray, shutdown_ray
        from services.gateway import app

        init_ray(address="", num_cpus=args.num_cpus, log_to_driver=False)
        import socket

        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        fns = yaml.safe_load((Path(__file__).resolve().parents[1] / "services" / "serve_config.yaml").read_text())
        serve.start(
            http_options=HTTPOptions(host="127.0.0.1", port=ports[1]),
            grpc_options=gRPCOptions(
                port=ports[0], grpc_servicer_functions=fns["grpc_options"]["grpc_servicer_functions"]
            ),
        )
        t = time.perf_counter()
        serve.run(
            app(
                {
                    "profiles": [f"{args.profile}@{card.version}"],
                    "artifacts_dir": str(reg),
                    "milvus_uri": str(db),
                    "hmac_key_file": str(work / "hmac.key"),
                    "insecure_local": True,
                    "torch_threads": 1,
                }
            ),
            name="lungsearch",
            route_prefix="/lungsearch",
        )
        result["app_start_s"] = time.perf_counter() - t
        target = f"127.0.0.1:{ports[0]}"
        ref = common_pb2.ModelRef(profile=args.profile, version=card.version)
        reqs = [
            gateway_pb2.SearchRequest(model=ref, top_k=TOP_K, images=[common_pb2.Image(data=d) for d in q])
            for q in queries
        ]

        def make_request(i: int):
            return reqs[i % len(reqs)]

        with grpc.insecure_channel(target) as ch:  # warm every stage (first batch, index load)
            stub = gateway_pb2_grpc.LungSearchStub(ch)
            for i in range(5):
                assert len(stub.Search(make_request(i), timeout=120).hits) == TOP_K
        if args.prometheus and not Path(PROMETHEUS).exists():
            result["prometheus"] = {"skipped": f"{PROMETHEUS} not installed (Debian package prometheus)"}
        elif args.prometheus:
            # A real Prometheus scrapes the plain /metrics endpoint (as `lungsearch serve` serves it) all along.
            from benchmarks._prometheus import PrometheusScrape
            from lungsearch.cli._serve import start_metrics_server

            gateway = serve.get_deployment_handle("Gateway", app_name="lungsearch")
            metrics_server = start_metrics_server(
                "127.0.0.1", 0, lambda: gateway.metrics_text.remote().result(timeout_s=15)
            )
            prom = PrometheusScrape(
                f"127.0.0.1:{metrics_server.server_address[1]}", work / "prometheus", interval_s=2.0
            ).start()
        steps: list[dict[str, Any]] = []
        over = 0
        c = 1
        while c <= args.max_concurrency:
            r = step(target, make_request, c, seconds=args.step_seconds, max_requests=args.max_requests)
            r["load_avg_1m"] = os.getloadavg()[0]
            steps.append(r)
            print(
                f"c={c:>3}: {r['qps']:6.1f} QPS  p50 {r.get('p50_ms', float('nan')):7.1f} ms  "
                f"p99 {r.get('p99_ms', float('nan')):7.1f} ms  errors {r['errors']}  (load {r['load_avg_1m']:.1f})",
                flush=True,
            )
            over = over + 1 if r.get("p99_ms", float("inf")) > args.p99_ms else 0
            if over >= 2 and c >= args.min_concurrency:
                break
            c *= 2
        result["steps"] = steps
        if prom is not None:
            # Series count and the label check: no label value may look like a case key or a DICOM UID
            # (the queries are PHI-free phantoms, so no PHI needle can be looked for here).
            result["prometheus"] = prom.report()
            print(
                f"prometheus: {result['prometheus']['series']} series, "
                f"{result['prometheus']['metric_names']} metric names, identifier-like labels: "
                f"{result['prometheus']['labels_identifier_like'] or 'none'}",
                flush=True,
            )
        ok = [s for s in steps if s.get("p99_ms", float("inf")) <= args.p99_ms]
        best = max(ok, key=lambda s: s["qps"]) if ok else None
        below = [s for s in steps if best is not None and s["concurrency"] <= best["concurrency"]]
        result["summary"] = {
            "p99_target_ms": args.p99_ms,
            "max_qps_at_p99_target": best["qps"] if best else None,
            "at_concurrency": best["concurrency"] if best else None,
            "p99_ms_there": best["p99_ms"] if best else None,
            "errors_below_saturation": sum(sum(s["errors"].values()) for s in below),
            "requests_below_saturation": sum(s["requests"] for s in below),
            "peak_qps_any_p99": max(s["qps"] for s in steps),
        }
        per_req = [s["cpu_ms_per_request"] for s in steps if s["concurrency"] >= 4 and s["cpu_ms_per_request"]]
        if per_req:
            cost = float(np.median(per_req))
            # What the same work would reach on dedicated cores, with nothing else running: an upper
            # bound (no queueing, every core busy with this app and its client only).
            result["summary"]["cpu_ms_per_search"] = cost
            result["summary"]["qps_bound_on_dedicated_cores"] = 1e3 * args.num_cpus / cost
        shutdown_ray()  # waits for Ray's processes: the next run starts on quiet cores
    finally:
        if prom is not None:
            prom.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return result


def table(result: dict[str, Any]) -> str:
    rows = [
        [
            s["concurrency"],
            round(s["qps"], 1),
            round(s.get("p50_ms", float("nan")), 1),
            round(s.get("p90_ms", float("nan")), 1),
            round(s.get("p99_ms", float("nan")), 1),
            s["requests"],
            sum(s["errors"].values()),
            f"{100 * s['error_rate']:.2f}%",
            round(s["cpu_ms_per_request"], 1) if s.get("cpu_ms_per_request") else "-",
            round(s["load_avg_1m"], 1),
        ]
        for s in result["steps"]
    ]
    return format_table(
        rows,
        [
            "concurrency",
            "QPS",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "requests",
            "errors",
            "error rate",
            "CPU ms/req",
            "load avg",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cxr-hash")
    ap.add_argument("--cases", type=int, default=10000, help="synthetic cases in the index")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the local Ray")
    ap.add_argument("--step-seconds", type=float, default=20.0)
    ap.add_argument("--max-requests", type=int, default=5000, help="cap on measured calls per step")
    ap.add_argument("--max-concurrency", type=int, default=64)
    ap.add_argument("--min-concurrency", type=int, default=8, help="always step up to this (the curve past the knee)")
    ap.add_argument("--p99-ms", type=float, default=250.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-prometheus",
        dest="prometheus",
        action="store_false",
        help="do not run Debian's prometheus against /metrics during the load",
    )
    add_mode_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="2000 cases, 5 s steps, up to concurrency 8, no file")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.serve_modes:
        return _compare(args, argv if argv is not None else sys.argv[1:])
    apply_serve_mode(args.serve_mode)  # before Ray starts and before ray.serve is imported
    if args.quick:
        args.cases, args.step_seconds, args.max_concurrency, args.min_concurrency = 2000, 5.0, 8, 2
    result = run(args)
    print(table(result))
    print(result["summary"])
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out:
        print(f"wrote {write_json(out, result)}", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace, argv: list[str]) -> int:
    """Every mode of ``--serve-modes`` in one run: per mode the median over rounds of the max
    sustained QPS at the p99 target and of the CPU per Search, and their ratio to the first mode."""
    import statistics

    from benchmarks.serve_latency import _drop_options

    modes = [m.strip() for m in args.serve_modes.split(",") if m.strip()]
    child = _drop_options(argv, ("--serve-modes", "--serve-mode", "--out", "--rounds"))
    res = compare_modes("benchmarks.load", child, modes, rounds=args.rounds)
    summary: dict[str, Any] = {}
    for m in modes:
        ok = [r["summary"] for r in res["modes"][m] if "failed" not in r and r["summary"]["max_qps_at_p99_target"]]
        summary[m] = {
            "runs": len(ok),
            "max_qps_at_p99_target": statistics.median(s["max_qps_at_p99_target"] for s in ok) if ok else None,
            "cpu_ms_per_search": statistics.median(s["cpu_ms_per_search"] for s in ok if "cpu_ms_per_search" in s)
            if any("cpu_ms_per_search" in s for s in ok)
            else None,
            "errors_below_saturation": sum(s["errors_below_saturation"] for s in ok),
        }
    first = summary[modes[0]]
    rows = []
    for m in modes:
        v = summary[m]
        for key in ("max_qps_at_p99_target", "cpu_ms_per_search"):
            if v[key] and first[key]:
                v[f"{key}_vs_first"] = v[key] / first[key]
        rows.append(
            [
                m,
                v["runs"],
                v["max_qps_at_p99_target"],
                v.get("max_qps_at_p99_target_vs_first", ""),
                v["cpu_ms_per_search"],
                v.get("cpu_ms_per_search_vs_first", ""),
                v["errors_below_saturation"],
            ]
        )
    res["summary"] = summary
    res["provenance"] = provenance("load_modes", seed=args.seed, modes=modes, rounds=args.rounds, child_argv=child)
    print(
        format_table(rows, ["mode", "runs", "max QPS (p99 target)", "vs first", "CPU ms/Search", "vs first", "errors"])
    )
    out = args.out or DEFAULT_OUT.with_name("load_modes.json")
    print(f"wrote {write_json(out, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
