"""Images/s through the Encoding deployment vs a direct batched PyTorch call, same model and batch.

One run, interleaved rounds (these machines are noisy; the ratio is what counts):

* ``deployment``: N decoded studies sent to the Encoding deployment through a Serve handle (what
  the gateway does), at most ``--max-ongoing`` in flight (the replica's limit, which the shipped
  Gateway's own limit matches), ``@serve.batch`` with ``max_batch_size=B``; each request also
  preprocesses its study and returns its features as protobuf tensors;
* ``direct_model``: ``model.encode(images)`` on the same already preprocessed images in batches of
  B, in this process (the bare PyTorch cost);
* ``direct_pipeline``: ``prepare_study`` + ``encode_batch`` in batches of B in this process (the
  same library work the deployment does, without Serve).

Both sides use the same torch thread count (``--threads``; the replica gets it via
``user_config``). Target (shared/TARGETS.md): deployment / direct_model >= 0.85. Untrained model,
phantom images (synthetic): throughput does not depend on the weights.

    .venv/bin/python -m benchmarks.encode_throughput --quick
    .venv/bin/python -m benchmarks.encode_throughput --images 256 --batch 16 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._util import format_table, provenance, write_json

__all__ = ["main", "run"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "encode_throughput.json"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from ray import serve

    from lungsearch._proto.v1 import common_pb2, encoding_pb2
    from lungsearch.config import load_profile
    from lungsearch.data import phantoms, read_study
    from lungsearch.models import create_model
    from lungsearch.registry import load_model, save_model
    from lungsearch.runtime import init_ray, shutdown_ray
    from lungsearch.serving import pipeline
    from services.encoding import Encoding

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lungsearch-bench-encode-"))
    result: dict[str, Any] = {
        "provenance": provenance(
            "encode_throughput",
            seed=args.seed,
            profile=args.profile,
            images=args.images,
            batch=args.batch,
            threads=args.threads,
            image_size=args.image_size,
            untrained_model=True,
        )
    }
    try:
        cfg = load_profile(args.profile, [f"data.image_size={args.image_size}"])
        torch.manual_seed(args.seed)
        card = save_model(
            create_model(cfg).eval(),
            cfg,
            metrics={},
            data_fingerprint="synthetic",
            synthetic_data=True,
            root=work / "artifacts",
            version="20260101-000000-bench0",
        )
        model, card = load_model(card.ref, root=work / "artifacts")
        kind = "ct" if cfg.modality == "ct" else "cxr"
        root = Path(
            phantoms.generate(kind, min(args.images, 64), work / "phantoms", seed=3, size=args.image_size, slices=1)
        )
        recs = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line]
        studies = [read_study([(root / p).read_bytes() for p in r["image_paths"]]) for r in recs]
        studies = [studies[i % len(studies)] for i in range(args.images)]
        n_images = sum(len(s.images) for s in studies)
        items = [pipeline.prepare_study(s, None, cfg, model) for s in studies]
        pixels = np.concatenate([it.pixels for it in items])

        init_ray(address="", num_cpus=max(2, args.threads + 1), log_to_driver=False)
        dep = Encoding.options(
            num_replicas=1,
            max_ongoing_requests=args.max_ongoing,
            max_queued_requests=-1,
            ray_actor_options={"num_cpus": 1},
            user_config={
                "max_batch_size": args.batch,
                "batch_wait_timeout_s": args.wait,
                "torch_threads": args.threads,
            },
        ).bind([card.ref], str(work / "artifacts"), args.threads)
        handle = serve.run(dep, name="encode-bench", route_prefix=None)
        ref = common_pb2.ModelRef(profile=card.profile, version=card.version)
        req = encoding_pb2.EncodeRequest(model=ref)
        handle.Encode.remote(req, study=studies[0]).result()  # warm-up (first batch, lazy imports)

        def deployment() -> float:
            # At most max_ongoing requests in flight, as the shipped Gateway (max_ongoing_requests
            # 64) sends them: past the replica's limit Serve's router backs off and retries, and the
            # replica idles (all 256 at once against 64 measured 0.27x, busy 39 % of the time).
            t = time.perf_counter()
            pending: deque = deque()
            for s in studies:
                if len(pending) >= args.max_ongoing:
                    pending.popleft().result()
                pending.append(handle.Encode.remote(req, study=s))
            for r in pending:
                r.result()
            return n_images / (time.perf_counter() - t)

        def direct_model() -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(pixels), args.batch):
                    model.encode(images=torch.from_numpy(pixels[i : i + args.batch]))
            return n_images / (time.perf_counter() - t)

        def direct_pipeline() -> float:
            t = time.perf_counter()
            for i in range(0, len(studies), args.batch):
                batch = [pipeline.prepare_study(s, None, cfg, model) for s in studies[i : i + args.batch]]
                pipeline.encode_batch(model, batch)
            return n_images / (time.perf_counter() - t)

        direct_model()  # warm-up
        rounds: dict[str, list[float]] = {"deployment": [], "direct_model": [], "direct_pipeline": []}
        fns = {"deployment": deployment, "direct_model": direct_model, "direct_pipeline": direct_pipeline}
        for r in range(args.rounds):
            order = list(fns)[r % 3 :] + list(fns)[: r % 3]
            for name in order:
                rounds[name].append(fns[name]())
                print(f"round {r + 1}: {name:16s} {rounds[name][-1]:8.1f} images/s", flush=True)
        med = {k: float(np.median(v)) for k, v in rounds.items()}
        from prometheus_client.parser import text_string_to_metric_families

        fams = {f.name: f for f in text_string_to_metric_families(handle.metrics_text.remote().result())}
        bs = {
            s.name.rsplit("_", 1)[1]: s.value
            for s in fams["lungsearch_encoding_batch_size_items"].samples
            if s.name.endswith(("_sum", "_count"))
        }
        bt = {
            s.name.rsplit("_", 1)[1]: s.value
            for s in fams["lungsearch_encoding_batch_duration_seconds"].samples
            if s.name.endswith(("_sum", "_count"))
        }
        result["deployment_mean_batch_size"] = bs["sum"] / max(bs["count"], 1)
        result["deployment_model_time_share"] = bt["sum"] / max(sum(n_images / v for v in rounds["deployment"]), 1e-9)
        print(
            f"deployment: mean batch {result['deployment_mean_batch_size']:.1f} studies; "
            f"model busy {100 * result['deployment_model_time_share']:.0f}% of the deployment rounds",
            flush=True,
        )
        result.update(
            {
                "images_per_round": n_images,
                "rounds": rounds,
                "median_images_per_s": med,
                "ratio_deployment_vs_direct_model": med["deployment"] / med["direct_model"],
                "ratio_deployment_vs_direct_pipeline": med["deployment"] / med["direct_pipeline"],
                "target_ratio": 0.85,
            }
        )
        result["met"] = result["ratio_deployment_vs_direct_model"] >= 0.85
        shutdown_ray()  # waits for Ray's processes: the next run starts on quiet cores
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cxr-hash")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-ongoing", type=int, default=64, help="the replica's max_ongoing_requests")
    ap.add_argument("--wait", type=float, default=0.01, help="@serve.batch batch_wait_timeout_s")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="64 images, 2 rounds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 64, 2
    result = run(args)
    med = result["median_images_per_s"]
    print(
        format_table(
            [[k, v] for k, v in med.items()]
            + [
                ["deployment / direct_model", result["ratio_deployment_vs_direct_model"]],
                ["deployment / direct_pipeline", result["ratio_deployment_vs_direct_pipeline"]],
            ],
            ["contender", "images/s (median)"],
        )
    )
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out:
        print(f"wrote {write_json(out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
