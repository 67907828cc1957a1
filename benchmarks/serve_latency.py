"""Search latency through Ray Serve's gRPC proxy, the ranking stage alone, and the serving overhead.

In one run, on synthetic data (an untrained model of the profile, phantom query images, and N
synthetic cases written straight into the milvus-lite store; the store part measures the search
machinery, not retrieval quality):

1. ``Search`` over a real gRPC channel through the whole graph (gateway -> encoding -> fusion ->
   hashing -> ranking) at concurrency 1, 8 and 32 against each index size (one registry version
   per size, so one app serves them all): p50/p99 latency, QPS, errors.
2. The ranking stage alone (``CaseIndex.search``, what the Ranking replica runs) against a NumPy
   brute-force scan of the same data (Hamming candidates + cosine re-rank for hashing profiles,
   exact cosine otherwise), interleaved, side by side.
3. Serving overhead: ``Search`` over gRPC (concurrency 1) minus the *same stages called in-process*
   (decode, preprocess, encode, fuse, hash, index search, store fetch of the top 10; same model,
   same thread count, same data: a copy of the store file), interleaved call by call.
   Target (shared/TARGETS.md): overhead <= 5 ms p50.

    .venv/bin/python -m benchmarks.serve_latency --quick
    .venv/bin/python -m benchmarks.serve_latency --sizes 10000,100000 --concurrency 1,8,32

Writes ``benchmarks/results/serve_latency.json`` (unless ``--quick`` without ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._serve_modes import SERVE_MODES, add_mode_arguments, apply_serve_mode, compare_modes
from benchmarks._util import format_table, latency_stats, provenance, time_interleaved, write_json

__all__ = ["main", "run"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serve_latency.json"
TOP_K = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _synthetic_cases(model, card, n: int, seed: int):
    """N StoredCase rows: unit embeddings, the model's own codes of them, random labels."""
    import torch

    from lungsearch.models.hashing import pack_codes
    from lungsearch.store import StoredCase

    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, card.embedding_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    codes = None
    if card.code_bits:
        lsh = getattr(model, "lsh", None)
        with torch.inference_mode():
            bits = lsh.codes(torch.from_numpy(emb)).numpy() if lsh is not None else emb
        codes = pack_codes(bits)
    targets = list(card.targets)
    now = time.time()
    out = []
    for i in range(n):
        labels = [targets[j] for j in np.flatnonzero(rng.random(len(targets)) < 0.2)] or [targets[0]]
        out.append(
            StoredCase(
                case_key=f"syn{seed:02d}{i:010d}",
                modality=card.config.modality,
                view="PA" if card.config.modality == "cxr" else "AXIAL",
                labels=labels,
                report_excerpt="synthetic case",
                embedding=emb[i],
                code=codes[i].tobytes() if codes is not None else b"",
                ingested_at=now,
                num_images=1,
                model_version=card.version,
            )
        )
    return emb, codes, out


def _query_images(kind: str, n: int, size: int, work: Path) -> list[bytes]:
    from lungsearch.data import phantoms

    root = Path(phantoms.generate(kind, n, work / f"queries-{kind}", seed=11, size=size, slices=4))
    recs = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line]
    return [[(root / p).read_bytes() for p in r["image_paths"]] for r in recs]


def _load_run(stub, make_req, concurrency: int, requests: int) -> dict[str, Any]:
    """``requests`` calls spread over ``concurrency`` threads; latency stats, QPS, error count."""
    import grpc

    lat: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                stub.Search(make_req(i), timeout=120)
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
            except grpc.RpcError as exc:
                with lock:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, **latency_stats(lat), "qps": len(lat) / wall, "errors": errors}


def _numpy_rank(
    emb32: np.ndarray, codes64: np.ndarray | None, q: np.ndarray, qcode64: np.ndarray | None, candidates: int
) -> np.ndarray:
    """Brute force: Hamming candidates (popcount) + cosine re-rank, or exact cosine."""
    if codes64 is not None:
        d = np.bitwise_count(codes64 ^ qcode64).sum(axis=1)
        cand = np.argpartition(d, candidates)[:candidates]
        sims = emb32[cand] @ q
        return cand[np.argsort(-sims)[:TOP_K]]
    sims = emb32 @ q
    top = np.argpartition(-sims, TOP_K)[:TOP_K]
    return top[np.argsort(-sims[top])]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    import torch
    import yaml

    from lungsearch._proto.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
    from lungsearch.config import load_profile
    from lungsearch.models import create_model
    from lungsearch.registry import load_model, save_model
    from lungsearch.store import CaseIndex, MilvusStore

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="lungsearch-bench-serve-"))
    result: dict[str, Any] = {
        "provenance": provenance(
            "serve_latency",
            seed=args.seed,
            profile=args.profile,
            sizes=sizes,
            concurrency=concurrency,
            threads=args.threads,
            image_size=args.image_size,
            stages=args.stages,
            serve_mode=args.serve_mode,
            serve_env=SERVE_MODES[args.serve_mode],
            untrained_model=True,
        )
    }
    try:
        # --- registry: one version per index size (same weights), store pre-filled --------------
        cfg = load_profile(args.profile, [f"data.image_size={args.image_size}"])
        torch.manual_seed(args.seed)
        model0 = create_model(cfg).eval()
        reg = work / "artifacts"
        versions = {}
        for n in sizes:
            card = save_model(
                model0,
                cfg,
                metrics={},
                data_fingerprint="synthetic",
                synthetic_data=True,
                root=reg,
                version=f"20260101-000000-n{n}",
            )
            versions[n] = card.version
        model, card = load_model(f"{args.profile}@{versions[sizes[0]]}", root=reg)
        db = work / "serve.db"
        store = MilvusStore(str(db), timeout=120)
        data = {}
        for n in sizes:
            t = time.perf_counter()
            emb, codes, cases = _synthetic_cases(model, card, n, seed=len(data))
            for i in range(0, n, 20000):
                store.upsert(args.profile, versions[n], cases[i : i + 20000])
            store.wait_for_index(args.profile, versions[n], timeout=1800)
            data[n] = (emb, codes)
            print(
                f"store: {n} synthetic cases written, flushed and indexed in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
        store.close()
        # The in-process comparison needs the same data without the Ranking replica's file lock.
        shutil.copytree(db, work / "inproc.db")
        kind = "ct" if cfg.modality == "ct" else "cxr"
        queries = _query_images(kind, 16, args.image_size, work)

        # --- Serve app -----------------------------------------------------------------------------
        from ray import serve
        from ray.serve.config import gRPCOptions

        from lungsearch.runtime import init_ray, shutdown_ray
        from services.gateway import app

        init_ray(address="", num_cpus=args.num_cpus or os.cpu_count(), log_to_driver=False)
        port = _free_port()
        fns = yaml.safe_load((Path(__file__).resolve().parents[1] / "services" / "serve_config.yaml").read_text())
        serve.start(
            # a free HTTP port too: the benchmark can run beside a test session's Serve (port 8000)
            http_options={"host": "127.0.0.1", "port": _free_port()},
            grpc_options=gRPCOptions(port=port, grpc_servicer_functions=fns["grpc_options"]["grpc_servicer_functions"]),
        )
        t = time.perf_counter()
        serve.run(
            app(
                {
                    "profiles": [f"{args.profile}@{versions[sizes[0]]}"],
                    "artifacts_dir": str(reg),
                    "milvus_uri": str(db),
                    "hmac_key_file": str(work / "hmac.key"),
                    "insecure_local": True,
                    "torch_threads": args.threads,
                    "stages": args.stages,
                }
            ),
            name="lungsearch",
            route_prefix="/lungsearch",
        )
        result["app_start_s"] = time.perf_counter() - t
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = gateway_pb2_grpc.LungSearchStub(channel)

        def make_req(n):
            ref = common_pb2.ModelRef(profile=args.profile, version=versions[n])

            def req(i):
                return gateway_pb2.SearchRequest(
                    model=ref, top_k=TOP_K, images=[common_pb2.Image(data=d) for d in queries[i % len(queries)]]
                )

            return req

        # --- in-process: the same stages, same model, same data (a copy of the store) -----------
        from lungsearch.data import read_study
        from lungsearch.data.deid import load_or_create_key
        from lungsearch.serving import pipeline

        key = load_or_create_key(work / "hmac.key")
        inproc_store = MilvusStore(str(work / "inproc.db"), timeout=120)
        lim = cfg.serve.limits

        def inproc(n, index):
            def call(i):
                study = read_study(queries[i % len(queries)], limits=lim, hmac_key=key)
                item = pipeline.prepare_study(study, None, card.config, model)
                feats = pipeline.encode_batch(model, [item])[0]
                fused = pipeline.fuse_batch(model, [feats])[0]
                code = None
                if card.code_bits:
                    code = (
                        pipeline.hash_code(model, hash_logits=feats["hash_logits"])
                        if "hash_logits" in feats
                        else pipeline.hash_code(model, embedding=fused["embedding"])
                    )
                hits = index.search(fused["embedding"], code, top_k=TOP_K)
                inproc_store.get_many(args.profile, versions[n], [h.key for h in hits])

            return call

        result["sizes"] = {}
        for n in sizes:
            req = make_req(n)
            for i in range(3):  # warm up (the other versions' indexes load on first use)
                stub.Search(req(i), timeout=600)
            index = CaseIndex.from_store(
                inproc_store, args.profile, versions[n], default_candidates=cfg.index.candidates if cfg.index else 100
            )
            row: dict[str, Any] = {"cases": n, "load": []}
            for c in concurrency:
                r = _load_run(stub, req, c, max(args.requests, 4 * c))
                row["load"].append(r)
                print(
                    f"N={n:>7} c={c:>2}: p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
                    f"{r['qps']:.1f} QPS  errors {r['errors']}",
                    flush=True,
                )
            grpc_call = lambda i, req=req: stub.Search(req(i), timeout=120)  # noqa: E731
            pair = time_interleaved({"grpc_serve": grpc_call, "in_process": inproc(n, index)}, args.overhead_requests)
            g, p = latency_stats(pair["grpc_serve"]), latency_stats(pair["in_process"])
            row["overhead"] = {
                "grpc_serve": g,
                "in_process": p,
                "overhead_p50_ms": g["p50_ms"] - p["p50_ms"],
                "target_p50_ms": 5.0,
                "met": g["p50_ms"] - p["p50_ms"] <= 5.0,
            }
            print(
                f"N={n:>7} overhead: gRPC/Serve p50 {g['p50_ms']:.1f} ms vs in-process {p['p50_ms']:.1f} ms "
                f"-> {g['p50_ms'] - p['p50_ms']:.1f} ms (target <= 5)",
                flush=True,
            )

            # --- ranking stage alone vs NumPy brute force --------------------------------------------
            emb, codes = data[n]
            rng = np.random.default_rng(args.seed + n)
            qs = emb[rng.integers(0, n, 64)] + 0.05 * rng.standard_normal((64, emb.shape[1])).astype(np.float32)
            qs /= np.linalg.norm(qs, axis=1, keepdims=True)
            qcodes = None
            codes64 = None
            if codes is not None:
                import torch as _t

                from lungsearch.models.hashing import pack_codes

                lsh = getattr(model, "lsh", None)
                with _t.inference_mode():
                    qbits = lsh.codes(_t.from_numpy(qs)).numpy() if lsh is not None else qs
                qcodes = pack_codes(qbits)
                pad = (-codes.shape[1]) % 8
                codes64 = np.ascontiguousarray(np.pad(codes, ((0, 0), (0, pad)))).view(np.uint64)
                qcodes64 = np.ascontiguousarray(np.pad(qcodes, ((0, 0), (0, pad)))).view(np.uint64)
            cand = index.default_candidates
            rank = time_interleaved(
                {
                    "case_index": lambda i: index.search(
                        qs[i % 64], qcodes[i % 64].tobytes() if qcodes is not None else None, top_k=TOP_K
                    ),
                    "numpy_brute_force": lambda i: _numpy_rank(
                        emb, codes64, qs[i % 64], qcodes64[i % 64] if qcodes is not None else None, cand
                    ),
                },
                args.rank_requests,
            )
            ci, nb = latency_stats(rank["case_index"]), latency_stats(rank["numpy_brute_force"])
            row["ranking_stage"] = {
                "case_index": ci,
                "numpy_brute_force": nb,
                "speedup_p50": nb["p50_ms"] / ci["p50_ms"] if ci["p50_ms"] else None,
                "mode": "hamming candidates + cosine re-rank" if codes is not None else "exact cosine",
                "candidates": cand,
            }
            print(
                f"N={n:>7} ranking stage: CaseIndex p50 {ci['p50_ms']:.3f} ms vs NumPy {nb['p50_ms']:.3f} ms",
                flush=True,
            )
            result["sizes"][str(n)] = row
        inproc_store.close()
        shutdown_ray()  # waits for Ray's processes: the next run starts on quiet cores
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _table(result: dict[str, Any]) -> str:
    rows = []
    for n, row in result["sizes"].items():
        for r in row["load"]:
            rows.append([n, r["concurrency"], r["p50_ms"], r["p99_ms"], r["qps"], sum(r["errors"].values())])
    t1 = format_table(rows, ["cases", "concurrency", "p50 ms", "p99 ms", "QPS", "errors"])
    rows2 = [
        [
            n,
            row["ranking_stage"]["case_index"]["p50_ms"],
            row["ranking_stage"]["case_index"]["p99_ms"],
            row["ranking_stage"]["numpy_brute_force"]["p50_ms"],
            row["ranking_stage"]["numpy_brute_force"]["p99_ms"],
            row["overhead"]["grpc_serve"]["p50_ms"],
            row["overhead"]["in_process"]["p50_ms"],
            row["overhead"]["overhead_p50_ms"],
        ]
        for n, row in result["sizes"].items()
    ]
    t2 = format_table(
        rows2, ["cases", "rank p50", "rank p99", "numpy p50", "numpy p99", "gRPC p50", "in-proc p50", "overhead p50"]
    )
    return t1 + "\n\n" + t2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cxr-hash")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=64, help="Search calls per concurrency level (at least 4x it)")
    ap.add_argument("--overhead-requests", type=int, default=40)
    ap.add_argument("--rank-requests", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument(
        "--stages",
        choices=["graph", "fused"],
        default="graph",
        help="graph: Encoding -> Fusion -> Hashing hops; fused: the Encoding replica fuses and hashes",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model replica and in-process")
    ap.add_argument("--num-cpus", type=int, default=0, help="logical CPUs of the local Ray (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    add_mode_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="2000 cases, concurrency 1 and 8, few calls")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.serve_modes:
        return _compare(args, argv if argv is not None else sys.argv[1:])
    apply_serve_mode(args.serve_mode)  # before Ray starts and before ray.serve is imported
    if args.quick:
        args.sizes, args.concurrency, args.requests = "2000", "1,8", 16
        args.overhead_requests, args.rank_requests = 10, 50
    result = run(args)
    print(_table(result))
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out:
        print(f"wrote {write_json(out, result)}")
    return 0


def _drop_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """argv without ``names`` (as ``--x v`` or ``--x=v``): the children get their own mode and file."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


def _compare(args: argparse.Namespace, argv: list[str]) -> int:
    """Every mode of ``--serve-modes`` in one run: per mode the median over rounds of the overhead
    p50 and of the QPS at the highest concurrency, and their ratio to the first mode."""
    import statistics

    modes = [m.strip() for m in args.serve_modes.split(",") if m.strip()]
    child = _drop_options(argv, ("--serve-modes", "--serve-mode", "--out", "--rounds"))
    res = compare_modes("benchmarks.serve_latency", child, modes, rounds=args.rounds)
    rows, summary = [], {}
    for m in modes:
        ok = [r for r in res["modes"][m] if "failed" not in r]
        if not ok:
            summary[m] = {"failed": True}
            rows.append([m, "failed", "", "", "", "", ""])
            continue
        per_size = {}
        for n in ok[0]["sizes"]:
            over = statistics.median(r["sizes"][n]["overhead"]["overhead_p50_ms"] for r in ok)
            grpc = statistics.median(r["sizes"][n]["overhead"]["grpc_serve"]["p50_ms"] for r in ok)
            top = statistics.median(r["sizes"][n]["load"][-1]["qps"] for r in ok)
            per_size[n] = {
                "overhead_p50_ms": over,
                "grpc_p50_ms": grpc,
                "qps_top_concurrency": top,
                "top_concurrency": ok[0]["sizes"][n]["load"][-1]["concurrency"],
            }
        summary[m] = {"runs": len(ok), "sizes": per_size}
    base = summary.get(modes[0], {})
    for m in modes:
        for n, v in summary[m].get("sizes", {}).items():
            b = base.get("sizes", {}).get(n)
            if b:
                v["grpc_p50_vs_first"] = v["grpc_p50_ms"] / b["grpc_p50_ms"]
                v["qps_vs_first"] = v["qps_top_concurrency"] / b["qps_top_concurrency"]
            rows.append(
                [
                    m,
                    n,
                    v["grpc_p50_ms"],
                    v["overhead_p50_ms"],
                    v.get("grpc_p50_vs_first", ""),
                    v["qps_top_concurrency"],
                    v.get("qps_vs_first", ""),
                ]
            )
    res["summary"] = summary
    res["provenance"] = provenance(
        "serve_latency_modes", seed=args.seed, modes=modes, rounds=args.rounds, child_argv=child
    )
    print(
        format_table(
            rows, ["mode", "cases", "gRPC p50 ms", "overhead p50 ms", "p50 vs first", "QPS (top c)", "QPS vs first"]
        )
    )
    out = args.out or DEFAULT_OUT.with_name("serve_modes.json")
    print(f"wrote {write_json(out, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
