"""Real lung outlines: the ~500 lung segmentation masks torchxrayvision bundles
(``semantic_masks_v7labs_lungs.zip``), filtered to frontal views with two lungs and cropped to
the lungs' bounding box at a canonical :data:`CANON` × :data:`CANON` resolution."""

from __future__ import annotations

import functools
import io
import os
import zipfile

import numpy as np

__all__ = ["CANON", "ShapeBank", "load_shape_bank"]

CANON = 128


class ShapeBank:
    """Bit-packed canonical lung masks (cheap to send to worker processes).

    ``masks(i)`` -> bool [CANON, CANON], lungs filling the frame; ``aspect[i]`` = the original
    lung field's height / width; ``names[i]`` = the source file in the zip.
    """

    def __init__(self, packed: np.ndarray, aspect: np.ndarray, names: tuple[str, ...]) -> None:
        self.packed = packed
        self.aspect = aspect
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def mask(self, i: int) -> np.ndarray:
        return np.unpackbits(self.packed[i])[: CANON * CANON].reshape(CANON, CANON).astype(bool)

    def __reduce__(self):
        return (ShapeBank, (self.packed, self.aspect, self.names))


def _zip_path() -> str:
    from lungsearch.data.phantoms._txv import txv_data_file

    return txv_data_file("semantic_masks_v7labs_lungs.zip")


def two_lung_mask(raw: bytes) -> np.ndarray | None:
    """A mask image (PNG/JPEG bytes) at <= 256 px with its two largest components kept, or None when
    it is not a frontal two-lung mask (lateral views, one lung, a tiny or lopsided second component,
    both components on one side). Shared by the shape bank and the lung-mask atlas builder."""
    from PIL import Image
    from scipy import ndimage as ndi

    im = Image.open(io.BytesIO(raw))
    im.draft("L", (256, 256))  # JPEG: decode at reduced scale (masks are up to 2000 px)
    im = im.convert("L")
    w, h = im.size
    s = 256 / max(w, h)
    im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    m = np.asarray(im) > 127
    lab, n = ndi.label(m)
    if n < 2:
        return None  # lateral views and masks without two lungs
    areas = ndi.sum_labels(m, lab, index=np.arange(1, n + 1))
    order = np.argsort(-areas)
    a1, a2 = areas[order[0]], areas[order[1]]
    if a2 < 0.3 * a1 or a1 < 500:
        return None
    c1 = ndi.center_of_mass(lab == order[0] + 1)[1]
    c2 = ndi.center_of_mass(lab == order[1] + 1)[1]
    if abs(c1 - c2) < 0.2 * m.shape[1]:
        return None
    return (lab == order[0] + 1) | (lab == order[1] + 1)


def _canonical(raw: bytes) -> tuple[np.ndarray, float] | None:
    from PIL import Image

    keep = two_lung_mask(raw)
    if keep is None:
        return None
    ys, xs = np.nonzero(keep)
    crop = keep[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    aspect = crop.shape[0] / crop.shape[1]
    if not 0.55 <= aspect <= 1.4:
        return None
    canon = np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize((CANON, CANON), Image.BILINEAR)) > 127
    return canon, float(aspect)


_CACHE_VERSION = "1"


def _cache_file(src: str) -> "os.PathLike | None":
    from pathlib import Path

    from lungsearch import constants

    try:
        st = os.stat(src)
    except OSError:
        return None
    return (
        Path(constants.DATA_DIR)
        / "cache"
        / f"lung_shapes-v{_CACHE_VERSION}-{CANON}-{st.st_size}-{int(st.st_mtime)}.npz"
    )


@functools.lru_cache(maxsize=1)
def load_shape_bank(path: str | None = None) -> ShapeBank:
    """Load, filter and canonicalise the bundled masks (~5-10 s), cached per process and, best
    effort, on disk under ``LUNGSEARCH_DATA_DIR/cache/`` (keyed by the zip's size and mtime)."""
    src = path or _zip_path()
    cache = _cache_file(src)
    if cache is not None and os.path.exists(cache):
        try:
            with np.load(cache, allow_pickle=False) as z:
                return ShapeBank(z["packed"], z["aspect"], tuple(str(n) for n in z["names"]))
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache is rebuilt below
    bank = _build_bank(src)
    if cache is not None:
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp.npz"
            np.savez(tmp, packed=bank.packed, aspect=bank.aspect, names=np.array(bank.names))
            os.replace(tmp, cache)
        except OSError:
            pass  # read-only data dir: the in-process cache still applies
    return bank


def _build_bank(src: str) -> ShapeBank:
    masks, aspects, names = [], [], []
    with zipfile.ZipFile(src) as zf:
        for name in sorted(zf.namelist()):
            if name.endswith("/"):
                continue
            try:
                res = _canonical(zf.read(name))
            except (OSError, ValueError, SyntaxError):
                continue  # an unreadable mask file is skipped, not fatal
            if res is None:
                continue
            masks.append(np.packbits(res[0].ravel()))
            aspects.append(res[1])
            names.append(os.path.basename(name))
    if not masks:
        from lungsearch.errors import ConfigError

        raise ConfigError("no usable lung masks in torchxrayvision's semantic_masks_v7labs_lungs.zip")
    return ShapeBank(np.stack(masks), np.asarray(aspects, dtype=np.float32), tuple(names))
