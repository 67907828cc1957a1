"""Training throughput: the Ray Train loop (``TorchTrainer``, 1 worker, Ray Data shards) vs a plain
PyTorch loop, same model, same data, same batch size, same torch threads.

Both train the same profile model from the same initial weights on the same in-memory cases
(synthetic arrays: this measures computation and framework overhead, not quality). samples/s is
the wall time of the training passes only (data fetching included, validation and start-up
excluded), taken over the epochs after the first (warm-up) in each contender; the contenders run
one after the other in one process.

    .venv/bin/python -m benchmarks.train_overhead                          # JSON on stdout
    .venv/bin/python -m benchmarks.train_overhead --out benchmarks/results/train_overhead.json
    .venv/bin/python -m benchmarks.train_overhead --profile cxr-report --image-size 64 --cases 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["main", "plain_loop", "ray_loop"]


def _table(cfg, n: int, seed: int):
    """Cases whose images carry the class, as arrays (the same generator the training tests use)."""
    from lungsearch.training.cases import CaseTable

    rng = np.random.default_rng(seed)
    c = len(cfg.data.targets)
    size = cfg.data.image_size
    y = rng.integers(0, c, n)
    images = rng.normal(0, 0.3, (n, 1, 1, size, size)).astype(np.float32)
    for i in range(n):
        r0 = (y[i] * size) // c
        images[i, :, 0, r0 : r0 + max(2, size // c)] += 1.5
    hot = np.eye(c, dtype=np.float32)[y]
    targets = list(cfg.data.targets)
    return CaseTable(
        case_ids=[f"b{i}" for i in range(n)],
        groups=[f"b{i}" for i in range(n)],
        images=images,
        n_slices=np.ones(n, dtype=np.int32),
        labels=hot if cfg.data.multilabel else y.astype(np.int64),
        multi_hot=hot,
        reports=[f"finding {targets[k].lower()}" for k in y],
        radiomics=None,
        modality=cfg.modality,
        views=["PA"] * n,
        synthetic=True,
        targets=targets,
    )


def plain_loop(cfg, table, epochs: int, threads: int) -> list[float]:  # noqa: D401
    """A textbook PyTorch loop (DataLoader over tensors): samples/s per epoch."""
    from lungsearch.losses import create_loss
    from lungsearch.models import create_model
    from lungsearch.training.inference import forward_cases
    from lungsearch.training.loop import seed_everything

    torch.set_num_threads(threads)
    seed_everything(cfg.train.seed)
    model = create_model(cfg).train()
    loss_fn = create_loss(cfg.model.loss)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    ds = torch.utils.data.TensorDataset(
        torch.from_numpy(table.images),
        torch.from_numpy(table.n_slices.astype(np.int64)),
        torch.from_numpy(table.labels),
    )
    dl = torch.utils.data.DataLoader(
        ds, batch_size=cfg.train.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    has_text = model.text_encoder is not None
    rates = []
    for _ in range(epochs):
        t0, n = time.perf_counter(), 0
        for x, ns, y in dl:
            if len(y) < 2:
                continue
            texts = [table.reports[0]] * len(y) if has_text else None
            out = forward_cases(model, x, ns, texts=texts)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def ray_loop(cfg, table, epochs: int) -> tuple[list[float], float]:
    """The lungsearch Ray Train job (1 worker): samples/s per epoch (from its own reports) and the
    wall time of the whole ``fit`` (start-up included)."""
    from lungsearch.training.trainer import fit

    val = table.subset(range(min(32, len(table))))
    with tempfile.TemporaryDirectory(prefix="lungsearch-bench-") as d:
        t0 = time.perf_counter()
        res = fit(cfg, table, val, run_name="train-overhead", storage_path=d, resume=False)
        wall = time.perf_counter() - t0
    return [h["samples_per_s"] for h in res.history], wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cxr-cnn")
    p.add_argument("--cases", type=int, default=384)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads in both contenders (Ray worker: train.torch_threads)"
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from benchmarks._util import provenance

    prov = provenance("train_overhead", seed=0, argv=argv)  # taken first: the load average at the start

    from lungsearch.config import load_profile
    from lungsearch.runtime import init_ray

    overrides = [
        f"data.image_size={args.image_size}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        "train.early_stopping_patience=0",
        "data.augment=false",
        f"train.torch_threads={args.threads}",
    ]
    if args.profile in ("cxr-report", "cxr-clip"):
        overrides.append("model.text_encoder={name: hashed, params: {}}")  # the loop, not BERT, is measured
    cfg = load_profile(args.profile, overrides)
    table = _table(cfg, args.cases, seed=0)
    init_ray(address="", num_cpus=2, log_to_driver=False)
    # plain, Ray, plain again: the Ray run is compared with the mean of the two plain runs around
    # it, so load drifting on a shared machine affects both sides alike.
    plain_a = plain_loop(cfg, table, args.epochs, args.threads)
    ray_rates, ray_wall = ray_loop(cfg, table, args.epochs)
    plain_b = plain_loop(cfg, table, args.epochs, args.threads)
    steady = lambda r: float(np.mean(r[1:])) if len(r) > 1 else float(r[0])  # noqa: E731 - epoch 1 is warm-up
    plain = plain_a + plain_b
    plain_rate = (steady(plain_a) + steady(plain_b)) / 2
    ratio = steady(ray_rates) / plain_rate
    result = {
        "benchmark": "train_overhead",
        "profile": args.profile,
        "cases": args.cases,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "torch_threads": args.threads,
        "data": "synthetic arrays (computation only)",
        "plain_samples_per_s": plain_rate,
        "ray_train_samples_per_s": steady(ray_rates),
        "ratio_ray_over_plain": ratio,
        "target": ">= 0.9",
        "met": ratio >= 0.9,
        "plain_per_epoch": plain,
        "ray_per_epoch": ray_rates,
        "ray_fit_wall_s_including_startup": ray_wall,
        "provenance": prov,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(f"ray train / plain pytorch samples/s: {ratio:.3f} (target >= 0.9)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
