"""Built-in phantom (synthetic) datasets: the embedded default when no real dataset is mounted.

Three kinds (see docs/phantoms.md), each deterministic by ``seed``:

* ``cxr``: chest radiographs (PNG) paired with **real** IU X-ray reports bundled with
  torchxrayvision; labels from the report's MeSH terms (:data:`CXR_TARGETS`, ``labels[0]`` is the
  single-label class by :data:`~._reports.PRIORITY`); findings drawn at the stated side and zone
  on real lung outlines. ``group`` is the report id (one patient).
* ``cxr4``: 4-class COVID / Lung_Opacity / Viral_Pneumonia / Normal radiographs (no reports),
  balanced classes.
* ``ct``: ILD CT series (normal, ggo, reticular, consolidation) as **DICOM** CT Image Storage
  files under ``ct/<class>/<case>/slice_NNN.dcm`` (the ILD folder layout), with the generator's
  own lung masks in ``masks/<case>.npz``.

Everything generated is synthetic; every number computed on it must say so (``synthetic=True``
in each record, ``"synthetic": true`` in ``phantom.json``).

Example::

    from lungsearch.data import phantoms
    root = phantoms.generate("cxr", 200, "data/phantoms/demo", seed=0, size=128)
    # root/manifest.jsonl: one CaseRecord per line, image paths relative to root
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from lungsearch.data.types import CaseRecord
from lungsearch.errors import ConfigError, LungsearchError

__all__ = [
    "CT_TARGETS",
    "CXR4_TARGETS",
    "CXR_TARGETS",
    "GENERATOR_VERSION",
    "KINDS",
    "generate",
    "read_manifest",
    "targets_for",
]

log = logging.getLogger(__name__)

#: Bumped whenever the rendering changes: part of the cache key of generated datasets.
GENERATOR_VERSION = "1"
KINDS = ("cxr", "cxr4", "ct")
CXR_TARGETS = ("Normal", "Opacity", "Cardiomegaly", "Effusion", "Nodule", "Atelectasis")
CXR4_TARGETS = ("COVID", "Lung_Opacity", "Viral_Pneumonia", "Normal")
CT_TARGETS = ("normal", "ggo", "reticular", "consolidation")
_KIND_CODE = {"cxr": 1, "cxr4": 4, "ct": 3}
# Below this many cases the pool's start-up (~2 s per spawned worker) costs more than it saves.
_PARALLEL_MIN = 48


def targets_for(kind: str) -> tuple[str, ...]:
    """The label vocabulary of a phantom kind."""
    try:
        return {"cxr": CXR_TARGETS, "cxr4": CXR4_TARGETS, "ct": CT_TARGETS}[kind]
    except KeyError:
        raise ConfigError(f"unknown phantom kind {kind!r}; expected one of {', '.join(KINDS)}") from None


# ----------------------------------------------------------------------------------------- workers

_BANK = None


def _init_worker(bank) -> None:
    global _BANK
    _BANK = bank


def _case_rng(seed: int, kind: str, i: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _KIND_CODE[kind], int(i)])


def _png_bytes(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _make_cxr(task: dict) -> dict:
    from lungsearch.data.phantoms._cxr import render_cxr
    from lungsearch.data.phantoms._reports import Finding

    rng = _case_rng(task["seed"], "cxr", task["i"])
    findings = tuple(Finding(**f) for f in task["findings"])
    img, _ = render_cxr(rng, task["size"], _BANK, findings)
    rel = f"images/{task['case_id']}.png"
    (Path(task["out"]) / rel).write_bytes(_png_bytes(img))
    return {
        "case_id": task["case_id"],
        "image_paths": [rel],
        "labels": task["labels"],
        "group": task["group"],
        "report": task["report"],
        "modality": "cxr",
        "view": "PA",
        "synthetic": True,
        "extra": {"report_uid": task["group"], "mesh": task["mesh"]},
    }


def _make_cxr4(task: dict) -> dict:
    from lungsearch.data.phantoms._cxr import render_cxr4

    rng = _case_rng(task["seed"], "cxr4", task["i"])
    img, _ = render_cxr4(rng, task["size"], _BANK, task["labels"][0])
    rel = f"images/{task['case_id']}.png"
    (Path(task["out"]) / rel).write_bytes(_png_bytes(img))
    return {
        "case_id": task["case_id"],
        "image_paths": [rel],
        "labels": task["labels"],
        "group": task["group"],
        "report": None,
        "modality": "cxr",
        "view": "PA",
        "synthetic": True,
        "extra": {},
    }


def _make_ct(task: dict) -> dict:
    from pydicom.uid import generate_uid

    from lungsearch.data.phantoms._ct import render_ct, write_ct_series

    rng = _case_rng(task["seed"], "ct", task["i"])
    label = task["labels"][0]
    hu, masks = render_ct(rng, task["size"], task["slices"], label)
    case_id = task["case_id"]
    ent = [f"lungsearch-phantom-{GENERATOR_VERSION}", str(task["seed"]), case_id]
    study_uid = generate_uid(entropy_srcs=ent + ["study"])
    series_uid = generate_uid(entropy_srcs=ent + ["series"])
    sop_uids = [generate_uid(entropy_srcs=ent + ["sop", str(j)]) for j in range(hu.shape[0])]
    rel_dir = f"ct/{label}/{case_id}"
    names = write_ct_series(
        Path(task["out"]) / rel_dir,
        hu,
        patient_id=task["group"],
        patient_name=f"PHANTOM^{case_id.upper()}",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uids=sop_uids,
        accession=f"PH{task['i']:06d}",
    )
    mask_rel = f"masks/{case_id}.npz"
    np.savez_compressed(Path(task["out"]) / mask_rel, lung=np.packbits(masks, axis=-1), shape=np.array(masks.shape))
    return {
        "case_id": case_id,
        "image_paths": [f"{rel_dir}/{n}" for n in names],
        "labels": task["labels"],
        "group": task["group"],
        "report": None,
        "modality": "ct",
        "view": "AXIAL",
        "synthetic": True,
        "extra": {"mask_path": mask_rel},
    }


_MAKERS = {"cxr": _make_cxr, "cxr4": _make_cxr4, "ct": _make_ct}


def _set_signal(signal: float) -> None:
    """Apply the signal-strength knob in this process (module constants the renderers read)."""
    from lungsearch.data.phantoms import _ct, _cxr

    _cxr.SIGNAL = _cxr.BASE_SIGNAL * signal
    _cxr.CXR4_SIGNAL = signal
    _ct.SIGNAL = signal


def _run_task(task: dict) -> dict:
    if task.get("_exit"):  # test hook: this worker dies abruptly (as a killed or OOM-ed process does)
        os._exit(70)
    if task.get("_hang"):  # test hook: this worker stops making progress
        time.sleep(float(task["_hang"]))
    _set_signal(float(task.get("signal", 1.0)))
    try:
        return _MAKERS[task["kind"]](task)
    finally:
        _set_signal(1.0)


def _run_chunk(tasks: list[dict]) -> list[dict]:
    return [_run_task(t) for t in tasks]


# ----------------------------------------------------------------------------------------- planning


def _plan(kind: str, n: int, out: Path, seed: int, size: int, slices: int, signal: float = 1.0) -> list[dict]:
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _KIND_CODE[kind], 0xC0FFEE])
    base = {"kind": kind, "seed": seed, "size": size, "slices": slices, "out": str(out), "signal": float(signal)}
    tasks = []
    if kind == "cxr":
        from lungsearch.data.phantoms._reports import load_reports

        reports = load_reports()
        order = rng.permutation(len(reports))
        for i in range(n):
            rep = reports[int(order[i % len(reports)])]
            # More cases than reports: a report is reused with a new image; its id stays the
            # group, so both images land on the same side of every split.
            tasks.append(
                {
                    **base,
                    "i": i,
                    "case_id": f"cxr-{i:06d}",
                    "group": rep.uid,
                    "labels": list(rep.labels),
                    "report": rep.text,
                    "mesh": list(rep.mesh),
                    "findings": [asdict(f) for f in rep.findings],
                }
            )
    else:
        vocab = CXR4_TARGETS if kind == "cxr4" else CT_TARGETS
        classes = [vocab[i % len(vocab)] for i in range(n)]  # balanced, then shuffled
        classes = [classes[j] for j in rng.permutation(n)]
        for i in range(n):
            tasks.append(
                {
                    **base,
                    "i": i,
                    "case_id": f"{kind}-{i:06d}",
                    "group": f"{kind}-patient-{i:06d}",
                    "labels": [classes[i]],
                }
            )
    return tasks


def _workers(workers: int | None, n: int) -> int:
    if workers is not None:
        return max(1, int(workers))
    if n < _PARALLEL_MIN:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 16))


#: A worker that returns nothing for this long fails the run (a case takes well under a second).
STALL_TIMEOUT_S = float(os.environ.get("LUNGSEARCH_PHANTOM_STALL_S", "600"))


def _run_pool(tasks: list[dict], nw: int, bank, chunk: int, stall_s: float, on_done) -> None:
    """Run ``tasks`` on ``nw`` spawned workers; a worker that dies or stalls fails the run.

    ``ProcessPoolExecutor`` marks the pool broken when a worker exits abruptly; the wait has a
    timeout too, so a worker stuck without exiting (seen: a pipe left half-written while a Serve
    app competed for the machine) cannot block the caller forever either.
    """
    pool = ProcessPoolExecutor(
        max_workers=nw, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(bank,)
    )
    ok = False
    try:
        pending = {pool.submit(_run_chunk, tasks[i : i + chunk]) for i in range(0, len(tasks), chunk)}
        while pending:
            done, pending = wait(pending, timeout=stall_s, return_when=FIRST_COMPLETED)
            if not done:
                raise LungsearchError(
                    f"phantom generation: no worker finished a case in {stall_s:.0f} s "
                    f"(LUNGSEARCH_PHANTOM_STALL_S); the run is stopped",
                    code="phantom_worker_stalled",
                )
            for fut in done:
                try:
                    recs = fut.result()
                except BrokenProcessPool:
                    raise LungsearchError(
                        "phantom generation: a worker process died (killed, out of memory or crashed); "
                        "no dataset was written",
                        code="phantom_worker_died",
                    ) from None
                for rec in recs:
                    on_done(rec)
        ok = True
    finally:
        if not ok:
            # a live but stuck worker would keep shutdown() waiting: end the pool's own processes
            for proc in list(getattr(pool, "_processes", {}).values()):
                if proc.is_alive():
                    proc.kill()
        pool.shutdown(wait=ok, cancel_futures=True)


def generate(
    kind: str,
    n: int,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    size: int = 224,
    slices: int = 8,
    workers: int | None = None,
    progress: bool = False,
    signal: float = 1.0,
    stall_timeout_s: float | None = None,
    _faults: dict[int, str] | None = None,
) -> Path:
    """Generate ``n`` phantom cases of ``kind`` under ``out_dir``; returns ``out_dir``.

    Writes the images (PNG for cxr/cxr4, DICOM series for ct), ``manifest.jsonl`` (one
    :class:`CaseRecord` per line, paths relative to ``out_dir``, written last: its presence means
    the dataset is complete) and ``phantom.json`` (provenance: kind, n, seed, size, slices,
    generator and lungsearch versions, seconds taken, sources). The same arguments give the same
    files, whatever the number of workers.

    Args:
        kind: "cxr", "cxr4" or "ct".
        n: Number of cases (>= 1).
        out_dir: Target folder (created; existing phantom files in it are replaced).
        seed: Generator seed.
        size: Image side in pixels.
        slices: Slices per CT series (ct only).
        workers: Processes (default: all available cores; 1 below 48 cases).
        progress: Show a progress bar (tqdm) on stderr.
        signal: Signal-strength knob: scales every label-dependent finding (cxr: the finding
            amplitudes and the cardiothoracic-ratio increase; cxr4: each film's visibility; ct:
            each case's severity). 1 = the default phantoms (same files as before the knob), 0 =
            the images carry no label information, > 1 = clearer findings (an "image evidence
            exists" setting). Recorded in phantom.json. Nuisance is never scaled.
        stall_timeout_s: Fail when no worker finishes a case for this long (default
            :data:`STALL_TIMEOUT_S`).
        _faults: test hook: ``{case index: "exit" | "hang"}`` makes that case's worker die / stall.

    Raises:
        ConfigError: unknown kind or bad sizes.
        LungsearchError: a worker process died (``code="phantom_worker_died"``) or stalled
            (``"phantom_worker_stalled"``); nothing is left waiting.
    """
    targets_for(kind)
    if not 0.0 <= float(signal) <= 10.0:
        raise ConfigError(f"phantoms: signal must be in [0, 10] (got {signal})")
    if n < 1 or not 32 <= size <= 1024 or not 1 <= slices <= 256:
        raise ConfigError(
            f"phantoms: need n >= 1, 32 <= size <= 1024, 1 <= slices <= 256 (got n={n}, size={size}, slices={slices})"
        )
    from lungsearch import __version__

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.jsonl", "phantom.json"):
        (out / stale).unlink(missing_ok=True)
    for sub in ("images", "ct", "masks"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / ("ct" if kind == "ct" else "images")).mkdir(parents=True, exist_ok=True)
    if kind == "ct":
        (out / "masks").mkdir(exist_ok=True)
    tasks = _plan(kind, n, out, seed, size, slices, signal)
    for i, what in (_faults or {}).items():
        tasks[i]["_exit" if what == "exit" else "_hang"] = 3600 if what == "hang" else True
    bank = None
    if kind in ("cxr", "cxr4"):
        from lungsearch.data.phantoms._shapes import load_shape_bank

        bank = load_shape_bank()
    nw = _workers(workers, n)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"phantoms {kind}", unit="case")
    results: list[dict] = [None] * n  # type: ignore[list-item]
    if nw == 1:
        _init_worker(bank)
        for t in tasks:
            results[t["i"]] = _run_task(t)
            if bar:
                bar.update(1)
    else:
        # spawn, not fork: callers may hold threads (Ray, torch) that fork would copy mid-lock.
        chunk = max(1, min(32, n // (nw * 8) or 1))
        index = {t["case_id"]: t["i"] for t in tasks}

        def _done(rec: dict) -> None:
            results[index[rec["case_id"]]] = rec
            if bar:
                bar.update(1)

        _run_pool(tasks, nw, bank, chunk, STALL_TIMEOUT_S if stall_timeout_s is None else float(stall_timeout_s), _done)
    if bar:
        bar.close()
    elapsed = time.perf_counter() - t0
    provenance = {
        "synthetic": True,
        "kind": kind,
        "n": n,
        "seed": seed,
        "size": size,
        "slices": slices if kind == "ct" else None,
        "targets": list(targets_for(kind)),
        "generator_version": GENERATOR_VERSION,
        "lungsearch_version": __version__,
        "workers": nw,
        "seconds": round(elapsed, 3),
        "signal": float(signal),
        "sources": (
            {
                "reports": "torchxrayvision data/NLMCXR_reports.tgz (IU X-ray / OpenI, CC BY-NC-ND 4.0)",
                "lung_shapes": "torchxrayvision data/semantic_masks_v7labs_lungs.zip",
            }
            if kind == "cxr"
            else {"lung_shapes": "torchxrayvision data/semantic_masks_v7labs_lungs.zip"}
            if kind == "cxr4"
            else {}
        ),
    }
    (out / "phantom.json").write_text(json.dumps(provenance, indent=2) + "\n")
    tmp = out / "manifest.jsonl.tmp"
    with tmp.open("w") as fh:
        for rec in results:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
    os.replace(tmp, out / "manifest.jsonl")
    log.info("generated %d %s phantom cases in %.1f s with %d workers", n, kind, elapsed, nw)
    return out


def read_manifest(root: str | os.PathLike, *, absolute: bool = True) -> list[CaseRecord]:
    """CaseRecords of a phantom folder (image paths made absolute unless ``absolute=False``).

    Raises:
        ConfigError: no manifest, or a malformed line.
    """
    root = Path(root)
    path = root / "manifest.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            paths = tuple(str(root / p) if absolute else p for p in d["image_paths"])
            extra = dict(d.get("extra") or {})
            if absolute and "mask_path" in extra:
                extra["mask_path"] = str(root / extra["mask_path"])
            records.append(
                CaseRecord(
                    case_id=d["case_id"],
                    image_paths=paths,
                    labels=tuple(d["labels"]),
                    group=d["group"],
                    report=d.get("report"),
                    modality=d.get("modality", "cxr"),
                    view=d.get("view", ""),
                    synthetic=bool(d.get("synthetic", False)),
                    extra=extra,
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{lineno}: malformed manifest line ({type(exc).__name__})") from None
    return records
