"""Lung masks: Dice on phantoms, plausibility on every real DICOM image reachable offline, cost.

1. CXR phantom Dice (synthetic): ``render_cxr`` drawn on the lung outlines the shipped atlas did
   NOT use (:func:`lungsearch.data.masks._build_atlas.held_out_bank`), normal and with effusion,
   consolidation (opacity), device, atelectasis, cardiomegaly; Dice against that outline. Also
   the same with the image inverted (MONOCHROME1 not applied), as 16-bit, and with a collimation
   border and a burned-in marker added.
2. CT phantom Dice (synthetic): ``render_ct`` series of the four ct-ild classes, per-slice masks
   against the generator's lung masks.
3. Real DICOM: every image in pydicom's bundled test files and, with ``--extra DIR`` (or if the
   ``pydicom-data`` package is importable), its optional data package: outcome, reasons, stats.
4. Cost: the mask (with its checks) of one 512-px CT slice and of one radiograph (512, 224 and
   1955 x 1841 px), wall clock and CPU time; the budget is 15 ms per 512-px slice.

    .venv/bin/python -m benchmarks.masks --quick
    .venv/bin/python -m benchmarks.masks --extra /path/to/pydicom_data/data_store/data \\
        --overlays docs/img/masks        # writes benchmarks/results/masks.json
    .venv/bin/python -m benchmarks.masks --cost-only   # benchmarks/results/masks_cost.json
"""

from __future__ import annotations

import argparse
import glob
import os
import time
import warnings

import numpy as np

from benchmarks._util import latency_stats, provenance, write_json

SEED = 0


def _dice(a, b) -> float:
    from lungsearch.metrics import dice

    return dice(a, b)


def _cxr_phantoms(n: int, size: int, rng: np.random.Generator):
    from lungsearch.data.masks._build_atlas import held_out_bank
    from lungsearch.data.phantoms._cxr import render_cxr
    from lungsearch.data.phantoms._reports import Finding

    bank = held_out_bank()
    kinds = [
        ("normal", ()),
        ("effusion", (Finding(kind="effusion", label="Effusion", severity=1.0),)),
        ("consolidation", (Finding(kind="opacity", label="Consolidation", severity=1.0),)),
        ("device", (Finding(kind="device", label="Device"),)),
        ("atelectasis", (Finding(kind="atelectasis", label="Atelectasis"),)),
        ("cardiomegaly", (Finding(kind="cardiomegaly", label="Cardiomegaly"),)),
    ]
    for i in range(n):
        name, f = kinds[i % len(kinds)]
        img, truth = render_cxr(rng, size, bank, f)
        yield name, img, truth


def _perturb(kind: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    if kind == "inverted":
        return 1.0 - x
    if kind == "16bit":
        return np.round(x * 40000 + 1200).astype(np.uint16).astype(np.float32)
    if kind == "collimation_marker":
        y = x.copy()
        s = y.shape[0]
        b = int(0.08 * s)
        y[:b], y[:, -b:] = 0.97, 0.97  # unexposed border (bright), top and right
        y[int(0.85 * s) : int(0.92 * s), int(0.05 * s) : int(0.1 * s)] = 1.0  # burned-in marker
        return y
    if kind == "under_exposed":
        return (x**2.2) * 0.3
    if kind == "over_exposed":
        return 0.7 + 0.3 * x**0.4
    return x


def measure_cxr(n: int, size: int) -> dict:
    from lungsearch.data.masks import lung_mask_checked

    rng = np.random.default_rng(SEED)
    per_kind: dict[str, list[float]] = {}
    variants = ("plain", "inverted", "16bit", "collimation_marker", "under_exposed", "over_exposed")
    per_variant: dict[str, list[float]] = {v: [] for v in variants}
    outcomes: dict[str, int] = {}
    for name, img, truth in _cxr_phantoms(n, size, rng):
        for v in variants:
            res = lung_mask_checked(_perturb(v, img, rng), modality="cxr")
            d = _dice(res.mask, truth)
            per_variant[v].append(d)
            if v == "plain":
                per_kind.setdefault(name, []).append(d)
                outcomes[res.outcome] = outcomes.get(res.outcome, 0) + 1

    def summ(v):
        a = np.asarray(v)
        return {
            "n": int(a.size),
            "median": round(float(np.median(a)), 4),
            "p10": round(float(np.percentile(a, 10)), 4),
            "min": round(float(a.min()), 4),
        }

    return {
        "synthetic": True,
        "size": size,
        "by_finding": {k: summ(v) for k, v in per_kind.items()},
        "by_variant": {k: summ(v) for k, v in per_variant.items()},
        "plain_outcomes": outcomes,
    }


def measure_ct(n: int, size: int, slices: int) -> dict:
    from lungsearch.data.masks import lung_mask_checked
    from lungsearch.data.phantoms._ct import CT_TARGETS, render_ct

    rng = np.random.default_rng(SEED)
    dices: dict[str, list[float]] = {}
    for i in range(n):
        label = CT_TARGETS[i % len(CT_TARGETS)]
        vol, truth = render_ct(rng, size, slices, label)
        pred = np.stack([lung_mask_checked(s.astype(np.float32), modality="ct").mask for s in vol])
        dices.setdefault(label, []).append(_dice(pred, truth))
    allv = [d for v in dices.values() for d in v]
    return {
        "synthetic": True,
        "size": size,
        "slices": slices,
        "median": round(float(np.median(allv)), 4),
        "min": round(float(np.min(allv)), 4),
        "by_class": {k: round(float(np.median(v)), 4) for k, v in dices.items()},
    }


def _dicom_dirs(extra: list[str]) -> list[str]:
    import pydicom.data

    dirs = [os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")]
    try:  # the optional data package, when installed
        import data_store  # type: ignore[import-not-found]  # pydicom-data's top-level package

        dirs.append(os.path.join(os.path.dirname(data_store.__file__), "data"))
    except ImportError:
        pass
    return dirs + list(extra)


def measure_real(extra: list[str], overlays: str | None) -> dict:
    from lungsearch.data import read_image
    from lungsearch.data.masks import lung_mask_checked
    from lungsearch.errors import LungsearchError

    rows, skipped = [], 0
    for d in _dicom_dirs(extra):
        for path in sorted(glob.glob(os.path.join(d, "*.dcm"))):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    im = read_image(open(path, "rb").read(), allow_burned_in=True)
            except LungsearchError:
                skipped += 1  # not an image lungsearch ingests (US, NM, RT, SR, SEG, broken ...)
                continue
            px = im.pixels
            mod = im.meta.modality
            if min(px.shape) < 32:
                skipped += 1
                continue
            res = lung_mask_checked(px, modality=mod)
            row = {
                "file": os.path.basename(path),
                "modality": mod,
                "shape": list(px.shape),
                "outcome": res.outcome,
                "reasons": list(res.reasons),
                "inverted": res.inverted,
                "stats": {k: round(float(v), 3) for k, v in res.stats.items()},
            }
            if mod == "ct":
                row["air_outside_in_mask"] = int((res.mask & (px < -950)).sum())
            rows.append(row)
            if overlays and os.path.basename(path) in (
                "RG1_UNCI.dcm",
                "RG1_J2KI.dcm",
                "RG3_UNCI.dcm",
                "CT_small.dcm",
                "bad_sequence.dcm",
                "explicit_VR-UN.dcm",
            ):
                _overlay(
                    px if mod != "ct" else np.clip((px + 1000) / 1400, 0, 1),
                    res.mask,
                    None,
                    os.path.join(overlays, f"real_{os.path.splitext(os.path.basename(path))[0]}.png"),
                    f"{res.outcome} {' '.join(res.reasons)}",
                )
    return {"images": rows, "not_ingested": skipped}


def _overlay(img, mask, truth, path, caption=""):
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi

    side = 256
    s = side / max(img.shape)
    h, w = max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))
    g = np.asarray(Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR))
    rgb = np.stack([g, g, g], -1).astype(np.float32)

    def small(m):
        return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127

    m = small(mask)
    rgb[m] = rgb[m] * 0.75 + np.array([0, 64, 0])
    rgb[m ^ ndi.binary_erosion(m)] = [0, 255, 0]
    if truth is not None:
        t = small(truth)
        rgb[t ^ ndi.binary_erosion(t)] = [255, 40, 40]
    im = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if caption:
        ImageDraw.Draw(im).text((4, 4), caption, fill=(255, 255, 0))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path, optimize=True)


def phantom_overlays(out: str) -> None:
    from lungsearch.data.masks import lung_mask_checked
    from lungsearch.data.phantoms._ct import render_ct

    rng = np.random.default_rng(SEED + 1)
    for name, img, truth in _cxr_phantoms(6, 256, rng):
        if name in ("normal", "effusion", "consolidation", "device"):
            res = lung_mask_checked(img.astype(np.float32) / 255.0, modality="cxr")
            _overlay(
                img / 255.0,
                res.mask,
                truth,
                os.path.join(out, f"phantom_cxr_{name}.png"),
                f"{name} Dice {_dice(res.mask, truth):.3f}",
            )
    vol, truth = render_ct(np.random.default_rng(SEED), 256, 6, "consolidation")
    res = lung_mask_checked(vol[3].astype(np.float32), modality="ct")
    _overlay(
        np.clip((vol[3] + 1000) / 1400, 0, 1),
        res.mask,
        truth[3],
        os.path.join(out, "phantom_ct_consolidation.png"),
        f"Dice {_dice(res.mask, truth[3]):.3f}",
    )


def measure_cost(repeats: int) -> dict:
    """Milliseconds per image of ``lung_mask_checked`` (the mask and its checks, what ``roi_masks``
    runs per slice): wall clock and CPU time (a shared machine's waits for a core excluded), at
    512 px for a CT slice and a radiograph (issue 21's budget: 15 ms per 512-px slice), and at a
    full radiograph's and the models' input sizes."""
    from lungsearch.data.masks import lung_mask_checked
    from lungsearch.data.phantoms._ct import render_ct

    vol, _ = render_ct(np.random.default_rng(SEED), 512, 3, "normal")
    ct = vol[1].astype(np.float32)
    cxr_big = np.random.default_rng(SEED).random((1955, 1841), dtype=np.float32)
    rng = np.random.default_rng(SEED)
    _, img512, _ = next(_cxr_phantoms(1, 512, rng))
    rng = np.random.default_rng(SEED)
    _, img224, _ = next(_cxr_phantoms(1, 224, rng))
    out = {}
    for name, x, mod, n in (
        ("ct_512px_slice", ct, "ct", repeats),
        ("cxr_512px", img512.astype(np.float32) / 255.0, "cxr", repeats),
        ("cxr_224px", img224.astype(np.float32) / 255.0, "cxr", max(5, repeats // 2)),
        ("cxr_1955x1841", cxr_big, "cxr", max(3, repeats // 5)),
    ):
        lung_mask_checked(x, modality=mod)
        wall, cpu = [], []
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            lung_mask_checked(x, modality=mod)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
        out[name] = {**latency_stats(wall), "cpu": latency_stats(cpu)}
    out["target_ms_per_512px_slice"] = 15.0
    out["load_avg"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--extra", action="append", default=[], help="more folders of .dcm files")
    ap.add_argument("--overlays", default=None, help="write overlay PNGs here (e.g. docs/img/masks)")
    ap.add_argument(
        "--cost-only",
        action="store_true",
        help="only the cost, written to benchmarks/results/masks_cost.json (unless --out)",
    )
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/masks.json)")
    args = ap.parse_args(argv)
    q = args.quick
    res = {"provenance": provenance("masks", seed=SEED, argv=argv)}
    res["cost"] = measure_cost(10 if q else 60)
    print(
        "cost (wall p50, CPU p50 ms)",
        {
            k: (round(v["p50_ms"], 1), round(v["cpu"]["p50_ms"], 1)) if isinstance(v, dict) else v
            for k, v in res["cost"].items()
        },
        flush=True,
    )
    if args.cost_only:
        if not q:
            write_json(args.out or "benchmarks/results/masks_cost.json", res)
        return
    res["cxr_phantom_dice"] = measure_cxr(12 if q else 60, 224)
    print("cxr", res["cxr_phantom_dice"]["by_variant"], flush=True)
    res["ct_phantom_dice"] = measure_ct(4 if q else 24, 256, 6)
    print("ct", res["ct_phantom_dice"], flush=True)
    res["real_dicom"] = measure_real(args.extra, args.overlays)
    for r in res["real_dicom"]["images"]:
        print(r["file"], r["modality"], r["outcome"], r["reasons"], r["stats"].get("area_total"))
    if args.overlays:
        phantom_overlays(args.overlays)
    if not q:
        write_json(args.out or "benchmarks/results/masks.json", res)


if __name__ == "__main__":
    main()
