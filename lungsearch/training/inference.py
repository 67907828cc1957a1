"""Forward passes over cases (radiographs and CT series alike), shared by the training loop,
evaluation and the index builder.

A case is ``[S, 1, H, W]`` slices (S = 1 for a radiograph). :func:`forward_cases` encodes the
valid slices of a batch as one image batch, averages every per-slice feature per case with
``LungModel.pool_slices`` (paper 3 pools slice features into the case descriptor), standardises raw
radiomics with the model's fitted scaler, and fuses. Frozen report encoders are evaluated once per
text and cached (:class:`TextFeatureCache`): re-encoding every report each epoch would dominate a
CPU epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from lungsearch.models.base import LungModel
    from lungsearch.training.cases import CaseTable

__all__ = [
    "CaseForward",
    "Predictions",
    "TextFeatureCache",
    "batch_to_torch",
    "forward_cases",
    "predict",
    "probabilities",
]

_TEXT_KEYS = ("report_pooled", "report_tokens")


class TextFeatureCache:
    """Report features of a frozen text encoder, computed once per text.

    Tokens are stored unpadded per text and re-padded per batch with zero rows, which is the
    encoders' own padding convention (see ``lungsearch.models.encoders.token_mask``)."""

    def __init__(self, encoder: nn.Module, max_items: int = 100_000) -> None:
        self.encoder = encoder
        self._store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.max_items = max_items

    @staticmethod
    def applies(model: "LungModel") -> bool:
        te = getattr(model, "text_encoder", None)
        return te is not None and not any(p.requires_grad for p in te.parameters())

    @torch.no_grad()
    def get(self, texts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._store))
        if missing:
            was = self.encoder.training
            self.encoder.eval()
            for k in range(0, len(missing), 64):
                chunk = missing[k : k + 64]
                out = self.encoder(chunk)
                valid = out["tokens"].abs().sum(-1) > 0
                for j, t in enumerate(chunk):
                    if len(self._store) < self.max_items:
                        self._store[t] = (out["pooled"][j].float().cpu(), out["tokens"][j][valid[j]].float().cpu())
            self.encoder.train(was)
        if any(t not in self._store for t in texts):  # over max_items: encode directly
            out = self.encoder(list(texts))
            return {"report_pooled": out["pooled"], "report_tokens": out["tokens"]}
        pooled = torch.stack([self._store[t][0] for t in texts])
        toks = [self._store[t][1] for t in texts]
        length = max(1, max(x.shape[0] for x in toks))
        tokens = torch.zeros(len(texts), length, toks[0].shape[-1])
        for j, x in enumerate(toks):
            tokens[j, : x.shape[0]] = x
        return {"report_pooled": pooled.to(device), "report_tokens": tokens.to(device)}


def _pool(t: torch.Tensor, case_index: torch.Tensor, num_cases: int, model: "LungModel") -> torch.Tensor:
    if t.ndim == 2:
        return model.pool_slices(t, case_index, num_cases)
    flat = model.pool_slices(t.reshape(t.shape[0], -1), case_index, num_cases)
    return flat.reshape(num_cases, *t.shape[1:])


def forward_cases(
    model: "LungModel",
    images: torch.Tensor,
    n_slices: torch.Tensor,
    *,
    texts: Sequence[str] | None = None,
    radiomics: torch.Tensor | None = None,
    text_cache: TextFeatureCache | None = None,
) -> dict[str, torch.Tensor]:
    """Features and outputs of a batch of cases.

    Args:
        model: a ``LungModel`` (the bare module, not a DDP wrapper).
        images: ``[B, S, 1, H, W]`` preprocessed slices, zero-padded past ``n_slices``.
        n_slices: ``[B]`` valid slices per case.
        texts: report per case (used when the model has a text encoder).
        radiomics: raw radiomics ``[B, F]`` (NaN allowed); standardised here with the model's scaler.
        text_cache: frozen-encoder cache for the reports.

    Returns:
        ``{**features, **model.fuse(features)}`` per case.
    """
    b, s = images.shape[:2]
    feats: dict[str, torch.Tensor] = {}
    if getattr(model, "image_encoder", None) is not None:
        if s == 1:
            feats = model.encode(images=images[:, 0])
        else:
            valid = torch.arange(s, device=images.device)[None, :] < n_slices.to(images.device)[:, None]
            flat = images[valid]
            case_index = torch.arange(b, device=images.device)[:, None].expand(b, s)[valid]
            per_slice = model.encode(images=flat)
            feats = {k: _pool(v, case_index, b, model) for k, v in per_slice.items()}
    if getattr(model, "text_encoder", None) is not None and texts is not None:
        if text_cache is not None:
            feats.update(text_cache.get(list(texts), images.device))
        else:
            feats.update({k: v for k, v in model.encode(texts=list(texts)).items() if k in _TEXT_KEYS})
    if getattr(model, "radiomics", None) is not None and radiomics is not None:
        feats["radiomics"] = model.standardise_radiomics(radiomics).to(images.device)
    return {**feats, **model.fuse(feats)}


class CaseForward(nn.Module):
    """``forward_cases`` as a module, so DDP (``ray.train.torch.prepare_model``) wraps the whole
    case-level forward and synchronises every trained parameter."""

    def __init__(self, model: "LungModel") -> None:
        super().__init__()
        self.model = model
        self.text_cache = TextFeatureCache(model.text_encoder) if TextFeatureCache.applies(model) else None

    def forward(self, images, n_slices, texts=None, radiomics=None):
        return forward_cases(self.model, images, n_slices, texts=texts, radiomics=radiomics, text_cache=self.text_cache)


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


@dataclass
class Predictions:
    """Model outputs for a table of cases (numpy, case order of the table).

    Attributes:
        embedding: float32 ``[N, E]`` L2-normalised (what the float index stores).
        probs: ``[N, C]`` class probabilities or None (no classifier).
        codes: ±1 float32 ``[N, bits]`` (``sign(hash_logits)``, ties -> +1) or None.
        text_embedding: ``[N, E]`` report embeddings (CLIP profile) or None.
        seconds: wall time of the model calls.
    """

    embedding: np.ndarray
    probs: np.ndarray | None
    codes: np.ndarray | None
    text_embedding: np.ndarray | None
    seconds: float


@torch.no_grad()
def predict(
    model: "LungModel",
    table: "CaseTable",
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    text_cache: TextFeatureCache | None = None,
    use_text: bool = True,
) -> Predictions:
    """Run the model over every case of ``table`` in eval mode."""
    import time

    model.eval()
    device = torch.device(device)
    if text_cache is None and TextFeatureCache.applies(model):
        text_cache = TextFeatureCache(model.text_encoder)
    embs, probs, codes, temb = [], [], [], []
    t0 = time.perf_counter()
    for start in range(0, len(table), batch_size):
        sl = slice(start, start + batch_size)
        images = torch.from_numpy(table.images[sl]).to(device)
        n = torch.from_numpy(table.n_slices[sl]).to(device)
        rad = torch.from_numpy(table.radiomics[sl]) if table.radiomics is not None else None
        out = forward_cases(
            model, images, n, texts=table.reports[sl] if use_text else None, radiomics=rad, text_cache=text_cache
        )
        embs.append(out["embedding"].float().cpu())
        if "logits" in out:
            probs.append(probabilities(out["logits"].float(), table.multilabel).cpu())
        if "hash_logits" in out:
            h = out["hash_logits"].float()
            codes.append(torch.where(h >= 0, 1.0, -1.0).cpu())
        if "text_embedding" in out and "image_embedding" in out:
            temb.append(F.normalize(out["text_embedding"].float(), dim=-1).cpu())
    secs = time.perf_counter() - t0
    cat = lambda xs: torch.cat(xs).numpy() if xs else None  # noqa: E731
    return Predictions(embedding=cat(embs), probs=cat(probs), codes=cat(codes), text_embedding=cat(temb), seconds=secs)


def batch_to_torch(batch: dict[str, Any], device: torch.device, multilabel: bool) -> dict[str, Any]:
    """A Ray Data numpy batch (``CaseTable.rows`` columns) as tensors on ``device``."""
    # np.array copies: Ray Data hands out read-only views of the object store, which torch warns about.
    out: dict[str, Any] = {
        "images": torch.from_numpy(np.array(batch["image"], dtype=np.float32)).to(device),
        "n_slices": torch.from_numpy(np.array(batch["n_slices"], dtype=np.int64)).to(device),
        "index": np.asarray(batch["index"], dtype=np.int64),
        "texts": [str(t) for t in batch["report"]],
    }
    lab = np.asarray(batch["label"])
    out["labels"] = torch.from_numpy(lab.astype(np.float32 if multilabel else np.int64)).to(device)
    if "radiomics" in batch:
        out["radiomics"] = torch.from_numpy(np.array(batch["radiomics"], dtype=np.float64))
    return out
