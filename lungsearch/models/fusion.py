"""Fusion modules: features dict -> ``{"fused": [B, Df]}`` and, for sequence heads,
``{"sequence": [B, T, Ds], "sequence_mask": [B, T] bool}``.

* ``cma``: cross-modal attention (paper 1, eq. 1-2).
* ``concat``: the ablation baseline of ``cma`` (same projections, no attention).
* ``outer_product``: ILD-FFN (paper 3, eq. 2-3).
* ``pooled``: concatenation of whatever pooled features exist (used when a profile has no fusion).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lungsearch.errors import ConfigError, InvalidRequestError
from lungsearch.models.encoders import token_mask
from lungsearch.models.registry import FUSIONS, BuildContext, take_params

__all__ = ["CrossModalAttention", "ConcatFusion", "OuterProductFusion", "PooledFusion"]


def _need(features: dict[str, torch.Tensor], *keys: str) -> list[torch.Tensor]:
    missing = [k for k in keys if features.get(k) is None]
    if missing:
        raise InvalidRequestError(f"fusion needs features {', '.join(missing)}")
    return [features[k] for k in keys]


class _TokenProjection(nn.Module):
    """Image and report tokens projected to a common width ``dim`` (LayerNorm after)."""

    def __init__(self, image_dim: int, text_dim: int, dim: int) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.Linear(image_dim, dim), nn.LayerNorm(dim))
        self.txt = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img_tokens, txt_tokens = _need(features, "image_tokens", "report_tokens")
        mask = token_mask(txt_tokens)
        # a report with no tokens at all (should not happen: [CLS] is always there) keeps one
        # slot valid so the softmax is defined
        mask[:, 0] |= ~mask.any(dim=1)
        return self.img(img_tokens), self.txt(txt_tokens), mask


def _sequence(i: torch.Tensor, m: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image tokens then report tokens; valid report tokens are moved to the front of the report
    part so that every row's valid steps form a prefix (padding last) for packed LSTMs."""
    b, n, _ = i.shape
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    m_sorted = torch.gather(m, 1, order[..., None].expand_as(m))
    mask_sorted = torch.gather(mask, 1, order)
    seq = torch.cat([i, m_sorted * mask_sorted[..., None]], dim=1)
    seq_mask = torch.cat([torch.ones(b, n, dtype=torch.bool, device=i.device), mask_sorted], dim=1)
    return seq, seq_mask


class CrossModalAttention(nn.Module):
    """Cross-modal attention (paper 1, eq. 1-2).

    With image tokens ``I`` and report tokens ``M`` projected to width ``d``:
    ``Î = I + softmax(I Mᵀ/√d) M`` and ``M̂ = M + softmax(M Iᵀ/√d) I``.

    Choices: eq. 1 prints ``softmax(I·Mᵀ/√d)·I``, whose shapes only agree when both modalities
    have the same number of tokens; the text says M "enhances the representation of I", so the
    attention weights (eq. 2: a softmax of similarity scores) average ``M`` for each image
    token, and symmetrically; residual connections keep each modality's own content. Padding
    report tokens are masked out of the softmax. The fused sequence for the (SG-)Bi-LSTM is
    ``[Î; M̂]`` (padding last); ``fused`` is the masked mean of that sequence.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 128) -> None:
        super().__init__()
        self.proj = _TokenProjection(image_dim, text_dim, dim)
        self.dim = dim
        self.out_dim = dim
        self.seq_dim = dim

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        i, m, mask = self.proj(features)
        scale = 1.0 / math.sqrt(self.dim)
        s = torch.einsum("bnd,btd->bnt", i, m) * scale
        a_im = torch.softmax(s.masked_fill(~mask[:, None, :], float("-inf")), dim=-1)
        a_mi = torch.softmax(s.transpose(1, 2), dim=-1)
        i_hat = i + a_im @ m
        m_hat = m + a_mi @ i
        seq, seq_mask = _sequence(i_hat, m_hat, mask)
        w = seq_mask[..., None].to(seq.dtype)
        fused = (seq * w).sum(1) / w.sum(1).clamp_min(1.0)
        return {"fused": fused, "sequence": seq, "sequence_mask": seq_mask, "attention": a_im}


class ConcatFusion(nn.Module):
    """Ablation baseline for :class:`CrossModalAttention`: the same projections, sequence
    ``[I; M]`` without attention, ``fused`` = masked mean."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 128) -> None:
        super().__init__()
        self.proj = _TokenProjection(image_dim, text_dim, dim)
        self.out_dim = dim
        self.seq_dim = dim

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        i, m, mask = self.proj(features)
        seq, seq_mask = _sequence(i, m, mask)
        w = seq_mask[..., None].to(seq.dtype)
        return {"fused": (seq * w).sum(1) / w.sum(1).clamp_min(1.0), "sequence": seq, "sequence_mask": seq_mask}


class OuterProductFusion(nn.Module):
    """ILD-FFN (paper 3, eq. 2-3).

    ``z_{b,i,j} = x_{b,i} y_{b,j}`` (deep features x ∈ R^q, radiomics y ∈ R^p) is a 1-channel
    q×p map; three conv blocks (3×3 conv stride 2 - BN - ReLU) widen it to {16, 32, 64}
    channels and shrink it to ⌈q/8⌉×⌈p/8⌉; a 1×1 conv fuses the channels into the correlation
    map R; ``F = [X, Y, vec(R)] W + b`` (eq. 3 writes "X+Y+R" for the concatenation the text
    describes). ``fused`` = F with width ``out_dim`` (the embedding size by default).

    Args:
        image_dim: q. radiomics_dim: p. out_dim: width of F. channels: the three block widths.
    """

    def __init__(
        self, image_dim: int, radiomics_dim: int, out_dim: int, channels: tuple[int, int, int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        if radiomics_dim <= 0:
            raise ConfigError("outer_product fusion needs radiomics features (model.radiomics)")
        blocks: list[nn.Module] = []
        cin = 1
        for c in channels:
            blocks += [nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.mix = nn.Conv2d(cin, 1, kernel_size=1)
        q, p = image_dim, radiomics_dim
        for _ in channels:
            q, p = (q + 1) // 2, (p + 1) // 2
        self.r_dim = q * p
        self.proj = nn.Linear(image_dim + radiomics_dim + self.r_dim, out_dim)
        self.out_dim = out_dim

    def correlation(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """R ``[B, ⌈q/8⌉·⌈p/8⌉]`` from the outer product of ``x [B, q]`` and ``y [B, p]``."""
        z = torch.einsum("bi,bj->bij", x, y)[:, None]
        return self.mix(self.blocks(z)).flatten(1)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = _need(features, "image_pooled", "radiomics")
        r = self.correlation(x, y.to(x.dtype))
        return {"fused": self.proj(torch.cat([x, y.to(x.dtype), r], dim=1))}


class PooledFusion(nn.Module):
    """Concatenation of the pooled features present (image, report, radiomics), in that order."""

    KEYS = ("image_pooled", "report_pooled", "radiomics")

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__()
        self.keys = [k for k, d in zip(self.KEYS, ("image", "text", "radiomics")) if dims.get(d)]
        self.out_dim = sum(dims[d] for d in ("image", "text", "radiomics") if dims.get(d))
        if not self.keys:
            raise ConfigError("a model needs at least one encoder")

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"fused": torch.cat(_need(features, *self.keys), dim=1)}


@FUSIONS.register("cma")
def _cma(params: dict[str, Any], ctx: BuildContext) -> CrossModalAttention:
    p = take_params("cma", params, {"dim": 128})
    if not ctx.dims.get("image") or not ctx.dims.get("text"):
        raise ConfigError("fusion 'cma' needs an image_encoder and a text_encoder")
    return CrossModalAttention(ctx.dims["image"], ctx.dims["text"], p["dim"])


@FUSIONS.register("concat")
def _concat(params: dict[str, Any], ctx: BuildContext) -> ConcatFusion:
    p = take_params("concat", params, {"dim": 128})
    if not ctx.dims.get("image") or not ctx.dims.get("text"):
        raise ConfigError("fusion 'concat' needs an image_encoder and a text_encoder")
    return ConcatFusion(ctx.dims["image"], ctx.dims["text"], p["dim"])


@FUSIONS.register("outer_product")
def _outer(params: dict[str, Any], ctx: BuildContext) -> OuterProductFusion:
    p = take_params("outer_product", params, {"out_dim": None, "channels": [16, 32, 64]})
    if not ctx.dims.get("image"):
        raise ConfigError("fusion 'outer_product' needs an image_encoder")
    return OuterProductFusion(
        ctx.dims["image"], ctx.dims.get("radiomics", 0), p["out_dim"] or ctx.embedding_dim, tuple(p["channels"])
    )


@FUSIONS.register("pooled")
def _pooled(params: dict[str, Any], ctx: BuildContext) -> PooledFusion:
    take_params("pooled", params, {})
    return PooledFusion(ctx.dims)
