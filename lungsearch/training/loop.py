"""The Ray Train worker loop: stages, epochs, validation, early stopping, checkpoints, resume.

Runs inside each ``TorchTrainer`` worker (:func:`train_loop_per_worker`); importable and testable
without a cluster through :func:`run_local` (the same code with a one-process stand-in for the
Ray Train context, used by the overhead benchmark and unit tests).

Checkpoint (one per epoch, written by rank 0)::

    state.pt   {"model", "optimizer", "scheduler", "scaler", "stage", "epoch", "best_value",
                "best_epoch", "bad_epochs", "history", "done"}
    best.pt    the best weights of the current stage so far (restored at the stage's end)

Resuming (``ray.train.get_checkpoint()`` returns the latest checkpoint when a run with the same
``RunConfig(name, storage_path)`` is started again) continues at the next epoch of the same stage
with the optimizer and scheduler state, the best-so-far weights and the patience counter.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from lungsearch.config import ProfileConfig
from lungsearch.training.inference import CaseForward, batch_to_torch, forward_cases, probabilities
from lungsearch.training.recipes import Stage

__all__ = [
    "train_loop_per_worker",
    "run_local",
    "seed_everything",
    "build_optimizer",
    "validation_metrics",
    "LocalContext",
]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_optimizer(
    model: nn.Module, stage: Stage, cfg: ProfileConfig, params: Iterable[tuple[str, nn.Parameter]] | None = None
):
    """The stage's optimizer over the trainable parameters, grouped by ``stage.lr_mult`` prefixes."""
    named = [(n, p) for n, p in (params if params is not None else model.named_parameters()) if p.requires_grad]
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in named:
        mult = next((m for prefix, m in stage.lr_mult.items() if name.startswith(prefix)), 1.0)
        groups.setdefault(mult, []).append(p)
    param_groups = [{"params": ps, "lr": stage.lr * m} for m, ps in sorted(groups.items())]
    if not param_groups:
        return None
    t = cfg.train
    if stage.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=stage.lr, momentum=0.9, weight_decay=t.weight_decay)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=stage.lr, weight_decay=t.weight_decay)
    return torch.optim.Adam(param_groups, lr=stage.lr, weight_decay=t.weight_decay)


def _scheduler(opt, cfg: ProfileConfig, epochs: int):
    if opt is None or cfg.train.scheduler == "none":
        return None
    if cfg.train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)


def validation_metrics(
    outputs: dict[str, np.ndarray], labels: np.ndarray, cfg: ProfileConfig, stage: Stage
) -> dict[str, float]:
    """Per-epoch validation numbers (beyond ``val_loss``) from outputs over the whole val set.

    Classification (``logits``): ``val_accuracy``, ``val_auc``, ``val_f1``. Retrieval (leave-one-out
    within val, relevance = shared label): ``val_map10`` (Hamming ranking on codes in the hash
    stage, cosine otherwise) and ``val_top1_f1`` (paper 3's top-1 label diagnosis).
    """
    from lungsearch import metrics as M

    out: dict[str, float] = {}
    targets = list(cfg.data.targets)
    n = labels.shape[0]
    if "probs" in outputs and stage.name not in ("pretrain", "hash") and n > 1:
        cm = M.classification_metrics(labels, outputs["probs"], targets)
        out.update(val_accuracy=cm["accuracy"], val_auc=cm["auc_macro"], val_f1=cm["f1_macro"])
    if "embedding" in outputs and n > 2:
        if stage.name == "hash" and "codes" in outputs:
            from lungsearch.models.hashing import pack_codes

            packed = pack_codes(outputs["codes"])
            from lungsearch.evaluation.ties import rank_by_hamming  # ties in a seeded random order, not gallery order

            order = rank_by_hamming(packed, packed)
        else:
            order = M.rank_by_cosine(outputs["embedding"], outputs["embedding"])
        order = np.stack([row[row != q][: n - 1] for q, row in enumerate(order)])  # leave the query out
        rel = M.label_relevance(labels, labels)
        ranked_rel = np.take_along_axis(rel, order, axis=1)
        out["val_map10"] = M.map_at_k(ranked_rel, min(10, n - 1))
        if labels.ndim == 1:
            out["val_top1_f1"] = M.retrieval_prf(labels, labels[order[:, 0]], targets)["f1_macro"]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


class LocalContext:
    """A one-process stand-in for the Ray Train context (``run_local``): same loop, no cluster."""

    def __init__(self, datasets: dict[str, Any], checkpoint_dir: str | None = None, device: str = "cpu") -> None:
        self.datasets = datasets
        self.checkpoint_dir = checkpoint_dir
        self.reports: list[dict[str, float]] = []
        self.last_checkpoint: str | None = None
        self._device = torch.device(device)

    def rank(self) -> int:
        return 0

    def world(self) -> int:
        return 1

    def device(self) -> torch.device:
        return self._device

    def shard(self, name: str):
        return self.datasets[name]

    def get_checkpoint(self) -> str | None:
        return self.last_checkpoint

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir is not None and self.checkpoint_dir is not None:
            import shutil

            dest = Path(self.checkpoint_dir) / f"checkpoint_{len(self.reports):04d}"
            shutil.copytree(checkpoint_dir, dest)
            self.last_checkpoint = str(dest)

    def prepare(self, module: nn.Module) -> nn.Module:
        return module


class _RayContext:
    def __init__(self) -> None:
        import ray.train

        self._ctx = ray.train.get_context()
        if not logging.getLogger().handlers:  # a fresh worker process: epoch lines go to the job log
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def rank(self) -> int:
        return self._ctx.get_world_rank()

    def world(self) -> int:
        return self._ctx.get_world_size()

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def get_checkpoint(self) -> str | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        return ckpt.to_directory()

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def prepare(self, module: nn.Module) -> nn.Module:
        import ray.train.torch

        if self.world() > 1:
            # Two-stage recipes freeze parts per stage: unused parameters are expected.
            return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})
        return ray.train.torch.prepare_model(module)


def _iter_numpy(ds, *, batch_size: int, shuffle_seed: int | None) -> Iterable[dict[str, np.ndarray]]:
    """Batches from a Ray Data shard (or a list of row dicts in local mode)."""
    if isinstance(ds, list):
        order = np.arange(len(ds))
        if shuffle_seed is not None:
            np.random.default_rng(shuffle_seed).shuffle(order)
        for k in range(0, len(order), batch_size):
            rows = [ds[i] for i in order[k : k + batch_size]]
            yield {
                key: np.asarray([r[key] for r in rows])
                if key != "report"
                else np.asarray([r[key] for r in rows], dtype=object)
                for key in rows[0]
            }
        return
    kwargs: dict[str, Any] = {"batch_size": batch_size, "batch_format": "numpy", "prefetch_batches": 1}
    if shuffle_seed is not None:
        kwargs.update(local_shuffle_buffer_size=max(4 * batch_size, 256), local_shuffle_seed=shuffle_seed)
    yield from ds.iter_batches(**kwargs)


def _autocast(device: torch.device, enabled: bool):
    if not enabled or device.type != "cuda":
        return nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None  # no loss scaling needed
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def _state_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value < best - 1e-9 if mode == "min" else value > best + 1e-9


def _append_progress(path: str, cfg: ProfileConfig, stages: list, si: int, epoch: int, stage, metrics: dict) -> None:
    """One line for the person waiting (``lungsearch.training.progress``); never fails the run."""
    from lungsearch.training import progress

    left_epochs = (stage.epochs - epoch - 1) + sum(s.epochs for s in stages[si + 1 :])
    try:
        progress.append(
            path,
            {
                "profile": cfg.profile,
                "stage": stage.name,
                "epoch": epoch + 1,
                "epochs": stage.epochs,
                "train_loss": metrics.get("train_loss"),
                "monitor": stage.monitor,
                "monitor_value": metrics.get(stage.monitor),
                "samples_per_s": metrics.get("samples_per_s"),
                "seconds_left": metrics["epoch_seconds"] * left_epochs,
            },
        )
    except OSError:
        log.debug("could not write training progress", exc_info=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker (``TorchTrainer(train_loop_per_worker=...)``).

    ``config`` keys: ``cfg`` (ProfileConfig as JSON dict), ``stages`` (list of Stage dicts),
    ``radiomics_fit`` (raw train radiomics or None), ``disable_attention`` (bool),
    ``fail_after_epoch`` (int or None: raise after that many epochs were checkpointed; tests).
    """
    _run(config, _RayContext())


def run_local(
    config: dict[str, Any],
    datasets: dict[str, list[dict]],
    checkpoint_dir: str | None = None,
    resume_from: str | None = None,
    context: LocalContext | None = None,
    device: str = "cpu",
) -> LocalContext:
    """Run the same loop in-process over row lists (no Ray); returns the context with the reports.

    ``resume_from`` is a checkpoint folder written by an earlier local run (as Ray Train's
    ``get_checkpoint`` would return); pass ``context`` to inspect reports after a failure."""
    ctx = context or LocalContext(datasets, checkpoint_dir, device)
    if resume_from is not None:
        ctx.last_checkpoint = resume_from
    _run(config, ctx)
    return ctx


def _run(config: dict[str, Any], ctx) -> None:
    from lungsearch.losses import loss_for_stage
    from lungsearch.models import create_model

    cfg = ProfileConfig.model_validate(config["cfg"])
    stages = [Stage(**s) for s in config["stages"]]
    rank = ctx.rank()
    device = ctx.device()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    # Same init on every rank (DDP broadcasts rank 0's weights anyway); data order differs by rank.
    seed_everything(cfg.train.seed)
    model = create_model(cfg)
    if getattr(model, "radiomics", None) is not None and config.get("radiomics_fit") is not None:
        model.fit_radiomics(np.asarray(config["radiomics_fit"], dtype=np.float64))
    if config.get("disable_attention"):
        disable_attention(model)
    model.to(device)
    multilabel = cfg.data.multilabel

    state: dict[str, Any] = {
        "stage": 0,
        "epoch": -1,
        "best_value": None,
        "best_epoch": -1,
        "bad_epochs": 0,
        "history": [],
        "done": False,
    }
    best_weights: dict[str, torch.Tensor] | None = None
    resumed_opt = None
    ckpt_dir = ctx.get_checkpoint()
    if ckpt_dir is not None:
        saved = torch.load(Path(ckpt_dir) / "state.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        state.update({k: saved[k] for k in state})
        resumed_opt = saved
        if (Path(ckpt_dir) / "best.pt").exists():
            best_weights = torch.load(Path(ckpt_dir) / "best.pt", map_location="cpu", weights_only=True)
        if rank == 0:
            log.info("resuming at stage %d epoch %d", state["stage"], state["epoch"] + 1)
        state["resumed_from"] = [state["stage"], state["epoch"]]
    fail_after = config.get("fail_after_epoch")
    epochs_this_run = 0

    if state["done"]:
        # A finished run started again: report its final state once more so the result carries it.
        _report(ctx, rank, model, None, None, None, state, best_weights, {"done": 1.0, **_last_metrics(state)})
        return

    train_shard, val_shard = ctx.shard("train"), ctx.shard("val")
    for si in range(state["stage"], len(stages)):
        stage = stages[si]
        if hasattr(model, "set_stage") and stage.name != "train":
            model.set_stage(stage.name)
        loss_fn = loss_for_stage(cfg, stage.name if stage.name != "train" else None)
        start_epoch = state["epoch"] + 1 if si == state["stage"] else 0
        if si != state["stage"]:
            state.update(stage=si, epoch=-1, best_value=None, best_epoch=-1, bad_epochs=0)
            best_weights = None
        runner = ctx.prepare(CaseForward(model))
        probe_params = list(model.probe.named_parameters(prefix="probe")) if stage.frozen_features else None
        opt = build_optimizer(model, stage, cfg, probe_params)
        sched = _scheduler(opt, cfg, stage.epochs)
        amp_ctx, scaler = _autocast(device, cfg.train.amp)
        if resumed_opt is not None and resumed_opt["stage"] == si and opt is not None:
            if resumed_opt.get("optimizer"):
                opt.load_state_dict(resumed_opt["optimizer"])
            if sched is not None and resumed_opt.get("scheduler"):
                sched.load_state_dict(resumed_opt["scheduler"])
            if scaler is not None and resumed_opt.get("scaler"):
                scaler.load_state_dict(resumed_opt["scaler"])
        resumed_opt = None
        cached = _frozen_features(model, train_shard, val_shard, cfg, device) if stage.frozen_features else None
        probe_runner = ctx.prepare(model.probe) if stage.frozen_features else None

        for epoch in range(start_epoch, stage.epochs):
            t0, cpu0 = time.perf_counter(), time.process_time()
            if hasattr(model, "on_epoch_start"):
                model.on_epoch_start(epoch)
            seed = cfg.train.seed * 100_003 + si * 1009 + epoch * 31 + rank
            # Dropout and every other torch draw restart from a per-epoch seed, so a resumed run
            # continues exactly as the uninterrupted one would have.
            torch.manual_seed(seed)
            if cached is not None:
                train_stats = _train_probe_epoch(
                    probe_runner, cached["train"], loss_fn, opt, seed, cfg.train.batch_size, multilabel, device
                )
                val_out, val_labels, val_loss = _eval_probe(model, cached["val"], loss_fn, multilabel, device)
            else:
                train_stats = _train_epoch(
                    runner, model, train_shard, loss_fn, opt, scaler, amp_ctx, stage, cfg, seed, device
                )
                val_out, val_labels, val_loss = _evaluate(model, val_shard, loss_fn, stage, cfg, device, runner)
            if sched is not None:
                sched.step()
            metrics = {
                "stage": float(si),
                "epoch": float(epoch),
                "train_loss": train_stats["loss"],
                "val_loss": val_loss,
                "samples": float(train_stats["samples"]),
                "epoch_seconds": time.perf_counter() - t0,
                # CPU seconds of this worker (all its threads): what the epoch costs on an idle machine
                "epoch_cpu_seconds": time.process_time() - cpu0,
                "samples_per_s": train_stats["samples"] / max(train_stats["seconds"], 1e-9),
            }
            metrics.update(validation_metrics(val_out, val_labels, cfg, stage))
            if rank == 0:
                shown = " ".join(
                    f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("val_") or k == "train_loss"
                )
                log.info(
                    "stage %s epoch %d/%d: %s (%.1f s, %.1f samples/s)",
                    stage.name,
                    epoch + 1,
                    stage.epochs,
                    shown,
                    metrics["epoch_seconds"],
                    metrics["samples_per_s"],
                )
                if config.get("progress_file"):
                    _append_progress(config["progress_file"], cfg, stages, si, epoch, stage, metrics)
            value = metrics.get(stage.monitor, metrics["val_loss"])
            if _better(value, state["best_value"], stage.mode):
                state.update(best_value=value, best_epoch=epoch, bad_epochs=0)
                best_weights = _state_cpu(model)
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            state["history"].append({"stage_name": stage.name, **metrics})
            patience = cfg.train.early_stopping_patience
            stop = bool(patience and state["bad_epochs"] >= patience)
            last_epoch_of_stage = stop or epoch == stage.epochs - 1
            metrics["best_value"] = float(state["best_value"]) if state["best_value"] is not None else float("nan")
            if last_epoch_of_stage:
                # Close the stage on its best epoch; the checkpoint then already holds it, so a
                # resume after this point starts the next stage from the right weights.
                if best_weights is not None:
                    model.load_state_dict(best_weights)
                if si + 1 < len(stages):
                    state.update(stage=si + 1, epoch=-1, best_value=None, best_epoch=-1, bad_epochs=0)
                    best_weights = None
                else:
                    state["done"] = True
                metrics["done"] = float(state["done"])
            _report(
                ctx, rank, model, opt if not last_epoch_of_stage else None, sched, scaler, state, best_weights, metrics
            )
            epochs_this_run += 1
            if fail_after is not None and epochs_this_run >= fail_after and not state["done"]:
                raise RuntimeError(f"injected failure after {epochs_this_run} epochs (test hook)")
            if last_epoch_of_stage:
                break
        if state["done"]:
            break


def _last_metrics(state: dict[str, Any]) -> dict[str, float]:
    hist = state.get("history") or []
    return {k: float(v) for k, v in (hist[-1] if hist else {}).items() if isinstance(v, (int, float))}


def _report(
    ctx,
    rank: int,
    model: nn.Module,
    opt,
    sched,
    scaler,
    state: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None,
    metrics: dict[str, float],
) -> None:
    if rank != 0:
        ctx.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="lungsearch-ckpt-") as tmp:
        payload = {
            **{k: v for k, v in state.items() if k != "resumed_from"},
            "model": _state_cpu(model),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
        }
        torch.save(payload, Path(tmp) / "state.pt")
        if best_weights is not None:
            torch.save(best_weights, Path(tmp) / "best.pt")
        ctx.report(metrics, tmp)


def _train_epoch(
    runner, model, shard, loss_fn, opt, scaler, amp_ctx, stage: Stage, cfg: ProfileConfig, seed: int, device
) -> dict[str, float]:
    from lungsearch.training.cases import augment_images

    model.train()
    rng = np.random.default_rng(seed)
    total, count = 0.0, 0
    # Wall time of the whole pass, data fetching included: what samples/s should mean.
    t_start = time.perf_counter()
    has_text = getattr(model, "text_encoder", None) is not None
    reg = getattr(model, "regularization", None)
    for batch in _iter_numpy(shard, batch_size=cfg.train.batch_size, shuffle_seed=seed):
        n = len(batch["index"])
        if n < 2:
            continue  # BatchNorm and pairwise losses need two samples
        if cfg.data.augment:
            batch = dict(
                batch,
                image=augment_images(
                    np.asarray(batch["image"], dtype=np.float32), batch["n_slices"], cfg.modality, rng
                ),
            )
        tb = batch_to_torch(batch, device, cfg.data.multilabel)
        with amp_ctx:
            out = runner(
                tb["images"], tb["n_slices"], texts=tb["texts"] if has_text else None, radiomics=tb.get("radiomics")
            )
            loss = loss_fn(out, tb["labels"] if stage.uses_labels else None)
            if reg is not None and stage.name in ("train",):
                loss = loss + reg()
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        total += float(loss.detach()) * n
        count += n
    return {"loss": total / max(count, 1), "samples": count, "seconds": time.perf_counter() - t_start}


@torch.no_grad()
def _evaluate(model, shard, loss_fn, stage: Stage, cfg: ProfileConfig, device, runner=None):
    """Outputs, labels and loss over the whole (unsplit) validation set."""
    model.eval()
    outs: dict[str, list[np.ndarray]] = {"embedding": [], "probs": [], "codes": []}
    labels, total, count = [], 0.0, 0
    has_text = getattr(model, "text_encoder", None) is not None
    cache = getattr(runner, "text_cache", None) or getattr(getattr(runner, "module", None), "text_cache", None)
    for batch in _iter_numpy(shard, batch_size=max(cfg.train.batch_size, 32), shuffle_seed=None):
        tb = batch_to_torch(batch, device, cfg.data.multilabel)
        out = forward_cases(
            model,
            tb["images"],
            tb["n_slices"],
            texts=tb["texts"] if has_text else None,
            radiomics=tb.get("radiomics"),
            text_cache=cache,
        )
        n = len(tb["index"])
        if n >= 2:
            total += float(loss_fn(out, tb["labels"] if stage.uses_labels else None)) * n
            count += n
        outs["embedding"].append(out["embedding"].float().cpu().numpy())
        if "logits" in out:
            outs["probs"].append(probabilities(out["logits"].float(), cfg.data.multilabel).cpu().numpy())
        if "hash_logits" in out:
            outs["codes"].append(torch.where(out["hash_logits"] >= 0, 1.0, -1.0).float().cpu().numpy())
        labels.append(tb["labels"].cpu().numpy())
    model.train()
    arrays = {k: np.concatenate(v) for k, v in outs.items() if v}
    return arrays, np.concatenate(labels) if labels else np.zeros(0), (total / count if count else float("nan"))


@torch.no_grad()
def _frozen_features(
    model, train_shard, val_shard, cfg: ProfileConfig, device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Embeddings of the frozen model (eval mode) for the linear-probe stage, computed once."""
    out = {}
    model.eval()
    has_text = getattr(model, "text_encoder", None) is not None
    for name, shard in (("train", train_shard), ("val", val_shard)):
        embs, labs = [], []
        for batch in _iter_numpy(shard, batch_size=64, shuffle_seed=None):
            tb = batch_to_torch(batch, device, cfg.data.multilabel)
            o = forward_cases(
                model,
                tb["images"],
                tb["n_slices"],
                texts=tb["texts"] if has_text else None,
                radiomics=tb.get("radiomics"),
            )
            embs.append(o["embedding"].float())
            labs.append(tb["labels"])
        out[name] = (torch.cat(embs), torch.cat(labs))
    model.train()
    return out


def _train_probe_epoch(
    probe, data, loss_fn, opt, seed: int, batch_size: int, multilabel: bool, device
) -> dict[str, float]:
    emb, lab = data
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(emb.shape[0], generator=g)
    total, count, t0 = 0.0, 0, time.perf_counter()
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        if len(idx) < 2:
            continue
        loss = loss_fn({"logits": probe(emb[idx].to(device))}, lab[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return {"loss": total / max(count, 1), "samples": count, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def _eval_probe(model, data, loss_fn, multilabel: bool, device):
    emb, lab = data
    logits = model.probe(emb.to(device))
    loss = float(loss_fn({"logits": logits}, lab.to(device)))
    return (
        {"embedding": emb.cpu().numpy(), "probs": probabilities(logits.float(), multilabel).cpu().numpy()},
        lab.cpu().numpy(),
        loss,
    )


def disable_attention(model: nn.Module) -> None:
    """Paper 5's "-A" ablation on a built cxr-hash model: the local branch sees the whole image
    (no Grad-CAM/Otsu mask). Not expressible in config; applied at build time by the recipe."""
    hasher = getattr(model, "hasher", None)
    if hasher is None:
        return
    hasher.local_images = lambda images, heat: images  # instance attribute shadows the method
