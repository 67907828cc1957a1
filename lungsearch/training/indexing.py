"""Build a model version's search index: Ray Data batch inference over a dataset (or a folder of
DICOM/PNG/JPEG) -> embeddings and codes + metadata -> the Milvus store.

Pipeline (streaming, so a large dataset never sits in memory at once)::

    records --map_batches(decode + preprocess [+ radiomics], CPU tasks)-->
            --map_batches(_Embedder, actors: the model loaded once per actor, GPU when asked)-->
            driver: StoredCase rows --MilvusStore.upsert (batches, flushed)--> final count check

The driver is the only writer, because an embedded milvus-lite file admits one process. Case keys
are keyed hashes of the dataset's case id (``deid.case_key(key, "dataset", source, case_id)``),
so re-running the job updates rows in place: the build is idempotent.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from lungsearch import constants
from lungsearch.errors import StoreUnavailableError
from lungsearch.inference import EXCERPT_CHARS  # the excerpt rule every path uses (re-exported)

if TYPE_CHECKING:
    from lungsearch.config import ProfileConfig
    from lungsearch.data.types import CaseRecord, Study

__all__ = ["IndexReport", "build_index", "record_case_key", "EXCERPT_CHARS"]

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    """Outcome of a build: counts and timings (no case identifiers)."""

    profile: str
    version: str
    collection: str
    cases: int
    inserted: int
    updated: int
    count_in_store: int
    seconds: float
    cases_per_s: float
    device: str

    @property
    def ok(self) -> bool:
        return self.count_in_store >= self.cases


def record_case_key(hmac_key: bytes, record: "CaseRecord", study: "Study") -> str:
    """The store key of a dataset case: the gateway's rule (:func:`lungsearch.data.deid.study_case_key`),
    so indexing a dataset and later ingesting one of its studies through the SDK gives one case.

    DICOM studies are keyed by their (keyed) study/series identifiers; other images by their bytes.
    ``load_study`` gives identifier-less studies a key from the record's case id, which an upload
    cannot know: only the identifiers read from the files themselves count here.
    """
    import dataclasses

    from lungsearch.data.deid import study_case_key

    from_files = dataclasses.replace(study, study_key=study.images[0].study_key)
    # a generator: the files are read again only when the key falls back to their bytes
    return study_case_key(hmac_key, from_files, image_bytes=(Path(p).read_bytes() for p in record.image_paths))


class _Decode:
    """Ray Data map: record index -> prepared case (``lungsearch.inference.prepare_case``) and metadata."""

    def __init__(self, cfg: "ProfileConfig", hmac_key: bytes | None) -> None:
        self.cfg, self.hmac_key = cfg, hmac_key

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from lungsearch.data import load_study
        from lungsearch.inference import prepare_case
        from lungsearch.training.cases import _obj, radiomics_extractor

        ex = radiomics_extractor(self.cfg)
        images, rads, views, n, keys = [], [], [], [], []
        for blob in batch["record"]:
            rec = pickle.loads(blob)
            study = load_study(rec, hmac_key=self.hmac_key)
            keys.append(record_case_key(self.hmac_key, rec, study))
            case = prepare_case(study, self.cfg, extractor=ex)
            images.append(case.pixels)
            n.append(case.num_slices)
            views.append(study.view or rec.view or "")
            rads.append(case.radiomics if case.radiomics is not None else np.zeros(0))
        return {
            "i": np.asarray(batch["i"]),
            "image": _obj(images),
            "radiomics": _obj(rads),
            "n_slices": np.asarray(n),
            "view": np.asarray(views, dtype=object),
            "key": np.asarray(keys, dtype=object),
            "text": batch["text"],
        }


class _Embedder:
    """Ray Data actor: the registered model, loaded once; ``lungsearch.inference.embed_cases`` per batch."""

    def __init__(self, ref: str, registry_root: str | None, use_gpu: bool, thumbnails: str | None = None) -> None:
        import torch

        from lungsearch.registry import load_model

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model, self.card = load_model(ref, root=registry_root, map_location=self.device)
        self.model.to(self.device)
        self.thumbnails = thumbnails

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from lungsearch.inference import PreparedCase, embed_cases

        has_rad = getattr(self.model, "radiomics", None) is not None
        cases = [
            PreparedCase(
                pixels=np.asarray(x, dtype=np.float32), radiomics=np.asarray(r, dtype=np.float64) if has_rad else None
            )
            for x, r in zip(batch["image"], batch["radiomics"])
        ]
        outs = embed_cases(self.model, cases, texts=[str(t) for t in batch["text"]], device=self.device)
        if self.thumbnails:
            # the page draws retrieved cases and their heat maps on these (PHI-free pixels, keyed case key)
            from lungsearch.web.thumbs import record_thumbnail

            for key, case in zip(batch["key"], cases):
                record_thumbnail(
                    self.thumbnails, self.card.profile, str(key), case.pixels, model_version=self.card.version
                )
        return {
            "i": batch["i"],
            "embedding": np.stack([o.embedding for o in outs]),
            "code": np.asarray([o.code for o in outs], dtype=object),
            "n_slices": batch["n_slices"],
            "view": batch["view"],
            "key": batch["key"],
        }


def build_index(
    ref: str,
    *,
    records: Sequence["CaseRecord"] | None = None,
    folder: str | Path | None = None,
    milvus_uri: str | None = None,
    milvus_token: str = "",
    registry_root: str | Path | None = None,
    hmac_key: bytes | None = None,
    batch_size: int = 32,
    use_gpu: bool | None = None,
    actors: int | None = None,
    upsert_batch: int = 512,
    progress: bool = True,
    thumbnails: str | Path | None = None,
    store_factory: Callable[..., Any] | None = None,
) -> IndexReport:
    """Embed every case and upsert it into the store collection of the model's version.

    Args:
        ref: registered model, ``profile`` or ``profile@version``.
        records: cases to index (default: the profile's whole dataset, ``load_records(cfg.data)``).
        folder: index a folder of DICOM/PNG/JPEG instead (``data.source=folder``; labels may be absent).
        milvus_uri, milvus_token: the store (default ``LUNGSEARCH_MILVUS_URI``; a ``.db`` path = milvus-lite).
        registry_root: model registry root.
        hmac_key: key of the case-key hashes (default: ``LUNGSEARCH_HMAC_KEY_FILE``, created if absent).
        batch_size: cases per inference batch.
        use_gpu: run the embedding actors on GPUs (default: if the cluster has any).
        actors: embedding actors (default: one per GPU, else one). On CPUs, several actors share
            the cores with the decode tasks (half a CPU each), so they never starve them.
        upsert_batch: rows per store upsert (each is flushed: durable when it returns).
        thumbnails: the thumbnail store the page draws retrieved cases from (``lungsearch.web.thumbs``);
            default: beside ``LUNGSEARCH_HMAC_KEY_FILE`` when the key comes from that file (where the
            server looks), none when the caller passes ``hmac_key`` itself; ``"off"`` for none.
        store_factory: builds the store (tests); default ``MilvusStore``.

    Returns:
        An :class:`IndexReport`; ``report.ok`` is the final count check.

    Raises:
        StoreUnavailableError: the store is unreachable or the final count is short.
    """
    import ray

    from lungsearch.data import load_records
    from lungsearch.data.deid import load_or_create_key
    from lungsearch.inference import deidentify_report, report_excerpt
    from lungsearch.registry import parse_ref, resolve
    from lungsearch.runtime import init_ray
    from lungsearch.store import MilvusStore, StoredCase, collection_name

    t0 = time.perf_counter()
    profile, version = parse_ref(ref)
    card = resolve(profile, version, root=registry_root)
    ref = card.ref  # pin the version: every actor loads the same weights
    cfg = card.config
    if folder is not None:
        cfg = cfg.with_overrides(["data.source=folder", f"data.root={Path(folder).resolve()}", "data.phantom=null"])
    if records is None:
        records = list(load_records(cfg.data))
    records = list(records)
    key = hmac_key if hmac_key is not None else load_or_create_key(constants.HMAC_KEY_FILE)
    if thumbnails is None and hmac_key is None:
        from lungsearch.web.thumbs import default_path

        thumbnails = default_path(constants.HMAC_KEY_FILE)
    thumbs_path = None if thumbnails in (None, "off") else str(thumbnails)

    init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if use_gpu is None:
        use_gpu = bool(ray.cluster_resources().get("GPU", 0))
    n_gpu = int(ray.cluster_resources().get("GPU", 0)) if use_gpu else 0
    # What is stored and embedded is the de-identified report (the one rule Ingest follows too).
    texts = [deidentify_report(r.report or "").text for r in records]
    # The records and their texts travel in the rows: Ray Data fuses the decode map into the embedding
    # actors, and as constructor arguments they would sit in the object store (Ray logs an error:
    # such an actor cannot be restarted once they are lost).
    rows = [{"i": i, "record": pickle.dumps(r), "text": t} for i, (r, t) in enumerate(zip(records, texts))]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(records), 64)))
    ds = ds.map_batches(_Decode(cfg, key), batch_size=batch_size, batch_format="numpy", num_cpus=1)
    n_actors = max(1, int(actors) if actors else n_gpu)
    cpu_per_actor = 0 if use_gpu else (1 if n_actors == 1 else 0.5)
    ds = ds.map_batches(
        _Embedder,
        fn_constructor_args=(ref, str(registry_root) if registry_root else None, bool(use_gpu), thumbs_path),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=cpu_per_actor,
    )

    store = (store_factory or MilvusStore)(milvus_uri, token=milvus_token)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"index {card.ref}", unit="case")
    inserted = updated = 0
    keys: set[str] = set()
    pending: list[Any] = []
    try:
        store.ensure_collection(
            card.profile, card.version, embedding_dim=card.embedding_dim, code_bits=card.code_bits, index=cfg.index
        )

        def flush_pending() -> None:
            nonlocal inserted, updated, pending
            if pending:
                res = store.upsert(card.profile, card.version, pending)
                inserted += res.inserted
                updated += res.updated
                pending = []

        now = time.time()
        for row in ds.iter_rows():
            i = int(row["i"])
            rec = records[i]
            keys.add(str(row["key"]))
            pending.append(
                StoredCase(
                    case_key=str(row["key"]),
                    modality=rec.modality or cfg.modality,
                    view=str(row["view"] or ""),
                    labels=list(rec.labels),
                    report_excerpt=report_excerpt(texts[i]),
                    embedding=np.asarray(row["embedding"], dtype=np.float32),
                    code=bytes(row["code"]),
                    ingested_at=now,
                    num_images=int(row["n_slices"]),
                    model_version=card.version,
                )
            )
            if bar is not None:
                bar.update(1)
            if len(pending) >= upsert_batch:
                flush_pending()
        flush_pending()
        count = store.count(card.profile, card.version)
    finally:
        if bar is not None:
            bar.close()
        close = getattr(store, "close", None)
        if close is not None:
            close()
    secs = time.perf_counter() - t0
    unique = len(keys)
    rep = IndexReport(
        profile=card.profile,
        version=card.version,
        collection=collection_name(card.profile, card.version),
        cases=unique,
        inserted=inserted,
        updated=updated,
        count_in_store=count,
        seconds=secs,
        cases_per_s=len(records) / max(secs, 1e-9),
        device="cuda" if use_gpu else "cpu",
    )
    if not rep.ok:
        raise StoreUnavailableError(
            f"index count check failed: {count} rows in the store for {unique} cases", code="count_mismatch"
        )
    return rep
