"""A profile's whole job: records -> patient-disjoint splits -> train (Ray Train) -> evaluate on the
test split -> report -> registry. ``ray_jobs/train.py``, ``ray_jobs/evaluate.py``,
``ray_jobs/reproduce.py`` and ``lungsearch train|evaluate`` are thin wrappers over these functions.

    >>> out = train_and_evaluate(load_profile("cxr-cnn"))
    >>> out.card.ref, out.metrics["test_accuracy"], out.report_dir
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lungsearch import constants
from lungsearch.config import ProfileConfig
from lungsearch.errors import ConfigError
from lungsearch.training.cases import CaseTable, data_fingerprint, prepare_cases
from lungsearch.training.recipes import Variant, variants
from lungsearch.training.trainer import FitResult, default_run_name, fit

if TYPE_CHECKING:
    from lungsearch.data.types import CaseRecord
    from lungsearch.evaluation.core import EvalResult
    from lungsearch.registry import ModelCard

__all__ = [
    "Dataset",
    "Splits",
    "TrainOutput",
    "KFoldOutput",
    "load_dataset",
    "make_splits",
    "make_folds",
    "train_and_evaluate",
    "run_kfold",
    "evaluate_registered",
    "reproduce_profile",
    "provenance",
]

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """A profile's records and their prepared arrays."""

    records: list["CaseRecord"]
    table: CaseTable
    fingerprint: str


@dataclass
class Splits:
    """Patient-disjoint train / val / test tables; ``gallery`` = train + val (what gets indexed)."""

    train: CaseTable
    val: CaseTable
    test: CaseTable

    @property
    def gallery(self) -> CaseTable:
        return CaseTable.concat([self.train, self.val])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_dataset(cfg: ProfileConfig, *, use_ray: bool | None = None) -> Dataset:
    """Load the profile's records (phantoms are generated on first use) and prepare their arrays
    (with Ray Data unless ``LUNGSEARCH_TRAIN_BACKEND=local``: then in this process)."""
    from lungsearch import constants
    from lungsearch.data import load_records

    if use_ray is None:
        use_ray = constants.TRAIN_BACKEND != "local"
    records = list(load_records(cfg.data))
    if not records:
        raise ConfigError(f"{cfg.profile}: the dataset has no records")
    table = prepare_cases(cfg, records, use_ray=use_ray)
    kept = set(table.case_ids)
    records = [r for r in records if r.case_id in kept]
    return Dataset(records=records, table=table, fingerprint=data_fingerprint(records))


def make_splits(cfg: ProfileConfig, ds: Dataset) -> Splits:
    """``cfg.data.split`` fractions, patient-disjoint and stratified (``lungsearch.data.split_records``)."""
    from lungsearch.data import split_records

    parts = split_records(ds.records, tuple(cfg.data.split), seed=cfg.data.seed)
    return Splits(*(ds.table.select([r.case_id for r in parts[k]]) for k in ("train", "val", "test")))


def make_folds(cfg: ProfileConfig, ds: Dataset, k: int) -> list[Splits]:
    """K patient-disjoint folds: each held-out fold is the test split; the rest is split 80/20 into
    train and validation (validation drives early stopping, never the reported numbers)."""
    from lungsearch.data import kfold_records, split_records

    out = []
    for train_part, held_out in kfold_records(ds.records, k, seed=cfg.data.seed):
        inner = split_records(train_part, (0.8, 0.2, 0.0), seed=cfg.data.seed)
        out.append(
            Splits(
                ds.table.select([r.case_id for r in inner["train"]]),
                ds.table.select([r.case_id for r in inner["val"]]),
                ds.table.select([r.case_id for r in held_out]),
            )
        )
    return out


def provenance(
    cfg: ProfileConfig, splits: Splits, *, run_name: str, model_version: str | None, n_cases: int | None = None
) -> dict[str, Any]:
    """What every report and card says about where its numbers come from."""
    from lungsearch.evaluation.core import dataset_label
    from lungsearch.registry import code_version

    return {
        "profile": cfg.profile,
        "paper": cfg.paper,
        "model_version": model_version or "(not registered)",
        "config_fingerprint": cfg.fingerprint(),
        "code_version": code_version(),
        "seed": {"data": cfg.data.seed, "train": cfg.train.seed},
        "dataset": dataset_label(cfg, n_cases),
        "synthetic_data": bool(splits.train.synthetic),
        "split_sizes": splits.sizes(),
        "run_name": run_name,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class TrainOutput:
    """One trained + evaluated (+ registered) model."""

    cfg: ProfileConfig
    fit: FitResult
    evaluation: "EvalResult"
    metrics: dict[str, float]
    card: "ModelCard | None"
    report_dir: Path | None
    splits: Splits
    seconds: float = 0.0


def _card_metrics(fitres: FitResult, ev: "EvalResult") -> dict[str, float]:
    out = {f"test_{k}": v for k, v in ev.metrics.items()}
    out.update(fitres.final_val_metrics())
    return out


def train_and_evaluate(
    cfg: ProfileConfig,
    *,
    dataset: Dataset | None = None,
    splits: Splits | None = None,
    run_name: str | None = None,
    storage_path: str | None = None,
    resume: bool = True,
    register: bool = True,
    registry_root: str | Path | None = None,
    report_dir: str | Path | None = None,
    write: bool = True,
    max_failures: int = 0,
    fail_after_epoch: int | None = None,
    variant: Variant | None = None,
    extra_rows: dict[str, dict[str, float]] | None = None,
) -> TrainOutput:
    """Train ``cfg`` on its train split, evaluate on its test split, write the report, register.

    Args:
        cfg: the profile config (overrides already applied).
        dataset, splits: reuse prepared data (K-fold, variants); loaded/split from ``cfg`` otherwise.
        run_name, storage_path, resume, max_failures, fail_after_epoch: see ``trainer.fit``.
        register: save the model and its card in the registry (``registry_root``).
        report_dir: report folder (default ``<ARTIFACTS_DIR>/reports/<profile>/<version or run>``).
        write: write the report at all.
        variant: an ablation variant (its ``disable_attention`` is applied).
    """
    from lungsearch import registry
    from lungsearch.evaluation import ReportInput, evaluate_model, write_report

    t0 = time.perf_counter()
    dataset = dataset or load_dataset(cfg)
    splits = splits or make_splits(cfg, dataset)
    run_name = run_name or default_run_name(cfg)
    fitres = fit(
        cfg,
        splits.train,
        splits.val,
        run_name=run_name,
        storage_path=storage_path,
        resume=resume,
        max_failures=max_failures,
        disable_attention=bool(variant and variant.disable_attention),
        fail_after_epoch=fail_after_epoch,
    )
    ev = evaluate_model(fitres.model, cfg, splits.test, splits.gallery)
    metrics = _card_metrics(fitres, ev)
    version = registry.new_version(cfg, registry_root) if register else None
    prov = provenance(cfg, splits, run_name=run_name, model_version=version, n_cases=len(dataset.table))
    out_dir = None
    if write:
        root = Path(constants.ARTIFACTS_DIR) / "reports" / cfg.profile
        out_dir = Path(report_dir) if report_dir else root / (version or run_name)
        name = variant.name if variant else "ours"
        rows = {name: ev.metrics, **(extra_rows or {})}
        tables = {name: variant.table if variant else _main_table(cfg)}
        write_report(
            out_dir,
            ReportInput(
                cfg=cfg,
                main=ev,
                rows=rows,
                row_tables=tables,
                provenance=prov,
                test_labels=splits.test.labels,
                main_row=name,
            ),
        )
    card = None
    if register:
        card = registry.save_model(
            fitres.model,
            cfg,
            metrics=metrics,
            data_fingerprint=dataset.fingerprint,
            synthetic_data=dataset.table.synthetic,
            root=registry_root,
            version=version,
            extra={
                "run_name": run_name,
                "checkpoint": fitres.checkpoint_path,
                "report_dir": str(out_dir) if out_dir else "",
                "split_sizes": splits.sizes(),
                "seed": {"data": cfg.data.seed, "train": cfg.train.seed},
                "epochs_trained": len(fitres.history),
                "resumed": fitres.resumed,
            },
        )
    return TrainOutput(
        cfg=cfg,
        fit=fitres,
        evaluation=ev,
        metrics=metrics,
        card=card,
        report_dir=out_dir,
        splits=splits,
        seconds=time.perf_counter() - t0,
    )


def _main_table(cfg: ProfileConfig) -> str:
    main = [v for v in variants(cfg) if v.main]
    return main[0].table if main else "main"


@dataclass
class KFoldOutput:
    """Per-fold test metrics and the summary (mean, std)."""

    folds: list[dict[str, float]]
    summary: dict[str, tuple[float, float]]
    report_dir: Path | None
    outputs: list[TrainOutput] = field(default_factory=list)


def run_kfold(
    cfg: ProfileConfig,
    k: int,
    *,
    storage_path: str | None = None,
    resume: bool = True,
    report_dir: str | Path | None = None,
    max_failures: int = 0,
) -> KFoldOutput:
    """K-fold cross-validation (patient-disjoint): one run per fold, test metrics per fold and the
    mean ± std table (paper 2 uses K = 4, paper 3 K = 5). Fold models are not registered."""
    from lungsearch.evaluation import ReportInput, kfold_summary, write_report

    if k < 2:
        raise ConfigError("--folds needs K >= 2")
    ds = load_dataset(cfg)
    folds = make_folds(cfg, ds, k)
    outs, per_fold = [], []
    for i, sp in enumerate(folds):
        o = train_and_evaluate(
            cfg,
            dataset=ds,
            splits=sp,
            run_name=default_run_name(cfg, f"fold{i + 1}of{k}"),
            storage_path=storage_path,
            resume=resume,
            register=False,
            write=False,
            max_failures=max_failures,
        )
        outs.append(o)
        per_fold.append(o.evaluation.metrics)
        log.info(
            "fold %d/%d: %s",
            i + 1,
            k,
            {m: round(v, 4) for m, v in o.evaluation.metrics.items() if m in ("accuracy", "f1", "map10")},
        )
    summary = kfold_summary(per_fold)
    out_dir = (
        Path(report_dir)
        if report_dir
        else Path(constants.ARTIFACTS_DIR) / "reports" / cfg.profile / f"{default_run_name(cfg)}-kfold{k}"
    )
    prov = provenance(
        cfg, folds[0], run_name=default_run_name(cfg, f"kfold{k}"), model_version=None, n_cases=len(ds.table)
    )
    prov["folds"] = k
    write_report(out_dir, ReportInput(cfg=cfg, main=None, rows={}, kfold=per_fold, provenance=prov))
    return KFoldOutput(folds=per_fold, summary=summary, report_dir=out_dir, outputs=outs)


def evaluate_registered(
    ref: str,
    *,
    registry_root: str | Path | None = None,
    report_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple["EvalResult", Path]:
    """Re-evaluate a registered model on its profile's test split (same config + seed = same split)."""
    from lungsearch import registry
    from lungsearch.evaluation import ReportInput, evaluate_model, write_report

    model, card = registry.load_model(ref, root=registry_root)
    cfg = card.config.with_overrides(list(overrides)) if overrides else card.config
    ds = load_dataset(cfg)
    splits = make_splits(cfg, ds)
    ev = evaluate_model(model, cfg, splits.test, splits.gallery)
    out_dir = (
        Path(report_dir) if report_dir else card.path.parent.parent / "reports" / cfg.profile / f"{card.version}-eval"
    )
    prov = provenance(
        cfg, splits, run_name=str(card.extra.get("run_name", "")), model_version=card.version, n_cases=len(ds.table)
    )
    write_report(
        out_dir,
        ReportInput(
            cfg=cfg,
            main=ev,
            rows={"ours": ev.metrics},
            row_tables={"ours": _main_table(cfg)},
            provenance=prov,
            test_labels=splits.test.labels,
            main_row="ours",
        ),
    )
    return ev, out_dir


def reproduce_profile(
    cfg: ProfileConfig,
    *,
    storage_path: str | None = None,
    resume: bool = True,
    registry_root: str | Path | None = None,
    report_dir: str | Path | None = None,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    """Train every comparison variant of the profile's paper on the same splits, evaluate them and
    write one report with all the paper-style tables. The main variant is registered.

    Returns ``{"rows": {name: metrics}, "probes": ..., "report_dir": Path, "main": TrainOutput}``.
    """
    from lungsearch.evaluation import ReportInput, write_report

    ds = load_dataset(cfg)
    splits = make_splits(cfg, ds)
    rows: dict[str, dict[str, float]] = {}
    tables: dict[str, str] = {}
    main_out: TrainOutput | None = None
    main_name = None
    outputs: dict[str, TrainOutput] = {}
    for v in variants(cfg):
        if only and v.name not in only and not v.main:
            continue
        vcfg = cfg.with_overrides(list(v.overrides)) if v.overrides else cfg
        suffix = "" if v.main else "v-" + "".join(ch if ch.isalnum() else "-" for ch in v.name.lower()).strip("-")[:40]
        same = _same_data(cfg, vcfg)
        o = train_and_evaluate(
            vcfg,
            dataset=ds if same else None,
            splits=splits if same else None,
            run_name=default_run_name(vcfg, suffix),
            storage_path=storage_path,
            resume=resume,
            register=v.main,
            registry_root=registry_root,
            write=v.main,
            variant=v,
        )
        rows[v.name] = {
            **o.evaluation.metrics,
            "train_seconds": o.fit.seconds,
            "resumed": o.fit.resumed,
            "epoch_seconds": sum(float(h.get("epoch_seconds", 0.0)) for h in o.fit.history),
        }
        outputs[v.name] = o
        tables[v.name] = v.table
        if v.main:
            main_out, main_name = o, v.name
    _time_side_by_side(outputs, splits.test, rows)
    probes = None
    if cfg.profile == "cxr-clip" and main_out is not None:
        probes = clip_probes(cfg, main_out, splits)
    assert main_out is not None
    prov = provenance(
        cfg,
        splits,
        run_name=main_out.fit.run_name,
        model_version=main_out.card.version if main_out.card else None,
        n_cases=len(ds.table),
    )
    out_dir = (
        Path(report_dir)
        if report_dir
        else Path(constants.ARTIFACTS_DIR) / "reports" / cfg.profile / f"{prov['model_version']}-reproduce"
    )
    write_report(
        out_dir,
        ReportInput(
            cfg=cfg,
            main=main_out.evaluation,
            rows=rows,
            row_tables=tables,
            probes=probes,
            provenance=prov,
            test_labels=splits.test.labels,
            main_row=main_name,
        ),
    )
    return {"rows": rows, "probes": probes, "report_dir": out_dir, "main": main_out, "provenance": prov}


def _time_side_by_side(
    outputs: dict[str, "TrainOutput"],
    test: CaseTable,
    rows: dict[str, dict[str, float]],
    rounds: int = 3,
    batch_size: int = 32,
) -> None:
    """``infer_ms_per_case`` of every variant measured interleaved on the same test cases (the
    per-variant evaluations ran minutes apart, under whatever load the machine had then): the
    median over ``rounds`` of the whole model's time per case, text features included."""
    import torch

    from lungsearch.training.inference import predict

    if len(outputs) < 2:
        return
    times: dict[str, list[float]] = {n: [] for n in outputs}
    with torch.no_grad():
        for _ in range(rounds + 1):  # the first round warms caches and allocators
            for name, o in outputs.items():
                times[name].append(predict(o.fit.model, test, batch_size=batch_size).seconds)
    for name, ts in times.items():
        rows[name]["infer_ms_per_case"] = 1000.0 * float(np.median(ts[1:])) / max(len(test), 1)


def _same_data(a: ProfileConfig, b: ProfileConfig) -> bool:
    """Whether variant ``b`` can reuse ``a``'s prepared cases (same preprocessing; radiomics, if
    ``b`` uses them, extracted with the same settings)."""
    return a.data == b.data and (b.model.radiomics is None or b.model.radiomics == a.model.radiomics)


def clip_probes(cfg: ProfileConfig, main: TrainOutput, splits: Splits) -> dict[str, dict[str, dict[str, float]]]:
    """Paper 4 Table 1: probes at 1/10/100 % labels on the pretrained encoder vs a random-init one."""
    import torch

    from lungsearch.evaluation import probe_table
    from lungsearch.models import create_model
    from lungsearch.training.inference import predict
    from lungsearch.training.loop import seed_everything

    seed_everything(cfg.train.seed + 1)
    random_model = create_model(cfg)
    enc = {}
    for name, model in (("pretrained (subgraph CLIP)", main.fit.model), ("random init", random_model)):
        with torch.no_grad():
            tr = predict(model, splits.gallery, use_text=False).embedding
            te = predict(model, splits.test, use_text=False).embedding
        enc[name] = (tr, te)
    return probe_table(enc, splits.gallery.labels, splits.test.labels, cfg.data.targets, seed=cfg.data.seed)
