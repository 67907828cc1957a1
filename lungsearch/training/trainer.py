"""Driver side of a training run: Ray Data datasets, the ``TorchTrainer``, and the trained model.

    >>> result = fit(cfg, splits["train"], splits["val"], run_name="cxr-cnn-demo")
    >>> result.model, result.history[-1]["val_accuracy"], result.checkpoint_path

A run is named (``run_name``) and stored under ``storage_path``/``run_name``; starting it again with
the same name resumes from its latest checkpoint (Ray Train restores the checkpoint and the loop
continues at the next epoch), so a killed job is simply re-submitted.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from lungsearch.config import ProfileConfig
from lungsearch.errors import LungsearchError
from lungsearch.training import progress
from lungsearch.training.recipes import Stage, stages_for

if TYPE_CHECKING:
    from lungsearch.models.base import LungModel
    from lungsearch.training.cases import CaseTable

__all__ = ["FitResult", "TrainingError", "fit", "default_run_name", "storage_uri"]

log = logging.getLogger(__name__)


class TrainingError(LungsearchError):
    """A training run failed (the message names the run, never a case)."""

    grpc_status = "INTERNAL"
    reason = "INTERNAL"
    retriable = True


@dataclass
class FitResult:
    """What a finished run produced.

    Attributes:
        model: the trained model (each stage ends on its best epoch), eval mode, on CPU.
        history: per-epoch metrics of every stage (``stage_name``, ``epoch``, ``train_loss``,
            ``val_loss``, ``val_*``, ``samples_per_s``, ``epoch_seconds``).
        best: best monitored value of the last stage.
        run_name: Ray Train run name; checkpoint_path: the final checkpoint (local path or URI).
        resumed: the run continued from an earlier checkpoint.
        seconds: wall time of ``fit``.
    """

    model: "LungModel"
    history: list[dict[str, Any]]
    best: float | None
    run_name: str
    checkpoint_path: str
    resumed: bool
    seconds: float
    stages: list[Stage] = field(default_factory=list)

    def final_val_metrics(self) -> dict[str, float]:
        """The last stage's metrics at its best epoch (what early stopping kept)."""
        if not self.history:
            return {}
        last_stage = self.history[-1]["stage_name"]
        rows = [h for h in self.history if h["stage_name"] == last_stage]
        stage = self.stages[-1] if self.stages else None
        if stage is not None:
            key = stage.monitor if stage.monitor in rows[0] else "val_loss"
            pick = (min if stage.mode == "min" else max)(rows, key=lambda h: h.get(key, float("nan")))
        else:
            pick = rows[-1]
        return {k: float(v) for k, v in pick.items() if k.startswith("val_") and isinstance(v, (int, float))}


def default_run_name(cfg: ProfileConfig, suffix: str = "") -> str:
    """``<profile>-<config fingerprint[:8]>[-suffix]``: the same config resumes the same run."""
    return f"{cfg.profile}-{cfg.fingerprint()[:8]}" + (f"-{suffix}" if suffix else "")


def storage_uri(cfg: ProfileConfig, storage_path: str | None = None) -> str:
    """Absolute local path (Ray Train needs one) or the object-store URI unchanged."""
    path = storage_path or cfg.train.storage_path
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def fit(
    cfg: ProfileConfig,
    train: "CaseTable",
    val: "CaseTable",
    *,
    run_name: str | None = None,
    storage_path: str | None = None,
    resume: bool = True,
    max_failures: int = 0,
    disable_attention: bool = False,
    fail_after_epoch: int | None = None,
) -> FitResult:
    """Train ``cfg`` on ``train`` (early stopping on ``val``) with Ray Train.

    Args:
        cfg: the profile (``train`` section: scaling, optimiser, epochs, stages, storage).
        train, val: prepared cases (``prepare_cases`` + a patient-disjoint split).
        run_name: Ray Train run name (default :func:`default_run_name`); same name = resume.
        storage_path: checkpoint root (default ``cfg.train.storage_path``); local or URI.
        resume: False deletes an existing local run folder of that name first.
        max_failures: worker failures Ray Train recovers from (restarting from the last checkpoint).
        disable_attention: cxr-hash "-A" ablation (see ``recipes.Variant``).
        fail_after_epoch: test hook: the worker raises after this many epochs of this attempt.

    Raises:
        TrainingError: the run failed (after ``max_failures`` retries), or ``code="run_in_progress"``:
            another process is training the same run (same name and storage path) right now.
    """
    from lungsearch import constants
    from lungsearch.runtime import init_ray

    t0 = time.perf_counter()
    run_name = run_name or default_run_name(cfg)
    storage = storage_uri(cfg, storage_path)
    run_dir = Path(storage) / run_name if "://" not in storage else None
    if constants.TRAIN_BACKEND == "local":
        if run_dir is None:
            raise TrainingError("the local training backend needs a local train.storage_path", code="local_storage")
        with _run_lock(run_dir, run_name):
            return _fit_local(
                cfg,
                train,
                val,
                run_name=run_name,
                run_dir=run_dir,
                resume=resume,
                disable_attention=disable_attention,
                t0=t0,
            )
    init_ray()
    with _run_lock(run_dir, run_name):
        return _fit_locked(
            cfg,
            train,
            val,
            run_name=run_name,
            storage=storage,
            run_dir=run_dir,
            resume=resume,
            max_failures=max_failures,
            disable_attention=disable_attention,
            fail_after_epoch=fail_after_epoch,
            t0=t0,
        )


@contextmanager
def _run_lock(run_dir: Path | None, run_name: str) -> Iterator[None]:
    """One process per run: the same config started twice at once (two users, a demo and a job)
    would write one run folder from two trainers. Local storage only (object stores have no flock)."""
    if run_dir is None:
        yield
        return
    import fcntl

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_name}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(
                f"training run {run_name} is in progress in another process; wait for it, or give "
                "this one another --run-name / train.storage_path",
                code="run_in_progress",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fit_local(
    cfg: ProfileConfig,
    train: "CaseTable",
    val: "CaseTable",
    *,
    run_name: str,
    run_dir: Path,
    resume: bool,
    disable_attention: bool,
    t0: float,
) -> FitResult:
    """The same worker loop in this process (``LUNGSEARCH_TRAIN_BACKEND=local``): one worker, on the
    GPU when the recipe asks for one. For a single-GPU machine without Ray; checkpoints go to
    ``<run>/local/attempt_*/``, where a later run with ``resume`` continues as Ray Train's would."""
    from lungsearch.training.loop import LocalContext, run_local

    if cfg.train.num_workers != 1:
        raise TrainingError("the local training backend runs one worker (train.num_workers=1)", code="local_workers")
    ckpt_root = run_dir / "local"
    if not resume and ckpt_root.exists():
        shutil.rmtree(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    # one folder per attempt (LocalContext numbers its checkpoints from 1 each time)
    previous = sorted(p for p in ckpt_root.glob("attempt_*/checkpoint_*") if p.is_dir())
    attempt = ckpt_root / f"attempt_{len(list(ckpt_root.glob('attempt_*'))):03d}"
    attempt.mkdir()
    stages = stages_for(cfg)
    device = "cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu"
    config = {
        "cfg": cfg.model_dump(mode="json"),
        "stages": [asdict(s) for s in stages],
        "radiomics_fit": train.radiomics if train.radiomics is not None else None,
        "disable_attention": disable_attention,
        "fail_after_epoch": None,
        "progress_file": str(run_dir / progress.PROGRESS_FILE),
    }
    ctx = LocalContext({"train": train.rows(), "val": val.rows()}, str(attempt), device)
    stop = threading.Event()
    reporter = progress.current_reporter()
    follower = progress.follow(config["progress_file"], reporter, stop) if reporter else None
    try:
        run_local(
            config,
            ctx.datasets,
            resume_from=str(previous[-1]) if previous and resume else None,
            context=ctx,
            device=device,
        )
    except LungsearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - same contract as the Ray path
        raise TrainingError(f"training run {run_name} failed ({type(exc).__name__})") from exc
    finally:
        stop.set()
        if follower is not None:
            follower.join(timeout=5)
    if ctx.last_checkpoint is None:
        raise TrainingError(f"training run {run_name} reported no checkpoint")
    saved = torch.load(Path(ctx.last_checkpoint) / "state.pt", map_location="cpu", weights_only=False)
    return _fit_result(
        cfg,
        saved,
        disable_attention,
        run_name=run_name,
        checkpoint_path=ctx.last_checkpoint,
        resumed=bool(previous and resume),
        t0=t0,
        stages=stages,
    )


def _fit_locked(
    cfg: ProfileConfig,
    train: "CaseTable",
    val: "CaseTable",
    *,
    run_name: str,
    storage: str,
    run_dir: Path | None,
    resume: bool,
    max_failures: int,
    disable_attention: bool,
    fail_after_epoch: int | None,
    t0: float,
) -> FitResult:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if not resume and run_dir is not None and run_dir.exists():
        shutil.rmtree(run_dir)
    resumed = run_dir is not None and any(p.is_dir() for p in run_dir.glob("checkpoint_*"))
    stages = stages_for(cfg)

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True  # deterministic batch order (seeded local shuffle)
    datasets = {"train": ray.data.from_items(train.rows()), "val": ray.data.from_items(val.rows())}
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker or 1.0
    loop_config = {
        "cfg": cfg.model_dump(mode="json"),
        "stages": [asdict(s) for s in stages],
        "radiomics_fit": train.radiomics if train.radiomics is not None else None,
        "disable_attention": disable_attention,
        "fail_after_epoch": fail_after_epoch,
        # epoch lines for the person waiting (local storage only: the file must be readable here)
        "progress_file": str(run_dir / progress.PROGRESS_FILE) if run_dir is not None else None,
    }
    from lungsearch.training.loop import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker=resources,
            placement_strategy=t.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
        datasets=datasets,
        # Every worker sees the whole validation set, so early-stopping decisions agree across ranks.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    stop = threading.Event()
    reporter = progress.current_reporter()
    follower = (
        progress.follow(loop_config["progress_file"], reporter, stop) if reporter and run_dir is not None else None
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors in several types
        raise TrainingError(f"training run {run_name} failed ({type(exc).__name__}); see the Ray logs") from exc
    finally:
        stop.set()
        if follower is not None:
            follower.join(timeout=5)
    if result.error is not None:
        raise TrainingError(f"training run {run_name} failed ({type(result.error).__name__})")
    if result.checkpoint is None:
        raise TrainingError(f"training run {run_name} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
    return _fit_result(
        cfg,
        saved,
        disable_attention,
        run_name=run_name,
        checkpoint_path=result.checkpoint.path,
        resumed=resumed,
        t0=t0,
        stages=stages,
    )


def _fit_result(
    cfg: ProfileConfig,
    saved: dict,
    disable_attention: bool,
    *,
    run_name: str,
    checkpoint_path: str,
    resumed: bool,
    t0: float,
    stages,
) -> FitResult:
    """The trained model of a final checkpoint's ``state.pt`` (either backend), eval mode, on CPU."""
    from lungsearch.models import create_model

    model = create_model(cfg)
    model.load_state_dict(saved["model"])
    if disable_attention:
        from lungsearch.training.loop import disable_attention as _disable

        _disable(model)
    model.eval()
    return FitResult(
        model=model,
        history=list(saved["history"]),
        best=saved.get("best_value"),
        run_name=run_name,
        checkpoint_path=checkpoint_path,
        resumed=resumed,
        seconds=time.perf_counter() - t0,
        stages=stages,
    )
