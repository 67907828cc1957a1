"""The work each deployment does, as pure functions (testable without Ray or gRPC).

Each stage follows preprocess -> predict -> postprocess:

* encoding: :func:`prepare_study` (decoded, de-identified study -> model input, raw radiomics),
  :func:`encode_batch` (a batch of studies through ``model.encode``, CT slices pooled per case);
* fusion: :func:`fuse_batch` (features -> L2-normalised embedding and class probabilities);
* hashing: :func:`hash_code` (hash logits or an embedding -> packed code);
* gateway: :func:`derive_case_key`, :func:`knn_vote`, :func:`report_excerpt`,
  :func:`heatmap_png` / :func:`overlay_png` (Grad-CAM rendering with Pillow).

Imports torch lazily (the gateway renders PNGs and votes without it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lungsearch.errors import InvalidRequestError

# One rule for every path (lungsearch.inference), re-exported for the deployments.
from lungsearch.inference import EXCERPT_CHARS, probabilities, report_excerpt

if TYPE_CHECKING:  # pragma: no cover
    from lungsearch.config import ProfileConfig
    from lungsearch.data.types import Study
    from lungsearch.models.base import LungModel

__all__ = [
    "StudyInput",
    "prepare_study",
    "encode_batch",
    "fuse_batch",
    "probabilities",
    "hash_code",
    "explain_study",
    "derive_case_key",
    "knn_vote",
    "top_label",
    "report_excerpt",
    "heatmap_png",
    "overlay_png",
    "EXCERPT_CHARS",
]


# Feature keys that are per image (pooled over the slices of a CT case); the rest are per case.
_PER_IMAGE = ("image_pooled", "image_tokens", "hash_logits", "logits")


@dataclass
class StudyInput:
    """What the encoder needs for one study (PHI-free: pixels and de-identified text only).

    Attributes:
        pixels: float32 [S, 1, H, W] preprocessed slices, or None for a text-only query.
        text: the report text, or None.
        radiomics: raw radiomics float64 [F] (NaN allowed), for profiles with radiomics.
        modality, view: from the decoded study ("" when there is no image).
        roi_fallback, roi_reason: the lung mask failed and radiomics read the whole thorax, and why
            (``lungsearch.inference.PreparedCase``); the Encoding answer carries them on.
    """

    pixels: np.ndarray | None
    text: str | None = None
    radiomics: np.ndarray | None = None
    modality: str = ""
    view: str = ""
    roi_fallback: bool = False
    roi_reason: str = ""

    @property
    def num_images(self) -> int:
        return 0 if self.pixels is None else int(self.pixels.shape[0])


def prepare_study(study: "Study | None", text: str | None, cfg: "ProfileConfig", model: "LungModel") -> StudyInput:
    """Preprocess one study exactly as training does (``lungsearch.data.preprocess_study``).

    Through :func:`lungsearch.inference.prepare_case`, the rule ``build_index`` uses: radiomics
    (ct-ild) from the decoded pixels (HU for CT) inside each slice's lung mask, averaged over slices.

    Raises:
        InvalidRequestError: neither an image nor a report; a report for a profile without a
            text encoder is ignored rather than refused (the image still answers).
    """
    if study is None and not text:
        raise InvalidRequestError("give an image, a report, or both", code="empty_query")
    has_text_encoder = getattr(model, "text_encoder", None) is not None
    if study is None:
        if not has_text_encoder:
            raise InvalidRequestError(
                f"profile {cfg.profile} cannot search by report text alone",
                code="text_only_unsupported",
                field="images",
            )
        return StudyInput(pixels=None, text=text)
    from lungsearch.inference import prepare_case

    radiomics_part = getattr(model, "radiomics", None)
    case = prepare_case(study, cfg, extractor=radiomics_part.extractor if radiomics_part is not None else None)
    return StudyInput(
        pixels=case.pixels,
        text=(text or "") if has_text_encoder else None,
        radiomics=case.radiomics,
        modality=study.modality,
        view=study.view,
        roi_fallback=case.roi_fallback,
        roi_reason=case.roi_reason,
    )


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def encode_batch(model: "LungModel", items: Sequence[StudyInput]) -> list[dict[str, np.ndarray]]:
    """Features of several studies in as few model calls as possible.

    Slices of all image studies go through ``model.encode`` in one batch and are mean-pooled per
    study (``LungModel.pool_slices``); texts and radiomics of all studies go in one more call.

    Returns:
        One dict per item: feature name -> float32 array without the batch dimension.
    """
    import torch

    out: list[dict[str, np.ndarray]] = [{} for _ in items]
    with torch.inference_mode():
        img_idx = [i for i, it in enumerate(items) if it.pixels is not None]
        if img_idx:
            slices = [items[i].pixels for i in img_idx]
            counts = [s.shape[0] for s in slices]
            images = torch.from_numpy(np.concatenate(slices, axis=0))
            feats = model.encode(images=images)
            case_index = torch.repeat_interleave(torch.arange(len(img_idx)), torch.tensor(counts))
            for name, value in feats.items():
                if name not in _PER_IMAGE:
                    continue
                flat = value.reshape(value.shape[0], -1)
                pooled = flat if max(counts) == 1 else model.pool_slices(flat, case_index, len(img_idx))
                pooled = pooled.reshape(len(img_idx), *value.shape[1:])
                for j, i in enumerate(img_idx):
                    out[i][name] = _np(pooled[j])
        text_idx = [i for i, it in enumerate(items) if it.text is not None]
        rad_idx = [i for i, it in enumerate(items) if it.radiomics is not None]
        if text_idx:
            feats = model.encode(texts=[items[i].text or "" for i in text_idx])
            for name, value in feats.items():
                for j, i in enumerate(text_idx):
                    out[i][name] = _np(value[j])
        if rad_idx:
            raw = np.stack([items[i].radiomics for i in rad_idx])
            std = model.standardise_radiomics(raw)
            feats = model.encode(radiomics=std)
            for j, i in enumerate(rad_idx):
                out[i]["radiomics"] = _np(feats["radiomics"][j])
    return out


def _stack_padded(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack per-study arrays; token sequences of different lengths ([T, D]) are zero-padded to
    the longest, the models' padding convention (``lungsearch.models.encoders.token_mask``)."""
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
        return np.stack(arrays).astype(np.float32, copy=False)
    if len({a.ndim for a in arrays}) != 1 or len({a.shape[1:] for a in arrays}) != 1:
        raise InvalidRequestError("features of one kind have different shapes", code="feature_shape")
    out = np.zeros((len(arrays), max(a.shape[0] for a in arrays), *arrays[0].shape[1:]), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out


def fuse_batch(model: "LungModel", features: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Embeddings (and probabilities when the profile has a classifier) of several studies.

    All items must carry the same feature keys (the same kind of query); a mixed batch is fused
    group by group.

    Returns:
        Per item: ``embedding`` float32 [E] (L2-normalised), ``probabilities`` [C] when there are
        logits, ``hash_logits`` [bits] when the profile hashes.
    """
    import torch

    groups: dict[tuple[str, ...], list[int]] = {}
    for i, f in enumerate(features):
        groups.setdefault(tuple(sorted(f)), []).append(i)
    out: list[dict[str, np.ndarray]] = [{} for _ in features]
    multilabel = bool(getattr(model, "multilabel", False))
    with torch.inference_mode():
        for keys, idx in groups.items():
            batch = {k: torch.from_numpy(_stack_padded([features[i][k] for i in idx])) for k in keys}
            res = model.fuse(batch)
            emb = _np(res["embedding"])
            logits = _np(res["logits"]) if "logits" in res else None
            hl = _np(res["hash_logits"]) if "hash_logits" in res else None
            for j, i in enumerate(idx):
                out[i]["embedding"] = emb[j]
                if logits is not None:
                    out[i]["probabilities"] = probabilities(logits[j], multilabel=multilabel)
                if hl is not None:
                    out[i]["hash_logits"] = hl[j]
    return out


def hash_code(
    model: "LungModel", *, hash_logits: np.ndarray | None = None, embedding: np.ndarray | None = None
) -> bytes:
    """The packed binary code (``HashCode.packed``) of one study.

    Learned hashing (cxr-hash): ``sign(hash_logits)``. LSH (ct-ild): the model's hyperplanes on the
    embedding. Either profile also accepts the other input when it is the one it has: the sign of
    cxr-hash's relaxed-code embedding equals ``sign(z)``.

    Raises:
        InvalidRequestError: the profile does not hash, or the input has the wrong size.
    """
    import torch

    from lungsearch.inference import code_bytes
    from lungsearch.models.hashing import pack_codes

    bits = int(getattr(model, "code_bits", 0) or 0)
    if bits <= 0:
        raise InvalidRequestError("this profile does not use hash codes", code="no_hashing")
    lsh = getattr(model, "lsh", None)
    if hash_logits is not None:
        z = np.asarray(hash_logits, dtype=np.float32).reshape(-1)
        if z.shape[0] != bits:
            raise InvalidRequestError(
                f"hash_logits has {z.shape[0]} values, the model uses {bits} bits",
                code="code_bits",
                field="hash_logits",
            )
        return code_bytes(z[None])[0]
    if embedding is None:
        raise InvalidRequestError("give hash_logits or an embedding", code="no_input")
    e = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
    if lsh is not None:
        if e.shape[1] != lsh.dim:
            raise InvalidRequestError(
                f"embedding has {e.shape[1]} values, LSH expects {lsh.dim}", code="embedding_dim", field="embedding"
            )
        with torch.inference_mode():
            return pack_codes(lsh.codes(torch.from_numpy(e))).tobytes()
    if e.shape[1] != bits:
        raise InvalidRequestError(
            f"embedding has {e.shape[1]} values, the code has {bits} bits", code="embedding_dim", field="embedding"
        )
    return pack_codes(e).tobytes()


def explain_study(model: "LungModel", item: StudyInput, label: str = "") -> tuple[np.ndarray, str]:
    """Grad-CAM heat map [H, W] in [0, 1] of one study for ``label`` ("" = the top predicted label).

    A CT series is explained on its middle slice (one map a reader can overlay on one image).

    Returns:
        (heat map, the label explained; "" for profiles without a classifier, whose map explains
        the retrieval embedding instead).

    Raises:
        InvalidRequestError: no image, or a label that is not one of the model's targets.
    """
    import torch

    if item.pixels is None:
        raise InvalidRequestError("explaining needs an image", code="explain_no_image", field="images")
    targets = list(getattr(model, "targets", []) or [])
    mid = item.pixels.shape[0] // 2
    img = torch.from_numpy(np.ascontiguousarray(item.pixels[mid : mid + 1]))
    texts = [item.text or ""] if item.text is not None else None
    target: int | None = None
    if label:
        if label not in targets:
            raise InvalidRequestError("label is not one of the model's targets", code="unknown_label", field="label")
        target = targets.index(label)
    else:
        with torch.inference_mode():
            rad = model.standardise_radiomics(item.radiomics[None]) if item.radiomics is not None else None
            out = model.fuse(model.encode(images=img, texts=texts, radiomics=rad))
        if "logits" in out and targets:
            target = int(out["logits"][0].argmax())
            label = targets[target]
    heat = model.explain(img, target=target, texts=texts)
    return heat[0].detach().cpu().float().numpy(), label


def derive_case_key(hmac_key: bytes, *, study: "Study", source_id: str, image_bytes: Sequence[bytes]) -> str:
    """The case key of an ingested study (:func:`lungsearch.data.deid.study_case_key`, the rule
    ``build_index`` uses too, so a dataset case re-ingested through the gateway is not stored twice)."""
    from lungsearch.data.deid import study_case_key

    return study_case_key(hmac_key, study, source_id=source_id, image_bytes=image_bytes)


def knn_vote(neighbour_labels: Sequence[Sequence[str]], targets: Sequence[str]) -> list[tuple[str, float]]:
    """Share of the neighbours carrying each label, in target order (then any other label seen).

    With multi-label cases the shares need not sum to 1. No neighbours -> all zeros.
    """
    n = len(neighbour_labels)
    counts: dict[str, int] = {t: 0 for t in targets}
    for labels in neighbour_labels:
        for lab in set(labels):
            counts[lab] = counts.get(lab, 0) + 1
    return [(lab, (c / n) if n else 0.0) for lab, c in counts.items()]


def top_label(probabilities: Sequence[tuple[str, float]], vote: Sequence[tuple[str, float]]) -> str:
    """Classify's answer: the classifier head's most probable label; for a profile without a head
    (retrieval only), the label most neighbours carry; "" when neither says anything (no head and
    no neighbour with a label). Ties go to the earlier label (target order)."""
    if probabilities:
        return max(probabilities, key=lambda p: p[1])[0]
    if any(s > 0 for _, s in vote):
        return max(vote, key=lambda v: v[1])[0]
    return ""


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")  # uint8 [H, W] -> L, [H, W, 3] -> RGB
    return buf.getvalue()


def heatmap_png(heat: np.ndarray) -> bytes:
    """8-bit gray PNG of a heat map in [0, 1] ([H, W])."""
    h = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    if h.ndim != 2:
        raise InvalidRequestError(f"heat map must be 2-D, got {h.shape}", code="heatmap_shape")
    return _png((h * 255.0 + 0.5).astype(np.uint8))


def _jet(h: np.ndarray) -> np.ndarray:
    """A small jet colormap (no matplotlib import in the serving path)."""
    r = np.clip(1.5 - np.abs(4 * h - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * h - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * h - 1), 0, 1)
    return np.stack([r, g, b], axis=-1)


def overlay_png(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45) -> bytes:
    """RGB PNG: the heat map (jet) blended over the grayscale input image ([H, W], any range)."""
    img = np.asarray(image, dtype=np.float32)
    h = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    if img.shape != h.shape:
        raise InvalidRequestError(f"image {img.shape} and heat map {h.shape} differ", code="heatmap_shape")
    lo, hi = float(img.min()), float(img.max())
    gray = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    rgb = (1 - alpha) * gray[..., None] + alpha * _jet(h)
    return _png((np.clip(rgb, 0, 1) * 255.0 + 0.5).astype(np.uint8))
