"""Build the CXR lung atlas and the plausibility ranges from torchxrayvision's lung masks.

Run (offline; reads the zip inside the installed torchxrayvision wheel)::

    python -m lungsearch.data.masks._build_atlas            # writes lungsearch/data/masks/atlas.npz
    python -m lungsearch.data.masks._build_atlas --print    # also prints the ranges for _checks.py

The atlas keeps the *even* positions of the filtered bank (sorted file names); the odd positions
are held out so the phantom Dice (phantoms are drawn on these same outlines) is measured on lung
shapes the atlas has never seen (:func:`held_out_bank`).

Plausibility statistics are taken in the frame of each *whole* mask image (the lungs' place in
the radiograph), from every frontal two-lung mask of the zip, not just the atlas half.
"""

from __future__ import annotations

import argparse
import os
import zipfile

import numpy as np

__all__ = ["ATLAS_CANON", "build", "held_out_bank", "frame_stats"]

#: Side of the canonical (lung bounding box) frame the atlas is stored at.
ATLAS_CANON = 64


def _frame_mask(raw: bytes) -> np.ndarray | None:
    """The whole mask image at <= 256 px, two largest components kept; None if not frontal-2-lung
    (the shape bank's rule: :func:`lungsearch.data.phantoms._shapes.two_lung_mask`)."""
    from lungsearch.data.phantoms._shapes import two_lung_mask

    return two_lung_mask(raw)


def frame_stats(mask: np.ndarray) -> dict[str, float]:
    """The quantities the plausibility checks test, for one two-lung mask in its image frame.

    ``area_total``: lung pixels / image pixels; ``half_<side>``: one lung's area / its half of
    the image (split at the midpoint between the two lungs' centroids); ``cx_<side>`` / ``cy``:
    centroids as fractions of width / height; ``ratio``: smaller lung / larger lung area.
    """
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    areas = ndi.sum_labels(mask, lab, index=np.arange(1, n + 1))
    order = np.argsort(-areas)[:2] + 1
    h, w = mask.shape
    cents = [ndi.center_of_mass(lab == k) for k in order]
    left_first = cents[0][1] <= cents[1][1]
    (a_img_left, c_left), (a_img_right, c_right) = (
        ((areas[order[0] - 1], cents[0]), (areas[order[1] - 1], cents[1]))
        if left_first
        else ((areas[order[1] - 1], cents[1]), (areas[order[0] - 1], cents[0]))
    )
    split = 0.5 * (c_left[1] + c_right[1])
    return {
        "area_total": float(mask.sum()) / (h * w),
        "half_left": float(a_img_left) / (h * max(split, 1.0)),
        "half_right": float(a_img_right) / (h * max(w - split, 1.0)),
        "cx_left": float(c_left[1]) / w,
        "cx_right": float(c_right[1]) / w,
        "cy_left": float(c_left[0]) / h,
        "cy_right": float(c_right[0]) / h,
        "ratio": float(min(a_img_left, a_img_right) / max(a_img_left, a_img_right)),
    }


def _zip_members(src: str):
    with zipfile.ZipFile(src) as zf:
        for name in sorted(zf.namelist()):
            if not name.endswith("/"):
                yield name, zf.read(name)


def held_out_bank():
    """The phantom shape bank restricted to the masks the atlas did NOT use (odd positions)."""
    from lungsearch.data.phantoms._shapes import ShapeBank, load_shape_bank

    bank = load_shape_bank()
    idx = np.arange(1, len(bank), 2)
    return ShapeBank(bank.packed[idx], bank.aspect[idx], tuple(bank.names[i] for i in idx))


def build(out: str | None = None, *, show: bool = False) -> dict:
    from PIL import Image

    from lungsearch.data.phantoms._shapes import _zip_path, load_shape_bank

    bank = load_shape_bank()
    keep = np.arange(0, len(bank), 2)
    canon = []
    for i in keep:
        m = bank.mask(int(i))
        small = (
            np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((ATLAS_CANON, ATLAS_CANON), Image.BILINEAR))
            > 127
        )
        canon.append(np.packbits(small.ravel()))
    stats = []
    for _, raw in _zip_members(_zip_path()):
        try:
            fm = _frame_mask(raw)
        except (OSError, ValueError, SyntaxError):
            continue
        if fm is not None:
            stats.append(frame_stats(fm))
    keys = sorted(stats[0])
    table = np.array([[s[k] for k in keys] for s in stats])
    ranges = {
        k: (float(np.percentile(table[:, j], 1)), float(np.percentile(table[:, j], 99))) for j, k in enumerate(keys)
    }
    out = out or os.path.join(os.path.dirname(__file__), "atlas.npz")
    np.savez_compressed(
        out, packed=np.stack(canon), aspect=bank.aspect[keep].astype(np.float32), canon=np.array(ATLAS_CANON)
    )
    if show:
        print(f"atlas: {len(keep)} of {len(bank)} canonical masks -> {out}")
        print(f"frame statistics over {len(stats)} frontal two-lung masks (1st, 99th percentile):")
        for k, (lo, hi) in ranges.items():
            print(f"    {k!r}: ({lo:.3f}, {hi:.3f}),")
    return {"n_atlas": len(keep), "n_stats": len(stats), "ranges": ranges}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--print", dest="show", action="store_true")
    args = ap.parse_args(argv)
    build(args.out, show=args.show)


if __name__ == "__main__":
    main()
