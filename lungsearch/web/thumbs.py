"""Small PHI-free thumbnails of stored cases, keyed by profile and case key.

The vector store keeps no pixels (``lungsearch.store.types.StoredCase``), yet ``ExplainMatch`` must
draw a Grad-CAM heat map on a *retrieved* case and the page must show it. So at ingest (the
Gateway) and index time (``build_index``, through :func:`record_thumbnail`) the **preprocessed**
model input is kept: the pixels the model saw, after windowing (the lung window for CT), resizing
and normalisation, cut to at most :data:`MAX_SIDE` px and :data:`MAX_SLICES` slices, quantised to
8 bits. Only pixels and the case key (a keyed hash) are stored: no header, no report, no identifier.

Storage is one SQLite file (WAL, so the Gateway and index-building processes can write it at once);
rows are zlib-compressed uint8 volumes. Deleting a case deletes its thumbnail.

Example:
    >>> import numpy as np, tempfile, os
    >>> store = ThumbnailStore(os.path.join(tempfile.mkdtemp(), "t.sqlite"))
    >>> store.put("cxr-hash", "ab12", np.zeros((1, 1, 64, 64), np.float32))
    >>> store.get("cxr-hash", "ab12").pixels.shape
    (1, 64, 64)
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungsearch.errors import InvalidRequestError

__all__ = [
    "MAX_SIDE",
    "MAX_SLICES",
    "Thumbnail",
    "ThumbnailStore",
    "quantize",
    "dequantize",
    "slice_png",
    "default_path",
    "record_thumbnail",
    "pick_slices",
]

#: Longest side of a stored slice (px).
MAX_SIDE = 128
#: Most slices kept per case (evenly spaced; the middle slice, which Grad-CAM explains, is always kept).
MAX_SLICES = 32

_SCHEMA = """CREATE TABLE IF NOT EXISTS thumbs (
  profile TEXT NOT NULL, case_key TEXT NOT NULL, model_version TEXT NOT NULL,
  slices INTEGER NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL, total_slices INTEGER NOT NULL,
  middle INTEGER NOT NULL,
  data BLOB NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (profile, case_key))"""


def quantize(pixels: np.ndarray) -> np.ndarray:
    """Preprocessed model input (``[S, 1, H, W]`` or ``[S, H, W]``, values in [-1, 1]) -> uint8 [S, H, W]."""
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.size == 0:
        raise InvalidRequestError(
            f"thumbnail pixels must be [S, (1,) H, W], got {tuple(np.shape(pixels))}", code="thumbnail_shape"
        )
    u = (np.clip(np.nan_to_num(x), -1.0, 1.0) + 1.0) * 127.5 + 0.5
    return u.astype(np.uint8)


def dequantize(u8: np.ndarray, size: int | None = None) -> np.ndarray:
    """uint8 [S, H, W] -> float32 ``[S, 1, size, size]`` model input in [-1, 1] (bilinear resize when
    the stored side differs from ``size``)."""
    x = np.asarray(u8, dtype=np.float32) / 127.5 - 1.0
    if size and x.shape[1:] != (size, size):
        from PIL import Image

        x = np.stack([np.asarray(Image.fromarray(s, mode="F").resize((size, size), Image.BILINEAR)) for s in x])
    return np.ascontiguousarray(x[:, None], dtype=np.float32)


def pick_slices(n: int, max_slices: int = MAX_SLICES) -> list[int]:
    """Indices of at most ``max_slices`` evenly spaced slices of ``n``, the middle one (``n // 2``) included."""
    if n <= max_slices:
        return list(range(n))
    idx = set(np.linspace(0, n - 1, max_slices - 1).round().astype(int).tolist())
    idx.add(n // 2)
    return sorted(idx)


def _shrink(u8: np.ndarray, max_side: int) -> np.ndarray:
    s, h, w = u8.shape
    if max(h, w) <= max_side:
        return u8
    from PIL import Image

    scale = max_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return np.stack([np.asarray(Image.fromarray(sl).resize((nw, nh), Image.BILINEAR)) for sl in u8])


def slice_png(u8_slice: np.ndarray) -> bytes:
    """An 8-bit gray PNG of one stored slice."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(u8_slice, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Thumbnail:
    """A stored thumbnail: ``pixels`` uint8 [S, H, W]; ``middle`` is the index (in ``pixels``) of the
    study's middle slice; ``total_slices`` the study's slice count before sampling."""

    pixels: np.ndarray
    model_version: str
    total_slices: int
    middle: int = 0

    def model_input(self, size: int) -> np.ndarray:
        """The middle slice as float32 ``[1, 1, size, size]`` (what Grad-CAM explains)."""
        return dequantize(self.pixels[self.middle : self.middle + 1], size)

    def pngs(self) -> list[bytes]:
        return [slice_png(s) for s in self.pixels]


def default_path(hmac_key_file: str | os.PathLike) -> Path:
    """Where the server and ``build_index`` keep thumbnails when nothing else is configured: beside the
    server's HMAC key (both belong to one deployment's data directory)."""
    return Path(hmac_key_file).expanduser().resolve().parent / "thumbnails.sqlite"


class ThumbnailStore:
    """SQLite-backed thumbnails; safe to share between threads (one connection per thread) and
    processes (WAL journal, busy timeout).

    Args:
        path: the SQLite file (created with its folder).
        max_side, max_slices: size caps applied on :meth:`put`.
    """

    def __init__(self, path: str | os.PathLike, *, max_side: int = MAX_SIDE, max_slices: int = MAX_SLICES) -> None:
        self.path = Path(path)
        self.max_side, self.max_slices = int(max_side), int(max_slices)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def put(self, profile: str, case_key: str, pixels: np.ndarray, *, model_version: str = "") -> None:
        """Store (or replace) the thumbnail of a case from its preprocessed input ``[S, 1, H, W]``."""
        u8 = quantize(pixels)
        total = u8.shape[0]
        kept = pick_slices(total, self.max_slices)
        u8 = _shrink(u8[kept], self.max_side)
        s, h, w = u8.shape
        middle = kept.index(total // 2)
        blob = zlib.compress(np.ascontiguousarray(u8).tobytes(), 6)
        with self._conn() as c:
            c.execute(
                "INSERT OR REPLACE INTO thumbs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (profile, case_key, model_version, s, h, w, total, middle, blob, time.time()),
            )

    def get(self, profile: str, case_key: str) -> Thumbnail | None:
        row = (
            self._conn()
            .execute(
                "SELECT model_version, slices, height, width, total_slices, middle, data FROM thumbs "
                "WHERE profile=? AND case_key=?",
                (profile, case_key),
            )
            .fetchone()
        )
        if row is None:
            return None
        version, s, h, w, total, middle, blob = row
        px = np.frombuffer(zlib.decompress(blob), dtype=np.uint8).reshape(s, h, w)
        return Thumbnail(pixels=px, model_version=version, total_slices=int(total), middle=int(middle))

    def delete(self, profile: str, case_key: str) -> bool:
        with self._conn() as c:
            return c.execute("DELETE FROM thumbs WHERE profile=? AND case_key=?", (profile, case_key)).rowcount > 0

    def count(self, profile: str | None = None) -> int:
        q, a = (
            ("SELECT COUNT(*) FROM thumbs WHERE profile=?", (profile,))
            if profile
            else ("SELECT COUNT(*) FROM thumbs", ())
        )
        return int(self._conn().execute(q, a).fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_STORES: dict[str, ThumbnailStore] = {}
_STORES_LOCK = threading.Lock()


def record_thumbnail(
    path: str | os.PathLike, profile: str, case_key: str, pixels: np.ndarray, *, model_version: str = ""
) -> None:
    """The hook ``build_index`` calls once per indexed case with the preprocessed pixels it already
    has (``lungsearch.data.preprocess_study`` output, ``[S, 1, H, W]``), so retrieved dataset cases
    get heat maps and images on the page too. One store per path per process."""
    key = str(Path(path).expanduser().resolve())
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = ThumbnailStore(key)
    store.put(profile, case_key, pixels, model_version=model_version)
