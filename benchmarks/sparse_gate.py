"""SG-Bi-LSTM vs Bi-LSTM inference time on the same input (paper 1 reports -60%).

Both heads are first trained briefly on the same synthetic sequence task (phantom data, made
up here: a minority of steps carry a marker and the class signal, the rest are noise), the
SG-Bi-LSTM with its sparsity penalty so that its gates learn to drop steps and units. Then
both run inference (eval mode, no grad) on the same held-out batch, interleaved, and the
median times give the ratio. A second table times the SG-Bi-LSTM with its gates forced to
fixed keep fractions, to show how its cost scales.

    .venv/bin/python -m benchmarks.sparse_gate              # prints JSON
    .venv/bin/python -m benchmarks.sparse_gate --out benchmarks/results/sparse_gate.json

Numbers come from synthetic data: they measure computation, not diagnostic quality.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from lungsearch.models.heads import BiLSTMHead, SparseGatedBiLSTM

__all__ = ["main", "make_task", "run"]


def make_task(
    n: int, seq: int, dim: int, classes: int, informative: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences ``[n, seq, dim]`` and labels: a fraction ``informative`` of the steps has
    feature 0 = +3 (the marker) and +2 on feature ``1 + label``; other steps have feature 0 = -3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, seq, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    info = torch.rand(n, seq, generator=g) < informative
    x[..., 0] = torch.where(info, 3.0, -3.0)
    rows, steps = info.nonzero(as_tuple=True)
    x[rows, steps, 1 + y[rows]] += 2.0
    return x, y


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train(
    head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float, seed: int
) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    mask = torch.ones(batch, x.shape[1], dtype=torch.bool, device=x.device)
    head.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g).to(x.device)
        out = head({"sequence": x[idx], "sequence_mask": mask})
        loss = torch.nn.functional.cross_entropy(out["logits"], y[idx])
        reg = getattr(head, "regularization", None)
        if reg is not None:
            loss = loss + reg()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(x.device)
    return time.perf_counter() - t0


@torch.no_grad()
def _accuracy(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    head.eval()
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return float((head({"sequence": x, "sequence_mask": mask})["logits"].argmax(1) == y).float().mean())


@torch.no_grad()
def _time_pair(a, b, inputs, repeats: int, inputs_b=None) -> tuple[float, float]:
    """Median seconds per call of ``a(inputs)`` and ``b(inputs_b or inputs)``, interleaved so
    machine noise hits both alike."""
    inputs_b = inputs if inputs_b is None else inputs_b
    dev = inputs["sequence"].device
    for _ in range(3):
        a(inputs)
        b(inputs_b)
    ta, tb = [], []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        a(inputs)
        _sync(dev)
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b(inputs_b)
        _sync(dev)
        tb.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def run(
    seq: int = 144,
    dim: int = 128,
    hidden: int = 64,
    classes: int = 6,
    batch: int = 32,
    train_steps: int = 150,
    informative: float = 0.15,
    sparsity: float = 3.0,
    repeats: int = 30,
    threads: int = 1,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Train both heads, time their inference side by side; returns the JSON-able result."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    x_train, y_train = (t.to(dev) for t in make_task(2048, seq, dim, classes, informative, seed))
    x_test, y_test = (t.to(dev) for t in make_task(batch, seq, dim, classes, informative, seed + 1))
    x_acc, y_acc = (t.to(dev) for t in make_task(512, seq, dim, classes, informative, seed + 2))

    base = BiLSTMHead(dim, classes, hidden=hidden).to(dev)
    sg = SparseGatedBiLSTM(dim, classes, hidden=hidden, sparsity=sparsity).to(dev)
    t_base = _train(base, x_train, y_train, train_steps, 32, 3e-3, seed)
    t_sg = _train(sg, x_train, y_train, train_steps, 32, 3e-3, seed)
    base.eval()
    sg.eval()
    acc_base, acc_sg = _accuracy(base, x_acc, y_acc), _accuracy(sg, x_acc, y_acc)

    inputs = {"sequence": x_test, "sequence_mask": torch.ones(x_test.shape[:2], dtype=torch.bool, device=dev)}
    t_b, t_s = _time_pair(base, sg, inputs, repeats)
    with torch.no_grad():
        sg(inputs)
    kept = dict(sg.last_stats)

    # cost scaling: the same SG head with its gates forced to keep a fixed fraction
    sweep = []
    trained_bias = sg.step_gate.bias.detach().clone()
    trained_w = sg.step_gate.weight.detach().clone()
    trained_units = sg.unit_logit.detach().clone()
    g = torch.Generator().manual_seed(seed)
    for frac in (1.0, 0.5, 0.25, 0.1):
        with torch.no_grad():
            sg.step_gate.weight.zero_()
            # keep each step with probability frac, decided by a fixed random bias per run
            keep_steps = (torch.rand(x_test.shape[1], generator=g) < frac).to(dev)
            sg.step_gate.bias.fill_(1.0)  # every step the mask lets through is kept
        sg.set_unit_gates(torch.rand(hidden, generator=g) < frac)
        # the gate's drop decisions, imposed through the mask (a dropped step = a masked step);
        # the baseline has no gates and always sees the full sequence
        forced = {"sequence": x_test, "sequence_mask": inputs["sequence_mask"] & keep_steps[None, :]}
        tb_, ts_ = _time_pair(base, sg, inputs, max(5, repeats // 3), inputs_b=forced)
        sweep.append(
            {
                "keep_fraction": frac,
                "kept_steps": round(sg.last_stats["kept_steps"] * float(keep_steps.float().mean()), 3),
                "kept_units": sg.last_stats["kept_units"],
                "bilstm_ms": round(tb_ * 1e3, 3),
                "sg_bilstm_ms": round(ts_ * 1e3, 3),
                "ratio": round(ts_ / tb_, 3),
            }
        )
    with torch.no_grad():
        sg.step_gate.weight.copy_(trained_w)
        sg.step_gate.bias.copy_(trained_bias)
        sg.unit_logit.copy_(trained_units)

    return {
        "benchmark": "sparse_gate",
        "data": "synthetic sequences (phantom task, not clinical data)",
        "input": {
            "batch": batch,
            "seq": seq,
            "dim": dim,
            "hidden": hidden,
            "classes": classes,
            "informative_fraction": informative,
        },
        "train": {
            "steps": train_steps,
            "sparsity_weight": sparsity,
            "bilstm_s": round(t_base, 2),
            "sg_bilstm_s": round(t_sg, 2),
        },
        "accuracy": {"bilstm": acc_base, "sg_bilstm": acc_sg},
        "sg_kept": {"steps": round(kept["kept_steps"], 3), "units": round(kept["kept_units"], 3)},
        "bilstm_ms": round(t_b * 1e3, 3),
        "sg_bilstm_ms": round(t_s * 1e3, 3),
        "ratio": round(t_s / t_b, 3),
        "change_percent": round((t_s / t_b - 1) * 100, 1),
        "forced_sweep": sweep,
        "threads": threads,
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "note": "ratio = SG-Bi-LSTM / Bi-LSTM median inference time on the same batch; < 1 is faster. Paper 1: -60%.",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seq", type=int, default=144, help="sequence length (cxr-report: 16 image + up to 128 report tokens)"
    )
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--sparsity", type=float, default=3.0, help="weight of the sparsity penalty")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    result = run(
        seq=a.seq,
        dim=a.dim,
        hidden=a.hidden,
        batch=a.batch,
        train_steps=a.train_steps,
        sparsity=a.sparsity,
        repeats=a.repeats,
        threads=a.threads,
        seed=a.seed,
        device=a.device,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
