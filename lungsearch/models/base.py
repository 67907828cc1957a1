"""The contract every profile's model implements (the model library builds them with
``create_model(cfg)``; training jobs and Serve deployments only use this surface).

Tensor conventions:
    images: float32 [B, 1, H, W], preprocessed by ``lungsearch.data.preprocess`` (the same
        function at train and serve time). A CT case is encoded slice by slice (slices in the
        batch dimension) and ``pool_slices`` averages a case's slice features.
    texts: list[str] of report texts (B items); "" where a case has no report.
    radiomics: float32 [B, F], already standardised with the model's fitted scaler.

Feature names equal the fields of ``lungsearch.v1.Features`` (encoding.proto):
    image_pooled [B, D_img], image_tokens [B, N, D_img], report_pooled [B, D_txt],
    report_tokens [B, T, D_txt], radiomics [B, F], hash_logits [B, bits].
    Padding rows of ``report_tokens`` are exactly zero: a consumer that re-batches per-study
    token arrays (e.g. after a gRPC hop) pads with zeros and the model recovers the mask.
    ``encode`` may return extra keys (cxr-hash: ``logits`` of its Grad-CAM classifier).

Training hooks (defaults here, overridden where a profile needs them): ``regularization()``
is added to the loss after each forward; ``on_epoch_start(epoch)`` runs schedules (hash beta);
``set_stage(stage)`` selects what trains for each entry of ``cfg.train.stages``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from lungsearch.config import ProfileConfig

__all__ = ["LungModel", "FEATURE_NAMES"]

FEATURE_NAMES = ("image_pooled", "image_tokens", "report_pooled", "report_tokens", "radiomics", "hash_logits")


class LungModel(nn.Module, ABC):
    """A profile's whole pipeline as one module.

    Attributes:
        cfg: the profile config it was built from.
        targets: output label order (the classifier's columns), as ``cfg.data.targets``.
        input_size: image side the model expects.
        embedding_dim: size of the indexed float embedding.
        code_bits: bits of the binary code (0 when the profile does not hash).
    """

    cfg: ProfileConfig
    targets: list[str]
    input_size: int
    embedding_dim: int
    code_bits: int = 0

    @abstractmethod
    def encode(
        self, images: torch.Tensor | None = None, texts: list[str] | None = None, radiomics: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Features of a batch; keys from FEATURE_NAMES (only those this profile computes)."""

    @abstractmethod
    def fuse(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """From features to ``{"embedding": [B, E] L2-normalised, "logits": [B, C] (if a head)}``;
        profiles that hash also return ``"hash_logits": [B, bits]``."""

    def forward(self, images=None, texts=None, radiomics=None) -> dict[str, torch.Tensor]:
        """encode + fuse; returns features and outputs in one dict (training uses this)."""
        feats = self.encode(images=images, texts=texts, radiomics=radiomics)
        return {**feats, **self.fuse(feats)}

    def explain(self, images: torch.Tensor, target: int | None = None, texts: list[str] | None = None) -> torch.Tensor:
        """Grad-CAM heat map [B, H, W] in [0, 1] for class ``target`` (None = top class)."""
        raise NotImplementedError(f"{type(self).__name__} has no explanation")

    def regularization(self) -> torch.Tensor:
        """Auxiliary penalty of the last training forward, added to the loss (default 0)."""
        return torch.zeros(())

    def on_epoch_start(self, epoch: int) -> None:
        """Per-epoch schedules (e.g. the hash continuation beta); default: nothing."""

    def set_stage(self, stage: str) -> None:
        """Select the parameters trained in stage ``stage`` of ``cfg.train.stages``; default: all."""

    @staticmethod
    def pool_slices(features: torch.Tensor, case_index: torch.Tensor, num_cases: int) -> torch.Tensor:
        """Mean of slice features per case: features [S, D], case_index [S] -> [num_cases, D]."""
        out = torch.zeros(num_cases, features.shape[-1], dtype=features.dtype, device=features.device)
        out.index_add_(0, case_index, features)
        counts = torch.bincount(case_index, minlength=num_cases).clamp_min(1).to(features.dtype)
        return out / counts[:, None]
