"""The one inference path: what a case becomes in the store, whichever way it arrived.

A case's stored vector, code and excerpt must be a function of the case and the model version
alone: the same through ``build_index`` (any batch size, any number of actors), through the
gateway's ``Ingest`` (the Encoding -> Fusion -> Hashing stages) and through the evaluation
(``training.inference.forward_cases``). So every path takes these rules from here:

* :func:`prepare_case` -- decoded study -> model input (``preprocess_study``, the training
  transform in eval mode) and raw radiomics (:func:`study_radiomics`: each slice's decoded pixels,
  HU for CT, inside its lung mask; NaN-aware mean over the slices). When no plausible lung is
  found, radiomics read the whole thorax and the case says so (``roi_fallback``, ``roi_reason``),
  which every answer about it carries on to the user (``RadiomicsRoi`` in the protos);
* :func:`embed_cases` -- a batch of prepared cases through ``forward_cases`` (encode, pool the
  slices of a CT case, standardise radiomics, fuse): embedding, hash logits, probabilities, code;
* :func:`code_bytes` -- the packed code of hash logits (``sign(z)``, ``sign(0) = +1``, eq. 11);
* :func:`deidentify_report` -- the report text every stored path keeps and embeds (names, MRNs,
  accession numbers, dates, phones, addresses, ages over 89 removed:
  ``lungsearch.data.report_deid.scrub_report``), before :func:`report_excerpt` cuts the excerpt.

The serving stages split the same computation across deployments (``serving.pipeline``'s
``encode_batch`` / ``fuse_batch`` / ``hash_code`` call ``model.encode`` / ``model.fuse`` and the
rules here); ``tests/test_inference_determinism.py`` holds every path to the same numbers.

Imports torch lazily: the gateway renders excerpts without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from lungsearch.config import ProfileConfig
    from lungsearch.data.types import Study
    from lungsearch.models.base import LungModel

__all__ = [
    "EXCERPT_CHARS",
    "PreparedCase",
    "CaseOutput",
    "prepare_case",
    "study_radiomics",
    "study_radiomics_roi",
    "roi_fallback_message",
    "embed_cases",
    "code_bytes",
    "probabilities",
    "deidentify_report",
    "report_excerpt",
]

#: Characters of the (de-identified) report kept as the stored excerpt (the store also cuts at
#: 2048 UTF-8 bytes). One number for every path: 600 on ingest and 400 in build_index used to give
#: the same case two excerpts depending on how it arrived.
EXCERPT_CHARS = 600


@dataclass
class PreparedCase:
    """Model input of one case (PHI-free: pixels and numbers only).

    Attributes:
        pixels: float32 ``[S, 1, H, W]`` preprocessed slices (S = 1 for a radiograph).
        radiomics: raw radiomics float64 ``[F]`` (NaN allowed), or None for profiles without them.
        roi_fallback: the lung mask failed and ``radiomics`` read the whole thorax (never set for
            profiles without radiomics).
        roi_reason: why (a value of ``lungsearch.data.masks.REASONS``); "" when ``roi_fallback`` is False.
    """

    pixels: np.ndarray
    radiomics: np.ndarray | None = None
    roi_fallback: bool = False
    roi_reason: str = ""

    @property
    def num_slices(self) -> int:
        return int(self.pixels.shape[0])


@dataclass
class CaseOutput:
    """What the model makes of one case: the stored vector and code, and the class probabilities."""

    embedding: np.ndarray  # float32 [E], L2-normalised
    code: bytes  # packed (HashCode.packed); b"" when the profile does not hash
    hash_logits: np.ndarray | None  # float32 [bits] or None
    probabilities: np.ndarray | None  # float32 [C] or None (no classifier)
    roi_fallback: bool = False  # radiomics read the whole thorax (PreparedCase.roi_fallback)
    roi_reason: str = ""


def roi_fallback_message(reason: str) -> str:
    """The PHI-free sentence an answer carries when radiomics read the whole thorax."""
    return f"radiomics read the whole thorax: lung mask {reason or 'empty'}"


def study_radiomics_roi(study: "Study", extractor: Any) -> tuple[np.ndarray, Any]:
    """Raw radiomics of one case and the regions they were read in (``RoiMasks``: ``.fallback``
    and ``.reason`` say whether the lung masks failed and the whole thorax was read instead).

    Features of each slice inside its lung mask (the whole thorax when no plausible lung is
    found: ``lungsearch.data.masks.roi_masks``), NaN-aware mean. Computed on the decoded pixels
    (HU for CT), as the training cache does; every path calls this, so the model's fitted scaler
    sees one distribution."""
    from lungsearch.data.masks import roi_masks

    slices = [im.pixels for im in study.images]
    # An empty or implausible lung mask falls back to the whole thorax, flagged, logged and counted
    # (lungsearch_data_radiomics_roi_fallbacks_total), instead of radiomics on nothing.
    roi = roi_masks(slices, modality=study.modality)
    return extractor.extract_study(np.stack(slices), roi.masks), roi


def study_radiomics(study: "Study", extractor: Any) -> np.ndarray:
    """Raw radiomics of one case (:func:`study_radiomics_roi` without the regions)."""
    return study_radiomics_roi(study, extractor)[0]


def prepare_case(study: "Study", cfg: "ProfileConfig", *, extractor: Any = None) -> PreparedCase:
    """Preprocess one decoded (de-identified) study exactly as training does, in eval mode.

    Args:
        extractor: the profile's ``RadiomicsExtractor`` (``training.cases.radiomics_extractor``),
            or None when the profile has no radiomics part.
    """
    from lungsearch.data import preprocess_study

    pixels = preprocess_study(study, cfg.data, train=False)
    if extractor is None:
        return PreparedCase(pixels=pixels)
    rad, roi = study_radiomics_roi(study, extractor)
    return PreparedCase(pixels=pixels, radiomics=rad, roi_fallback=bool(roi.fallback), roi_reason=roi.reason)


def probabilities(logits: np.ndarray, *, multilabel: bool) -> np.ndarray:
    """Class probabilities: sigmoid per label (multi-label) or softmax (float64 maths, float32 out)."""
    z = np.asarray(logits, dtype=np.float64)
    if multilabel:
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def code_bytes(hash_logits: np.ndarray) -> list[bytes]:
    """Packed codes of hash logits ``[N, bits]``: bit ``i`` is 1 where ``z_i >= 0`` (eq. 11)."""
    from lungsearch.models.hashing import pack_codes

    z = np.asarray(hash_logits, dtype=np.float32)
    if z.ndim == 1:
        z = z[None]
    return [bytes(row) for row in pack_codes(z >= 0)]


def embed_cases(
    model: "LungModel", cases: Sequence[PreparedCase], *, texts: Sequence[str] | None = None, device: Any = "cpu"
) -> list[CaseOutput]:
    """Embed a batch of prepared cases in one ``forward_cases`` call (eval mode, no gradients).

    Cases of different slice counts are zero-padded to the longest; ``forward_cases`` encodes only
    the valid slices and pools them per case, so the padding never reaches a number.

    Args:
        texts: one report per case, used when the model has a text encoder.
    """
    import torch

    from lungsearch.training.inference import forward_cases

    if not cases:
        return []
    device = torch.device(device)
    s = max(c.num_slices for c in cases)
    h, w = cases[0].pixels.shape[-2:]
    arr = np.zeros((len(cases), s, 1, h, w), dtype=np.float32)
    for k, c in enumerate(cases):
        arr[k, : c.num_slices] = c.pixels
    n = torch.as_tensor([c.num_slices for c in cases], dtype=torch.long, device=device)
    rad = None
    if getattr(model, "radiomics", None) is not None:
        rad = torch.from_numpy(np.stack([np.asarray(c.radiomics, dtype=np.float64) for c in cases]))
    use_texts = list(texts) if texts is not None and getattr(model, "text_encoder", None) is not None else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = forward_cases(model, torch.from_numpy(arr).to(device), n, texts=use_texts, radiomics=rad)
    finally:
        model.train(was_training)
    emb = out["embedding"].float().cpu().numpy()
    hl = out["hash_logits"].float().cpu().numpy() if "hash_logits" in out else None
    codes = code_bytes(hl) if hl is not None else [b""] * len(cases)
    probs = None
    if "logits" in out:
        probs = probabilities(out["logits"].float().cpu().numpy(), multilabel=bool(getattr(model, "multilabel", False)))
    return [
        CaseOutput(
            embedding=emb[i],
            code=codes[i],
            hash_logits=None if hl is None else hl[i],
            probabilities=None if probs is None else probs[i],
            roi_fallback=cases[i].roi_fallback,
            roi_reason=cases[i].roi_reason,
        )
        for i in range(len(cases))
    ]


def deidentify_report(text: str, *, date_shift_days: int | None = None):
    """The de-identified report (``ScrubResult``: ``.text`` and ``.counts`` per category, never the
    values removed). Ingest and ``build_index`` store and embed this text, not the one sent."""
    from lungsearch.data.report_deid import ScrubResult, scrub_report

    if not (text or "").strip():
        return ScrubResult(text=text or "", counts={})
    return scrub_report(text, date_shift_days=date_shift_days)


def report_excerpt(text: str, max_chars: int = EXCERPT_CHARS) -> str:
    """The stored excerpt: whitespace collapsed, cut at a word boundary with an ellipsis."""
    flat = " ".join((text or "").split())
    if len(flat) <= max_chars:
        return flat
    cut = flat[:max_chars].rsplit(" ", 1)[0]
    return cut + " …"
