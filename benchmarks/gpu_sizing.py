"""GPU sizing of the full-size configs (``configs/*.gpu.yaml``): peak GPU memory and samples/s of one
training step at each config's own batch size and input size, with AMP as the training loop uses
it (bf16 autocast), every stage of two-stage recipes; plus a one-epoch run of the real worker loop
(``lungsearch.training.loop.run_local``) on the GPU as a smoke test of the AMP path.

Needs a CUDA device. Synthetic inputs (this sizes memory and speed; it says nothing about quality).

    python -m benchmarks.gpu_sizing --out benchmarks/results/gpu_sizing.json
    python -m benchmarks.gpu_sizing --configs configs/cxr-hash.gpu.yaml --steps 3

``--set`` overrides apply to every config (e.g. ``model.text_encoder={name: hashed, params: {}}``
on a machine without the MiniLM weights; the report says which overrides were used).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from benchmarks._util import write_json

__all__ = ["main", "size_config"]

REPO = Path(__file__).resolve().parent.parent


def _without_missing_radiomics(cfg):
    """pyradiomics is not always installable (it builds from source): without it, size the CT
    model with the radiomics branch and the (small) outer-product fusion left out, and say so."""
    import importlib.util

    if cfg.model.radiomics is None or importlib.util.find_spec("radiomics") is not None:
        return None
    return cfg.with_overrides(["model.radiomics=null", "model.fusion=null"])


def _sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def size_config(path: str, overrides: list[str], steps: int, device: str = "cuda") -> dict:
    from lungsearch.config import load_profile
    from lungsearch.losses import loss_for_stage
    from lungsearch.models import create_model
    from lungsearch.training.inference import CaseForward
    from lungsearch.training.loop import _autocast, build_optimizer, seed_everything
    from lungsearch.training.recipes import stages_for

    cfg = load_profile(path, overrides)
    stubbed = _without_missing_radiomics(cfg)
    cfg = stubbed or cfg
    seed_everything(0)
    dev = torch.device(device)
    model = create_model(cfg).to(dev).train()
    runner = CaseForward(model)
    b, s = cfg.train.batch_size, cfg.data.image_size
    sl = (cfg.data.phantom.slices if cfg.data.phantom else 8) if cfg.modality == "ct" else 1
    g = torch.Generator().manual_seed(0)
    images = torch.randn(b, sl, 1, s, s, generator=g).to(dev)
    n_slices = torch.full((b,), sl, device=dev)
    c = len(cfg.data.targets)
    y = torch.randint(0, c, (b,), generator=g)
    labels = (torch.nn.functional.one_hot(y, c).float() if cfg.data.multilabel else y).to(dev)
    texts = (
        [f"finding number {i % 7} in the {'left' if i % 2 else 'right'} lower lobe" for i in range(b)]
        if model.text_encoder is not None
        else None
    )
    rad = (
        torch.randn(b, model.radiomics.out_dim, generator=g, dtype=torch.float64)
        if getattr(model, "radiomics", None) is not None
        else None
    )
    out = {
        "config": Path(path).name,
        "profile": cfg.profile,
        "batch_size": b,
        "image_size": s,
        "slices_per_case": sl,
        "radiomics_left_out": stubbed is not None,
        "params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        "stages": {},
    }
    for stage in stages_for(cfg):
        if hasattr(model, "set_stage") and stage.name != "train":
            model.set_stage(stage.name)
        loss_fn = loss_for_stage(cfg, stage.name if stage.name != "train" else None)
        params = list(model.probe.named_parameters(prefix="probe")) if stage.frozen_features else None
        opt = build_optimizer(model, stage, cfg, params)
        amp, scaler = _autocast(dev, cfg.train.amp)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for k in range(steps + 1):
            _sync(dev)
            t0 = time.perf_counter()
            with amp:
                o = runner(images, n_slices, texts=texts, radiomics=rad)
                loss = loss_fn(o, labels if stage.uses_labels else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(dev)
            if k:  # the first step includes cuDNN autotuning and allocations
                times.append(time.perf_counter() - t0)
        out["stages"][stage.name] = {
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
            "step_s_median": float(np.median(times)),
            "samples_per_s": b / float(np.median(times)),
            "loss_finite": bool(torch.isfinite(loss.detach()).item()),
        }
    out["fits_80gb"] = all((v["peak_gpu_memory_gib"] or 0) < 78 for v in out["stages"].values())
    del model, runner, opt
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def loop_smoke(overrides: list[str], device: str = "cuda") -> dict:
    """One epoch of each stage of the real worker loop on the GPU (AMP), tiny synthetic data."""
    from lungsearch.config import load_profile
    from lungsearch.training.cases import CaseTable
    from lungsearch.training.loop import run_local
    from lungsearch.training.recipes import stages_for

    res = {}
    for profile in ("cxr-hash", "cxr-clip", "ct-ild"):
        cfg = load_profile(profile, ["train.epochs=1", "train.batch_size=8", "data.image_size=64", *overrides])
        cfg = _without_missing_radiomics(cfg) or cfg
        rng = np.random.default_rng(0)
        n, c = 24, len(cfg.data.targets)
        sl = 2 if cfg.modality == "ct" else 1
        y = np.arange(n) % c
        hot = np.eye(c, dtype=np.float32)[y]
        t = CaseTable(
            case_ids=[f"c{i}" for i in range(n)],
            groups=[f"g{i}" for i in range(n)],
            images=rng.normal(size=(n, sl, 1, 64, 64)).astype(np.float32),
            n_slices=np.full(n, sl, dtype=np.int32),
            labels=hot if cfg.data.multilabel else y.astype(np.int64),
            multi_hot=hot,
            reports=["r"] * n,
            radiomics=rng.normal(size=(n, 42)) if cfg.model.radiomics else None,
            modality=cfg.modality,
            views=[""] * n,
            synthetic=True,
            targets=list(cfg.data.targets),
        )
        conf = {
            "cfg": cfg.model_dump(mode="json"),
            "stages": [asdict(s) for s in stages_for(cfg)],
            "radiomics_fit": t.radiomics,
        }
        ctx = run_local(conf, {"train": t.rows(), "val": t.rows()}, device=device)
        res[profile] = {
            "reports": len(ctx.reports),
            "done": ctx.reports[-1].get("done"),
            "finite": all(np.isfinite(r["train_loss"]) for r in ctx.reports),
        }
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=sorted(str(x) for x in (REPO / "configs").glob("*.gpu.yaml")))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-loop", action="store_true", help="skip the worker-loop smoke test")
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cuda", help="cpu only checks that the script runs")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to size", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    cuda = args.device == "cuda"
    result = {
        "benchmark": "gpu_sizing",
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "overrides": args.set,
        "data": "synthetic tensors (memory and speed only)",
        "configs": [],
    }
    for path in args.configs:
        try:
            result["configs"].append(size_config(path, args.set, args.steps, args.device))
        except torch.cuda.OutOfMemoryError as exc:
            result["configs"].append(
                {"config": Path(path).name, "error": f"out of memory: {str(exc)[:200]}", "fits_80gb": False}
            )
            torch.cuda.empty_cache()
        print(json.dumps(result["configs"][-1]), flush=True)
    if not args.no_loop:
        result["worker_loop_on_gpu"] = loop_smoke(
            [o for o in args.set if o.startswith("model.text_encoder")], args.device
        )
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
