"""Cases as arrays: decode + preprocess every record once (in parallel with Ray Data), cache the
result on disk, and hand training, evaluation and indexing the same :class:`CaseTable`.

Why preprocess once: on 2 cores, decoding PNG/DICOM and resampling every epoch costs more than
the small CPU models' forward pass. The non-augmented model input
(``lungsearch.data.preprocess_study(train=False)``) is cached; train-time augmentation is applied
per batch in the worker by :func:`augment_images`, which draws and applies exactly the transform
``preprocess_study(train=True)`` would (the intensity normalisation is affine, so it commutes with
the bilinear resampling; ``tests/training/test_cases.py`` checks the equality).

CT cases carry their slices (``images[i, :n_slices[i]]``) and, when the profile has a radiomics
part, raw per-case pyradiomics features on the lung mask (NaN-aware mean over slices, as
:func:`study_radiomics` computes at serve time too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from lungsearch import constants
from lungsearch.errors import ConfigError, InvalidRequestError
from lungsearch.inference import study_radiomics  # one radiomics rule for training, build_index and serving

if TYPE_CHECKING:
    from lungsearch.config import ProfileConfig
    from lungsearch.data.types import CaseRecord

__all__ = [
    "CaseTable",
    "augment_images",
    "data_fingerprint",
    "encode_labels",
    "prepare_cases",
    "radiomics_extractor",
    "study_radiomics",
]

log = logging.getLogger(__name__)

_CACHE_FORMAT = 2  # bump when the cached arrays change meaning


@dataclass
class CaseTable:
    """Preprocessed cases of one dataset (or a split of it).

    Attributes:
        case_ids: the records' ``case_id`` (hashes for real data; never a raw patient id).
        groups: patient keys (splits never put one group on two sides).
        images: float32 ``[N, S, 1, H, W]``: model inputs, slices padded with zeros to ``S``.
        n_slices: int32 ``[N]`` valid slices per case (1 for radiographs).
        labels: int64 ``[N]`` class index (single-label) or float32 ``[N, C]`` multi-hot.
        multi_hot: float32 ``[N, C]`` (both cases; retrieval relevance uses it).
        reports: report text per case ("" when none).
        radiomics: float64 ``[N, F]`` raw radiomics (NaN where undefined) or None.
        modality: "cxr" or "ct". views: per-case view ("PA", "AXIAL", ...).
        synthetic: every case is a phantom.
        targets: label order of ``labels``' columns / indices.
    """

    case_ids: list[str]
    groups: list[str]
    images: np.ndarray
    n_slices: np.ndarray
    labels: np.ndarray
    multi_hot: np.ndarray
    reports: list[str]
    radiomics: np.ndarray | None
    modality: str
    views: list[str]
    synthetic: bool
    targets: list[str]
    label_sets: list[tuple[str, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def subset(self, index: Sequence[int] | np.ndarray) -> "CaseTable":
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda seq: [seq[i] for i in idx]  # noqa: E731
        return CaseTable(
            case_ids=pick(self.case_ids),
            groups=pick(self.groups),
            images=self.images[idx],
            n_slices=self.n_slices[idx],
            labels=self.labels[idx],
            multi_hot=self.multi_hot[idx],
            reports=pick(self.reports),
            radiomics=None if self.radiomics is None else self.radiomics[idx],
            modality=self.modality,
            views=pick(self.views),
            synthetic=self.synthetic,
            targets=list(self.targets),
            label_sets=pick(self.label_sets) if self.label_sets else [],
        )

    @classmethod
    def concat(cls, tables: Sequence["CaseTable"]) -> "CaseTable":
        """Cases of several tables of one dataset, in order (slices padded to the widest)."""
        tables = [t for t in tables if len(t)]
        if not tables:
            raise InvalidRequestError("nothing to concatenate")
        s = max(t.images.shape[1] for t in tables)
        imgs = [np.pad(t.images, ((0, 0), (0, s - t.images.shape[1]), (0, 0), (0, 0), (0, 0))) for t in tables]
        first = tables[0]
        return cls(
            case_ids=[c for t in tables for c in t.case_ids],
            groups=[g for t in tables for g in t.groups],
            images=np.concatenate(imgs),
            n_slices=np.concatenate([t.n_slices for t in tables]),
            labels=np.concatenate([t.labels for t in tables]),
            multi_hot=np.concatenate([t.multi_hot for t in tables]),
            reports=[r for t in tables for r in t.reports],
            radiomics=None if first.radiomics is None else np.concatenate([t.radiomics for t in tables]),
            modality=first.modality,
            views=[v for t in tables for v in t.views],
            synthetic=all(t.synthetic for t in tables),
            targets=list(first.targets),
            label_sets=[x for t in tables for x in t.label_sets],
        )

    def select(self, case_ids: Sequence[str]) -> "CaseTable":
        """The cases with these ids, in that order (unknown ids raise InvalidRequestError)."""
        pos = {c: i for i, c in enumerate(self.case_ids)}
        try:
            return self.subset([pos[c] for c in case_ids])
        except KeyError:
            raise InvalidRequestError("a requested case is not in the prepared table") from None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per case for ``ray.data.from_items`` (arrays stay numpy, text stays str)."""
        out = []
        for i in range(len(self)):
            row = {
                "index": i,
                "image": self.images[i],
                "n_slices": int(self.n_slices[i]),
                "label": self.labels[i],
                "report": self.reports[i],
            }
            if self.radiomics is not None:
                row["radiomics"] = self.radiomics[i]
            out.append(row)
        return out


def data_fingerprint(records: Sequence["CaseRecord"]) -> str:
    """Hash of the dataset's identity: case ids, groups, labels and file names (order-free).

    PHI-free: it is a hash, and case ids are themselves keyed hashes for real data."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.case_id):
        h.update(
            json.dumps(
                [
                    r.case_id,
                    r.group,
                    list(r.labels),
                    [Path(p).name for p in r.image_paths],
                    hashlib.sha256((r.report or "").encode()).hexdigest()[:16],
                ]
            ).encode()
        )
    return h.hexdigest()[:16]


def encode_labels(
    records: Sequence["CaseRecord"], targets: Sequence[str], multilabel: bool
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Labels as model targets.

    Single-label: the index of the record's first label that is a target (records whose labels
    are all outside ``targets`` are dropped). Multi-label: multi-hot over ``targets`` (a record
    with none is kept as all-zero: "no finding among the targets").

    Returns:
        ``(labels, multi_hot, kept)``: kept = indices of the records used.
    """
    pos = {t: k for k, t in enumerate(targets)}
    c = len(targets)
    labels, hots, kept = [], [], []
    for i, r in enumerate(records):
        hot = np.zeros(c, dtype=np.float32)
        for lab in r.labels:
            if lab in pos:
                hot[pos[lab]] = 1.0
        if multilabel:
            labels.append(hot)
        else:
            first = next((pos[lab] for lab in r.labels if lab in pos), None)
            if first is None:
                continue
            hot = np.zeros(c, dtype=np.float32)
            hot[first] = 1.0
            labels.append(first)
        hots.append(hot)
        kept.append(i)
    if not kept:
        raise ConfigError("no record carries a label from data.targets")
    lab = np.stack(labels).astype(np.float32) if multilabel else np.asarray(labels, dtype=np.int64)
    return lab, np.stack(hots), kept


def radiomics_extractor(cfg: "ProfileConfig"):
    """The profile's ``RadiomicsExtractor`` (None when the profile has no radiomics part)."""
    comp = cfg.model.radiomics
    if comp is None:
        return None
    from lungsearch.models.radiomics import DEFAULT_CLASSES, RadiomicsExtractor

    p = comp.params
    return RadiomicsExtractor(
        p.get("classes", list(DEFAULT_CLASSES)),
        bin_count=p.get("bin_count", 32),
        min_roi_pixels=p.get("min_roi_pixels", 16),
    )


def _decode_cases(records: Sequence["CaseRecord"], cfg: "ProfileConfig", hmac_key: bytes | None) -> Callable:
    """The Ray Data ``map_batches`` function: record index -> preprocessed arrays."""
    want_radiomics = cfg.model.radiomics is not None

    def fn(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from lungsearch.data import load_study
        from lungsearch.inference import prepare_case

        extractor = radiomics_extractor(cfg) if want_radiomics else None
        out: dict[str, list] = {"i": [], "image": [], "radiomics": [], "view": []}
        for i in batch["i"]:
            study = load_study(records[int(i)], hmac_key=hmac_key)
            case = prepare_case(study, cfg, extractor=extractor)  # the rule build_index and serving use
            out["i"].append(int(i))
            out["image"].append(case.pixels)
            out["view"].append(study.view or records[int(i)].view or "")
            out["radiomics"].append(case.radiomics if case.radiomics is not None else np.zeros(0))
        return {
            "i": np.asarray(out["i"]),
            "image": _obj(out["image"]),
            "radiomics": _obj(out["radiomics"]),
            "view": np.asarray(out["view"], dtype=object),
        }

    return fn


def _obj(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    for k, a in enumerate(arrays):
        out[k] = a
    return out


def _cache_key(records: Sequence["CaseRecord"], cfg: "ProfileConfig") -> str:
    d = cfg.data
    parts = {
        "format": _CACHE_FORMAT,
        "data": data_fingerprint(records),
        "pre": [d.image_size, d.window, d.equalize, d.denoise],
        "radiomics": cfg.model.radiomics.model_dump(mode="json") if cfg.model.radiomics else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _decode_all(
    records: Sequence["CaseRecord"], cfg: "ProfileConfig", use_ray: bool, hmac_key: bytes | None
) -> list[dict]:
    fn = _decode_cases(records, cfg, hmac_key)
    n = len(records)
    if not use_ray:
        got = fn({"i": np.arange(n)})
        return [
            {"i": got["i"][k], "image": got["image"][k], "radiomics": got["radiomics"][k], "view": got["view"][k]}
            for k in range(n)
        ]
    import ray

    from lungsearch.runtime import init_ray

    init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    # Small batches keep both cores busy on a few hundred cases; CT radiomics dominates per case.
    batch = max(1, min(32, -(-n // (2 * cpus))))
    ds = ray.data.from_items([{"i": i} for i in range(n)], override_num_blocks=max(1, -(-n // batch)))
    ds = ds.map_batches(fn, batch_size=batch, batch_format="numpy", num_cpus=1)
    return list(ds.iter_rows())


def prepare_cases(
    cfg: "ProfileConfig",
    records: Sequence["CaseRecord"],
    *,
    use_ray: bool = True,
    cache_dir: str | Path | None = None,
    hmac_key: bytes | None = None,
) -> CaseTable:
    """Decode and preprocess ``records`` into a :class:`CaseTable` (cached on disk).

    Args:
        cfg: the profile (data section: preprocessing; model.radiomics: features to extract).
        records: the dataset's cases (``lungsearch.data.load_records``).
        use_ray: decode with Ray Data ``map_batches`` across the cluster's CPUs (False: in-process).
        cache_dir: where to keep ``cases-<key>.npz`` (default ``<DATA_DIR>/cache``); ``""`` disables.
        hmac_key: key for case keys of real DICOM (passed to ``load_study``).

    Raises:
        ConfigError: no record has a label from ``cfg.data.targets``.
    """
    targets = list(cfg.data.targets)
    labels, multi_hot, kept = encode_labels(records, targets, cfg.data.multilabel)
    if len(kept) < len(records):
        log.warning(
            "%d of %d records have no label in data.targets and are left out", len(records) - len(kept), len(records)
        )
    records = [records[i] for i in kept]
    cache: Path | None = None
    if cache_dir != "":
        cache = Path(cache_dir) if cache_dir is not None else Path(constants.DATA_DIR) / "cache"
        cache = cache / f"cases-{cfg.modality}-{_cache_key(records, cfg)}.npz"
    arrays = _load_cache(cache) if cache is not None else None
    if arrays is None:
        rows = sorted(_decode_all(records, cfg, use_ray, hmac_key), key=lambda r: int(r["i"]))
        s_max = max(r["image"].shape[0] for r in rows)
        h, w = rows[0]["image"].shape[-2:]
        images = np.zeros((len(rows), s_max, 1, h, w), dtype=np.float32)
        n_slices = np.zeros(len(rows), dtype=np.int32)
        for k, r in enumerate(rows):
            img = np.asarray(r["image"], dtype=np.float32)
            images[k, : img.shape[0]] = img
            n_slices[k] = img.shape[0]
        rad = (
            np.stack([np.asarray(r["radiomics"], dtype=np.float64) for r in rows])
            if cfg.model.radiomics is not None
            else None
        )
        views = [str(r["view"]) for r in rows]
        arrays = {"images": images, "n_slices": n_slices, "views": np.asarray(views)}
        if rad is not None:
            arrays["radiomics"] = rad
        if cache is not None:
            _save_cache(cache, arrays)
    return CaseTable(
        case_ids=[r.case_id for r in records],
        groups=[r.group for r in records],
        images=arrays["images"],
        n_slices=arrays["n_slices"],
        labels=labels,
        multi_hot=multi_hot,
        reports=[r.report or "" for r in records],
        radiomics=arrays.get("radiomics"),
        modality=cfg.modality,
        views=[str(v) for v in arrays["views"]],
        synthetic=all(r.synthetic for r in records),
        targets=targets,
        label_sets=[tuple(r.labels) for r in records],
    )


def _load_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None


def _save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cases-", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: concurrent jobs never read half a cache file
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        log.warning("could not write the case cache (continuing without it)")


def augment_images(images: np.ndarray, n_slices: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Train-time augmentation of preprocessed cases ``[B, S, 1, H, W]``, one draw per case
    shared by its slices: the transform ``lungsearch.data.preprocess_study(train=True)`` applies."""
    from lungsearch.data import transforms

    out = images.copy()
    for b in range(images.shape[0]):
        params = transforms._draw_augment(rng, modality)  # the data layer's own draw and warp
        for s in range(int(n_slices[b])):
            x = images[b, s, 0]
            # preprocess() warps x01 = x * STD + MEAN; the warp is linear in intensity (bilinear
            # resampling, cval = min), so warping the normalised image is the same thing.
            out[b, s, 0] = transforms._augment(x, params)
    return out
