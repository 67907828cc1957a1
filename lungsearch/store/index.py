"""CaseIndex: the ranking deployment's in-memory search index.

Milvus (:class:`lungsearch.store.MilvusStore`) is the system of record; this index is what the
ranking deployment searches, rebuilt from Milvus on start (:meth:`CaseIndex.from_store`). It holds,
per case, in contiguous growable arrays:

- the embedding, L2-normalised, as float16 (cosine = dot product; 256 B at 128-d),
- the binary code as packed little-endian uint64 words (8 B at 64 bits),
- filter columns: modality and view as uint8 codes, labels as a bitmask over the label vocabulary,
- the case key (the row -> key array; a dict maps key -> row for upserts and deletes).

Search (all exact, filters applied before top-k):

- code (+ embedding): the ``candidates`` nearest codes by Hamming distance, then re-ranked by cosine
  on the float16 embeddings (paper 3's LSH + cosine, paper 5's Hamming ranking);
- embedding only: exact cosine top-k over all embeddings.

Concurrency: one writer, any number of readers. Writers serialise on a lock and publish a new
immutable snapshot (:class:`_State`) by one attribute assignment; a reader takes the current
snapshot and never sees a half-written row, because rows ``[:n]`` of a published snapshot are
never modified: appends go past ``n``, an upsert of an existing key tombstones the old row (on a
copy of the ``alive`` column) and appends a new one, growth and compaction build new arrays.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lungsearch.errors import InvalidRequestError
from lungsearch.store import _kernels
from lungsearch.store.filters import SearchFilter
from lungsearch.store.types import Hit, StoredCase, UpsertResult, validate_case_key

if TYPE_CHECKING:
    from lungsearch.store.milvus import MilvusStore

__all__ = ["CaseIndex", "OVERFETCH_MAX"]

#: Tombstoned rows tolerated before compaction. Up to this many, an unfiltered search asks the
#: kernel for ``k + dead`` rows and drops the dead ones (no per-row mask test in the hot loop).
OVERFETCH_MAX = 256
_MIN_CAPACITY = 1024
_GROWTH = 1.5
_MAX_VOCAB = 255


@dataclass(eq=False)
class _State:
    """One published snapshot of the index. Rows ``[:n]`` are immutable once published."""

    n: int
    emb: np.ndarray  # float16 [cap, D], rows L2-normalised
    codes: np.ndarray  # uint64 [cap, W] (W = 0 when the index has no codes)
    modality: np.ndarray  # uint8 [cap]
    view: np.ndarray  # uint8 [cap]
    labels: np.ndarray  # uint64 [cap, LW]
    alive: np.ndarray  # bool [cap]
    keys: np.ndarray  # object [cap]
    n_dead: int = 0
    _scanner: object = field(default=None, repr=False)

    @property
    def capacity(self) -> int:
        return self.emb.shape[0]

    def scanner(self, use_faiss: bool) -> _kernels.FloatScanner:
        # Built lazily, once per snapshot (a race builds it twice, harmlessly).
        sc = self._scanner
        if sc is None or sc.n != self.n:
            sc = _kernels.FloatScanner(self.emb, self.n, use_faiss=use_faiss)
            self._scanner = sc
        return sc


class CaseIndex:
    """In-memory case index: Hamming candidates + cosine re-rank, or exact cosine top-k.

    Args:
        embedding_dim: float embedding dimension D.
        code_bits: binary code length (a multiple of 8; 0 = no codes).
        backend: "faiss" (FAISS scan kernels over this index's own arrays), "numpy", or "auto"
            (FAISS when importable).
        default_candidates: Hamming candidates re-ranked by cosine when ``search`` gets 0.

    Example:
        >>> idx = CaseIndex(embedding_dim=4, code_bits=8)
        >>> idx.upsert([StoredCase("a1", "cxr", "PA", ["Nodule"], "", np.array([1, 0, 0, 0], np.float32), b"\\x0f")])
        UpsertResult(inserted=1, updated=0)
        >>> idx.search(np.array([1, 0, 0, 0], np.float32), b"\\x0f", top_k=1)[0].key
        'a1'
    """

    def __init__(
        self, embedding_dim: int, code_bits: int = 0, *, backend: str = "auto", default_candidates: int = 100
    ) -> None:
        if embedding_dim <= 0 or code_bits < 0 or code_bits % 8:
            raise InvalidRequestError(
                "embedding_dim must be > 0 and code_bits a non-negative multiple of 8", code="bad_dimensions"
            )
        if backend not in ("auto", "faiss", "numpy"):
            raise InvalidRequestError(
                f"unknown CaseIndex backend {backend!r}; use auto, faiss or numpy", code="bad_backend"
            )
        if backend == "faiss" and not _kernels.have_faiss():
            raise InvalidRequestError("backend 'faiss' requested but faiss-cpu is not installed", code="bad_backend")
        self.embedding_dim = int(embedding_dim)
        self.code_bits = int(code_bits)
        self.code_bytes = self.code_bits // 8
        self.code_words = -(-self.code_bits // 64)
        self.backend = (
            "faiss" if backend == "auto" and _kernels.have_faiss() else ("numpy" if backend == "auto" else backend)
        )
        self.default_candidates = int(default_candidates)
        self._use_faiss = self.backend == "faiss"
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        # Vocabularies: append-only, so a code or bit never changes meaning for older snapshots.
        self._modalities: dict[str, int] = {"": 0}
        self._views: dict[str, int] = {"": 0}
        self._label_bits: dict[str, int] = {}
        self._label_names: list[str] = []
        self._state = self._empty_state(_MIN_CAPACITY, 1)
        #: Write calls applied (``add_arrays``/``upsert`` with rows, ``delete`` with keys): lets a
        #: snapshot keeper tell whether every store write has reached this index.
        self.mutations = 0
        #: The SnapshotKeeper of an index built by lungsearch.store.snapshot.index_from_store.
        self.snapshot_keeper = None

    # --- construction ----------------------------------------------------------------------------

    def _empty_state(self, capacity: int, label_words: int) -> _State:
        return _State(
            n=0,
            emb=np.zeros((capacity, self.embedding_dim), dtype=np.float16),
            codes=np.zeros((capacity, self.code_words), dtype=np.uint64),
            modality=np.zeros(capacity, dtype=np.uint8),
            view=np.zeros(capacity, dtype=np.uint8),
            labels=np.zeros((capacity, label_words), dtype=np.uint64),
            alive=np.zeros(capacity, dtype=bool),
            keys=np.empty(capacity, dtype=object),
        )

    @classmethod
    def from_store(
        cls,
        store: "MilvusStore",
        profile: str,
        version: str,
        *,
        backend: str = "auto",
        batch_rows: int | None = None,
        default_candidates: int = 100,
    ) -> "CaseIndex":
        """Rebuild the index from a Milvus collection (the ranking deployment calls this on start).

        Rows written to the collection while this runs may be missed: call it before accepting
        writes (the ranking deployment is the collection's only writer).

        Raises:
            NotFoundError: no collection for ``profile@version``.
            StoreUnavailableError: Milvus failed.
        """
        info = store.collection_info(profile, version)
        idx = cls(info.embedding_dim, info.code_bits, backend=backend, default_candidates=default_candidates)
        idx.reserve(store.count(profile, version))
        for batch in store.iter_batches(profile, version, batch_rows=batch_rows):
            idx.add_arrays(
                batch.keys,
                batch.embeddings,
                batch.codes if info.code_bits else None,
                modalities=batch.modalities,
                views=batch.views,
                labels=batch.labels,
            )
        return idx

    def reserve(self, capacity: int) -> None:
        """Grow the arrays to hold ``capacity`` rows (avoids re-allocation during a bulk build)."""
        with self._lock:
            st = self._state
            if capacity > st.capacity:
                self._state = self._regrow(st, capacity, st.labels.shape[1])

    def _regrow(self, st: _State, capacity: int, label_words: int) -> _State:
        new = self._empty_state(capacity, label_words)
        n = st.n
        new.emb[:n] = st.emb[:n]
        new.codes[:n] = st.codes[:n]
        new.modality[:n] = st.modality[:n]
        new.view[:n] = st.view[:n]
        new.labels[:n, : st.labels.shape[1]] = st.labels[:n]
        new.alive[:n] = st.alive[:n]
        new.keys[:n] = st.keys[:n]
        new.n, new.n_dead = n, st.n_dead
        return new

    # --- vocabularies ----------------------------------------------------------------------------

    @staticmethod
    def _code_of(vocab: dict[str, int], value: str, what: str) -> int:
        c = vocab.get(value)
        if c is None:
            if len(vocab) > _MAX_VOCAB:
                raise InvalidRequestError(
                    f"more than {_MAX_VOCAB} distinct {what} values", code="vocabulary_full", field=what
                )
            c = vocab[value] = len(vocab)
        return c

    def _encode_column(self, vocab: dict[str, int], values: Sequence[str] | None, m: int, what: str) -> np.ndarray:
        if values is None:
            return np.zeros(m, dtype=np.uint8)
        if len(values) != m:
            raise InvalidRequestError(f"{what} column has the wrong length", code="bad_column", field=what)
        for v in set(values):  # register new values first (few distinct), then one C-level lookup pass
            if not isinstance(v, str):
                raise InvalidRequestError(f"{what} values must be strings", code="bad_column", field=what)
            self._code_of(vocab, v, what)
        return np.fromiter(map(vocab.__getitem__, values), dtype=np.uint8, count=m)

    def _label_mask_rows(self, labels: Sequence[Sequence[str]] | None, m: int) -> np.ndarray:
        """uint64 [m, LW] bitmasks; grows the label vocabulary (LW follows it)."""
        if labels is None:
            return np.zeros((m, max(1, -(-len(self._label_bits) // 64))), dtype=np.uint64)
        if len(labels) != m:
            raise InvalidRequestError("labels column has the wrong length", code="bad_column", field="labels")
        sets: dict[tuple[str, ...], int] = {}
        which = np.empty(m, dtype=np.int64)
        for i, labs in enumerate(labels):  # cases share few distinct label sets: encode each set once
            t = tuple(labs)
            j = sets.get(t)
            if j is None:
                j = sets[t] = len(sets)
            which[i] = j
        bit_lists = []
        for t in sets:
            bits = []
            for label in t:
                b = self._label_bits.get(label)
                if b is None:
                    b = self._label_bits[label] = len(self._label_names)
                    self._label_names.append(label)
                bits.append(b)
            bit_lists.append(bits)
        words = max(1, -(-len(self._label_names) // 64))
        table = np.zeros((len(sets), words), dtype=np.uint64)
        for j, bits in enumerate(bit_lists):
            for b in bits:
                table[j, b >> 6] |= np.uint64(1) << np.uint64(b & 63)
        return table[which]

    # --- writes ----------------------------------------------------------------------------------

    def upsert(self, records: Iterable[StoredCase]) -> UpsertResult:
        """Insert or replace cases by key (a key repeated in the call keeps its last record).

        Raises:
            InvalidRequestError: a record has another embedding dimension or code length.
        """
        recs = [r.validate(embedding_dim=self.embedding_dim, code_bits=self.code_bits) for r in records]
        if not recs:
            return UpsertResult(0, 0)
        emb = np.stack([r.embedding for r in recs])
        codes = (
            np.frombuffer(b"".join(r.code for r in recs), dtype=np.uint8).reshape(len(recs), self.code_bytes)
            if self.code_bits
            else None
        )
        return self.add_arrays(
            [r.case_key for r in recs],
            emb,
            codes,
            modalities=[r.modality for r in recs],
            views=[r.view for r in recs],
            labels=[r.labels for r in recs],
            _validated=True,
        )

    def add_arrays(
        self,
        keys: Sequence[str],
        embeddings: np.ndarray,
        codes: np.ndarray | None = None,
        *,
        modalities: Sequence[str] | None = None,
        views: Sequence[str] | None = None,
        labels: Sequence[Sequence[str]] | None = None,
        _validated: bool = False,
    ) -> UpsertResult:
        """Bulk upsert from columns (what :meth:`from_store` and benchmarks use).

        Args:
            keys: case keys [m].
            embeddings: float [m, D] (normalised here).
            codes: uint8 [m, code_bits // 8] packed codes (required when the index has codes).
            modalities, views: strings [m] (None = "").
            labels: label lists [m] (None = no labels).

        Returns:
            How many keys were new and how many replaced a row.
        """
        keys = list(keys)
        m = len(keys)
        if m == 0:
            return UpsertResult(0, 0)
        if not _validated:
            for k in keys:
                validate_case_key(k)
        emb = np.asarray(embeddings, dtype=np.float32).reshape(m, -1)
        if emb.shape[1] != self.embedding_dim:
            raise InvalidRequestError(
                f"embeddings have {emb.shape[1]} dimensions, the index expects {self.embedding_dim}",
                code="embedding_dim_mismatch",
                field="embedding",
            )
        if not np.all(np.isfinite(emb)):
            raise InvalidRequestError("embeddings must be finite", code="bad_embedding", field="embedding")
        if self.code_bits:
            if codes is None:
                raise InvalidRequestError("this index needs a code per case", code="code_bits_mismatch", field="code")
            c8 = np.asarray(codes, dtype=np.uint8).reshape(m, -1)
            if c8.shape[1] != self.code_bytes:
                raise InvalidRequestError(
                    f"codes have {c8.shape[1] * 8} bits, the index expects {self.code_bits}",
                    code="code_bits_mismatch",
                    field="code",
                )
            padded = np.zeros((m, self.code_words * 8), dtype=np.uint8)
            padded[:, : self.code_bytes] = c8
            words = padded.view("<u8").astype(np.uint64, copy=False)
        elif codes is not None and np.asarray(codes).size:
            raise InvalidRequestError("this index has no codes", code="code_bits_mismatch", field="code")
        # A key repeated within the call keeps its last occurrence.
        last = dict(zip(keys, range(m)))
        if len(last) != m:
            pick = np.fromiter(sorted(last.values()), dtype=np.int64, count=len(last))
            keys = [keys[i] for i in pick]
            emb = emb[pick]
            if self.code_bits:
                words = words[pick]
            modalities = None if modalities is None else [modalities[i] for i in pick]
            views = None if views is None else [views[i] for i in pick]
            labels = None if labels is None else [labels[i] for i in pick]
            m = len(keys)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb16 = (emb / np.where(norms > 0, norms, 1.0)).astype(np.float16)

        with self._lock:
            self.mutations += 1
            mod = self._encode_column(self._modalities, modalities, m, "modality")
            vw = self._encode_column(self._views, views, m, "view")
            lab = self._label_mask_rows(labels, m)
            st = self._state
            old_rows = [r for r in (self._rows.get(k) for k in keys) if r is not None]
            need = st.n + m
            lw = max(st.labels.shape[1], lab.shape[1])
            if need > st.capacity or lw > st.labels.shape[1]:
                cap = st.capacity if need <= st.capacity else max(need, int(st.capacity * _GROWTH), _MIN_CAPACITY)
                st = self._regrow(st, cap, lw)
            n0 = st.n
            sl = slice(n0, n0 + m)
            # Rows past n are invisible to published snapshots: safe to write in place.
            st.emb[sl] = emb16
            if self.code_bits:
                st.codes[sl] = words
            st.modality[sl] = mod
            st.view[sl] = vw
            st.labels[sl, : lab.shape[1]] = lab
            st.labels[sl, lab.shape[1] :] = 0
            st.keys[sl] = keys
            alive = st.alive
            if old_rows:
                alive = alive.copy()  # copy-on-write: published snapshots keep their alive column
                alive[np.asarray(old_rows, dtype=np.int64)] = False
            alive[sl] = True
            new = _State(
                n=n0 + m,
                emb=st.emb,
                codes=st.codes,
                modality=st.modality,
                view=st.view,
                labels=st.labels,
                alive=alive,
                keys=st.keys,
                n_dead=st.n_dead + len(old_rows),
            )
            self._rows.update(zip(keys, range(n0, n0 + m)))
            self._publish(new)
        return UpsertResult(inserted=m - len(old_rows), updated=len(old_rows))

    def delete(self, keys: str | Iterable[str]) -> int:
        """Remove cases by key; returns how many existed."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        if not keys:
            return 0
        with self._lock:
            self.mutations += 1
            rows = [r for r in (self._rows.pop(k, None) for k in keys) if r is not None]
            if not rows:
                return 0
            st = self._state
            alive = st.alive.copy()
            alive[np.asarray(rows, dtype=np.int64)] = False
            self._publish(
                _State(
                    n=st.n,
                    emb=st.emb,
                    codes=st.codes,
                    modality=st.modality,
                    view=st.view,
                    labels=st.labels,
                    alive=alive,
                    keys=st.keys,
                    n_dead=st.n_dead + len(rows),
                )
            )
        return len(rows)

    def _publish(self, st: _State) -> None:
        # Caller holds the lock. Compact first so no published snapshot has more than OVERFETCH_MAX dead rows.
        if st.n_dead > OVERFETCH_MAX:
            st = self._compacted(st)
        self._state = st

    def compact(self) -> None:
        """Drop tombstoned rows now (also done automatically past OVERFETCH_MAX of them)."""
        with self._lock:
            if self._state.n_dead:
                self._state = self._compacted(self._state)

    def _compacted(self, st: _State) -> _State:
        keep = np.flatnonzero(st.alive[: st.n])
        m = keep.size
        new = self._empty_state(max(_MIN_CAPACITY, int(m * _GROWTH)), st.labels.shape[1])
        new.emb[:m] = st.emb[keep]
        new.codes[:m] = st.codes[keep]
        new.modality[:m] = st.modality[keep]
        new.view[:m] = st.view[keep]
        new.labels[:m] = st.labels[keep]
        new.alive[:m] = True
        new.keys[:m] = st.keys[keep]
        new.n = m
        self._rows = dict(zip(new.keys[:m].tolist(), range(m)))
        return new

    # --- snapshot parts (lungsearch.store.snapshot does the file format) ----------------------------

    def export_parts(self) -> dict:
        """The live rows as plain arrays plus the vocabularies: what a snapshot stores.

        Taken from one published state, so it is consistent without blocking writers; the
        vocabularies are copied under the write lock (they only grow, and every code a row of the
        state uses is already in them).
        """
        with self._lock:
            st = self._state
            vocab = {
                "modalities": sorted(self._modalities, key=self._modalities.__getitem__),
                "views": sorted(self._views, key=self._views.__getitem__),
                "label_names": list(self._label_names),
                "mutations": self.mutations,
            }
        n = st.n
        keep = np.flatnonzero(st.alive[:n]) if st.n_dead else None

        def rows(a: np.ndarray) -> np.ndarray:
            return a[:n] if keep is None else a[keep]

        keys = rows(st.keys).tolist()
        return {
            **vocab,
            "embedding_dim": self.embedding_dim,
            "code_bits": self.code_bits,
            "emb": rows(st.emb),
            "codes": rows(st.codes),
            "modality": rows(st.modality),
            "view": rows(st.view),
            "labels": rows(st.labels),
            "keys": keys,
        }

    @classmethod
    def from_parts(cls, parts: dict, *, backend: str = "auto", default_candidates: int = 100) -> "CaseIndex":
        """An index holding exactly what :meth:`export_parts` returned (no re-encoding, same row order).

        Raises:
            InvalidRequestError: the parts are inconsistent (sizes, dimensions).
        """
        idx = cls(
            int(parts["embedding_dim"]), int(parts["code_bits"]), backend=backend, default_candidates=default_candidates
        )
        keys = list(parts["keys"])
        m = len(keys)
        emb, codes = parts["emb"], parts["codes"]
        labels = parts["labels"]
        if (
            emb.shape != (m, idx.embedding_dim)
            or codes.shape != (m, idx.code_words)
            or parts["modality"].shape != (m,)
            or parts["view"].shape != (m,)
            or labels.ndim != 2
            or labels.shape[0] != m
            or len(set(keys)) != m
        ):
            raise InvalidRequestError("snapshot parts are inconsistent", code="bad_snapshot")
        idx._modalities = {v: i for i, v in enumerate(parts["modalities"])}
        idx._views = {v: i for i, v in enumerate(parts["views"])}
        idx._label_names = list(parts["label_names"])
        idx._label_bits = {name: b for b, name in enumerate(idx._label_names)}
        lw = max(1, labels.shape[1], -(-len(idx._label_names) // 64))
        st = idx._empty_state(
            max(_MIN_CAPACITY, int(m * 1.05) + 1), lw
        )  # a little room: the first ingests do not regrow
        st.emb[:m] = emb
        st.codes[:m] = codes
        st.modality[:m] = parts["modality"]
        st.view[:m] = parts["view"]
        st.labels[:m, : labels.shape[1]] = labels
        st.alive[:m] = True
        st.keys[:m] = keys
        st.n = m
        idx._rows = dict(zip(keys, range(m)))
        idx._state = st
        return idx

    # --- reads -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        st = self._state
        return st.n - st.n_dead

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def keys(self) -> list[str]:
        """Live case keys (a copy)."""
        st = self._state
        return st.keys[: st.n][st.alive[: st.n]].tolist()

    def case_meta(self, key: str) -> tuple[str, str, list[str]]:
        """(modality, view, labels) of a live case, from the index's own columns (no Milvus call).

        Labels come back in vocabulary order (first seen first), not in the order they were stored.

        Raises:
            KeyError: unknown key.
        """
        st = self._state
        row = self._rows[key]
        mods = {v: k for k, v in self._modalities.items()}
        views = {v: k for k, v in self._views.items()}
        words = st.labels[row]
        labels = [
            name
            for b, name in enumerate(self._label_names)
            if (b >> 6) < words.size and int(words[b >> 6]) >> (b & 63) & 1
        ]
        return mods[int(st.modality[row])], views[int(st.view[row])], labels

    def _label_words(self, names: Sequence[str], lw: int) -> tuple[np.ndarray, bool]:
        """Bitmask of ``names`` over ``lw`` words, and whether every name is known to this snapshot."""
        mask = np.zeros(lw, dtype=np.uint64)
        all_known = True
        for name in names:
            b = self._label_bits.get(name)
            if b is None or (b >> 6) >= lw:
                all_known = False
                continue
            mask[b >> 6] |= np.uint64(1) << np.uint64(b & 63)
        return mask, all_known

    def _filter_mask(self, st: _State, flt: SearchFilter) -> np.ndarray:
        n = st.n
        mask = st.alive[:n].copy()
        if flt.modality:
            code = self._modalities.get(flt.modality)
            if code is None:
                return np.zeros(n, dtype=bool)
            mask &= st.modality[:n] == code
        if flt.view:
            code = self._views.get(flt.view)
            if code is None:
                return np.zeros(n, dtype=bool)
            mask &= st.view[:n] == code
        lw = st.labels.shape[1]
        lab = st.labels[:n]
        if flt.labels_any:
            want, _ = self._label_words(flt.labels_any, lw)
            mask &= np.any(lab & want, axis=1)
        if flt.labels_all:
            want, known = self._label_words(flt.labels_all, lw)
            if not known:
                return np.zeros(n, dtype=bool)
            mask &= np.all((lab & want) == want, axis=1)
        if flt.labels_none:
            want, _ = self._label_words(flt.labels_none, lw)
            mask &= ~np.any(lab & want, axis=1)
        return mask

    def _query_code(self, code) -> np.ndarray:
        raw = bytes(code) if not isinstance(code, np.ndarray) else np.asarray(code, dtype=np.uint8).tobytes()
        if len(raw) != self.code_bytes:
            raise InvalidRequestError(
                f"query code has {len(raw) * 8} bits, the index expects {self.code_bits}",
                code="code_bits_mismatch",
                field="code",
            )
        padded = raw + b"\x00" * (self.code_words * 8 - len(raw))
        return np.frombuffer(padded, dtype="<u8").astype(np.uint64)

    def _query_embedding(self, embedding) -> np.ndarray:
        q = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if q.size != self.embedding_dim:
            raise InvalidRequestError(
                f"query embedding has {q.size} dimensions, the index expects {self.embedding_dim}",
                code="embedding_dim_mismatch",
                field="embedding",
            )
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:
            raise InvalidRequestError(
                "query embedding must be finite and non-zero", code="bad_embedding", field="embedding"
            )
        return q / norm

    def search(
        self, embedding=None, code=None, top_k: int = 10, filter: SearchFilter | None = None, candidates: int = 0
    ) -> list[Hit]:
        """Top-k cases for a query embedding and/or code, filters applied before top-k.

        Args:
            embedding: float [D] query (cosine), or None.
            code: packed query code (``code_bits // 8`` bytes), or None. Used only by an index with codes.
            top_k: results wanted.
            filter: metadata filter (None = all cases).
            candidates: Hamming candidates re-ranked by cosine when both code and embedding are given
                (0 = ``default_candidates``; never fewer than ``top_k``).

        Returns:
            ``[(key, score, hamming)]`` best first: score is the cosine when an embedding was given
            (re-ranked candidates; ties by Hamming distance), else ``1 - hamming / code_bits``;
            hamming is -1 when codes were not used.

        Raises:
            InvalidRequestError: no query, a wrong-sized query, or ``top_k < 1``.
        """
        if top_k < 1:
            raise InvalidRequestError("top_k must be >= 1", code="bad_top_k", field="top_k")
        use_code = code is not None and len(code) > 0
        if use_code and not self.code_bits:
            raise InvalidRequestError(
                "this index has no codes; search by embedding", code="code_bits_mismatch", field="code"
            )
        if embedding is None and not use_code:
            raise InvalidRequestError("search needs an embedding or a code", code="empty_query")
        q = self._query_embedding(embedding) if embedding is not None else None
        qc = self._query_code(code) if use_code else None
        st = self._state  # one snapshot for the whole search
        if st.n == 0:
            return []
        mask = None
        extra = 0
        if filter is not None and not filter.is_empty:
            mask = self._filter_mask(st, filter)
        elif st.n_dead:
            if st.n_dead <= OVERFETCH_MAX:
                extra = st.n_dead  # ask for more, drop the dead ones below
            else:  # pragma: no cover - _publish compacts before this can happen
                mask = st.alive[: st.n]

        if qc is not None:
            want = max(top_k, candidates or self.default_candidates) if q is not None else top_k
            dist, rows = _kernels.hamming_topk(st.codes[: st.n], qc, want + extra, mask, use_faiss=self._use_faiss)
            if extra:
                ok = st.alive[rows]
                dist, rows = dist[ok], rows[ok]
            dist, rows = dist[:want], rows[:want]
            if q is None:
                dist, rows = dist[:top_k], rows[:top_k]
                scores = 1.0 - dist.astype(np.float64) / self.code_bits
                return [Hit(k, float(s), int(d)) for k, s, d in zip(st.keys[rows].tolist(), scores, dist)]
            sims = st.emb[rows].astype(np.float32) @ q
            order = np.lexsort((rows, dist, -sims))[:top_k]
            return [
                Hit(k, float(s), int(d)) for k, s, d in zip(st.keys[rows[order]].tolist(), sims[order], dist[order])
            ]

        scores, rows = st.scanner(self._use_faiss).topk(q, top_k + extra, mask)
        if extra:
            ok = st.alive[rows]
            scores, rows = scores[ok], rows[ok]
        scores, rows = scores[:top_k], rows[:top_k]
        return [Hit(k, float(s), -1) for k, s in zip(st.keys[rows].tolist(), scores)]

    # --- accounting ------------------------------------------------------------------------------

    def memory_bytes(self) -> dict[str, int | float]:
        """RAM held by the index, by part, plus per-case figures.

        ``allocated`` counts array capacity (growth slack included); ``per_case`` divides it by the
        live cases. Key strings are sized from a sample of up to 1000 keys.
        """
        st = self._state
        n_live = max(1, st.n - st.n_dead)
        arrays = {
            "embeddings": st.emb.nbytes,
            "codes": st.codes.nbytes,
            "filters": st.modality.nbytes + st.view.nbytes + st.labels.nbytes + st.alive.nbytes,
            "key_array": st.keys.nbytes,
        }
        sample = st.keys[: min(st.n, 1000)]
        avg_key = (sum(sys.getsizeof(k) for k in sample) / len(sample)) if len(sample) else 0.0
        keys_bytes = int(avg_key * st.n)
        map_bytes = sys.getsizeof(self._rows)
        total = sum(arrays.values()) + keys_bytes + map_bytes
        used_rows = st.n / max(1, st.capacity)
        return {
            **arrays,
            "key_strings": keys_bytes,
            "key_map": map_bytes,
            "allocated": total,
            "used": int(sum(arrays.values()) * used_rows) + keys_bytes + map_bytes,
            "per_case": total / n_live,
            "per_case_used": (sum(arrays.values()) * used_rows + keys_bytes + map_bytes) / n_live,
            "cases": st.n - st.n_dead,
            "capacity": st.capacity,
        }

    def stats(self) -> dict[str, int | float | str]:
        """Size, backend and memory figures (for the ranking deployment's Stats RPC and gauges)."""
        mem = self.memory_bytes()
        st = self._state
        return {
            "num_cases": st.n - st.n_dead,
            "dead_rows": st.n_dead,
            "capacity": st.capacity,
            "backend": self.backend,
            "embedding_dim": self.embedding_dim,
            "code_bits": self.code_bits,
            "index_bytes": int(mem["allocated"]),
            "bytes_per_case": float(mem["per_case"]),
            "labels": len(self._label_names),
        }
