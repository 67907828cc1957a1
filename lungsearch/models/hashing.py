"""Binary codes: packing, Hamming distance, LSH (paper 3) and attention-guided deep hashing
(paper 5: Grad-CAM eq. 1-2, Otsu mask eq. 3-4, global + local branches, tanh continuation
eq. 11-12).

Packing follows ``lungsearch.v1.HashCode``: bit ``i`` of a code is bit ``i % 8`` (LSB first)
of byte ``i // 8``; a code bit is 1 where the ±1 code is +1 (``sign(z) >= 0``, eq. 11).

    >>> codes = np.sign(np.random.randn(4, 64))
    >>> packed = pack_codes(codes)            # [4, 8] uint8
    >>> hamming_distance(packed[:1], packed)  # [1, 4] = (64 - codes[0] @ codes.T) / 2
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lungsearch.errors import ConfigError, InvalidRequestError
from lungsearch.models.registry import HASHING, BuildContext, take_params

__all__ = [
    "pack_codes",
    "unpack_codes",
    "hamming_distance",
    "LSH",
    "HashLayer",
    "CamClassifier",
    "AttentionHash",
    "grad_cam",
    "normalise_heatmap",
    "otsu_threshold",
]


def _to_bits(bits: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(bits, torch.Tensor):
        bits = bits.detach().cpu().numpy()
    arr = np.asarray(bits)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidRequestError(f"codes must be [N, bits], got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 1:
        return arr.astype(bool)  # {0, 1} codes
    return arr >= 0  # ±1 codes or real-valued logits: sign(z) with sign(0) = +1 (eq. 11)


def pack_codes(bits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pack codes ``[N, K]`` (±1, {0,1}, bool or real logits -> sign) into ``uint8 [N, ceil(K/8)]``.

    Bit ``i`` goes to byte ``i // 8``, bit ``i % 8`` (little-endian), as ``HashCode.packed``.
    """
    return np.packbits(_to_bits(bits), axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray | bytes, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``uint8 [N, B]`` (or one ``bytes``) -> ±1 ``int8 [N, bits]``."""
    if isinstance(packed, (bytes, bytearray)):
        packed = np.frombuffer(bytes(packed), dtype=np.uint8)[None, :]
    arr = np.asarray(packed, dtype=np.uint8)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.shape[1] * 8 < bits:
        raise InvalidRequestError(f"packed code has {arr.shape[1] * 8} bits, fewer than {bits}")
    b = np.unpackbits(arr, axis=1, count=bits, bitorder="little")
    return b.astype(np.int8) * 2 - 1


def hamming_distance(a_packed: np.ndarray, b_packed: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances ``int [Na, Nb]`` between packed codes (popcount of XOR).

    Equals ``(K - <b_i, b_j>) / 2`` for the ±1 codes (paper 5, eq. 6) when padding bits are 0.
    """
    a = np.atleast_2d(np.asarray(a_packed, dtype=np.uint8))
    b = np.atleast_2d(np.asarray(b_packed, dtype=np.uint8))
    if a.shape[1] != b.shape[1]:
        raise InvalidRequestError(f"code lengths differ: {a.shape[1]} vs {b.shape[1]} bytes")
    x = np.bitwise_xor(a[:, None, :], b[None, :, :])
    return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)


class LSH(nn.Module):
    """Random-hyperplane LSH over float embeddings (paper 3, eq. 7): ``h_i(x) = 1[w_iᵀx > 0]``.

    The planes are a buffer drawn from N(0, 1) with a fixed seed, so ``state_dict()`` (or the
    same seed) rebuilds the same codes. Embeddings are L2-normalised first (paper 3 normalises
    before hashing; the sign does not depend on the norm anyway).

    Example:
        >>> lsh = LSH(dim=128, bits=64, seed=0)
        >>> codes = lsh.codes(torch.randn(10, 128))   # ±1 float [10, 64]
        >>> packed = pack_codes(codes)                 # for Hamming pre-filtering
    """

    def __init__(self, dim: int, bits: int, seed: int = 0) -> None:
        super().__init__()
        if bits <= 0 or dim <= 0:
            raise ConfigError("LSH needs positive dim and bits")
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("planes", torch.randn(bits, dim, generator=g))
        self.dim, self.bits = dim, bits

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Projections ``[N, bits]`` (their sign is the code)."""
        return F.normalize(emb.to(self.planes.dtype), dim=-1) @ self.planes.T

    @torch.no_grad()
    def codes(self, emb: torch.Tensor | np.ndarray) -> torch.Tensor:
        """±1 codes ``float [N, bits]`` (zero projections map to +1, as eq. 11)."""
        if isinstance(emb, np.ndarray):
            emb = torch.from_numpy(emb)
        proj = self.forward(emb.to(self.planes.device))
        return torch.where(proj >= 0, 1.0, -1.0)


class HashLayer(nn.Module):
    """Linear hash layer ``z = W f + b``; codes are ``tanh(beta z)`` in training and
    ``sign(z)`` at inference (paper 5, eq. 11-12)."""

    def __init__(self, in_dim: int, bits: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, bits)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats)


def grad_cam(fmap: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (paper 5, eq. 1-2): ``ReLU(sum_k w_k P^k)`` with ``w_k`` the spatial mean of
    ``d score / d P^k``.

    Args:
        fmap: last feature map ``[B, K, h, w]`` that ``scores`` was computed from (requires grad).
        scores: one class score per image ``[B]``.

    Returns:
        Heat maps ``[B, h, w]`` (not normalised).
    """
    grads = torch.autograd.grad(scores.sum(), fmap, retain_graph=True)[0]
    weights = grads.mean(dim=(-2, -1), keepdim=True)
    return F.relu((weights * fmap).sum(dim=1))


#: A heat map whose range is below this fraction of its magnitude is flat: what is left is float
#: rounding (bilinear upsampling of a 1x1 or constant CAM is not exactly constant in float32).
FLAT_HEATMAP_RTOL = 1e-4


def normalise_heatmap(cam: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``cam`` ``[B, H, W]`` to [0, 1] by its own min and max.

    A flat map (range below ``FLAT_HEATMAP_RTOL`` of its largest magnitude, or all zero) becomes all
    zeros. Scaling it would blow rounding noise of ~1e-7 up to the full [0, 1] range, and the Otsu
    mask of that noise (hence the local branch, the embedding and the code) would then depend on the
    batch a case was computed in, the thread count and the SIMD path. This was the cause of the
    flaky index-build test.
    """
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    magnitude = torch.maximum(hi.abs(), lo.abs())
    is_flat = (hi - lo) <= FLAT_HEATMAP_RTOL * magnitude
    out = (cam - lo[:, None, None]) / (hi - lo).clamp_min(1e-12)[:, None, None]
    return torch.where(is_flat[:, None, None], torch.zeros_like(out), out)


def otsu_threshold(x: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """Otsu's threshold (paper 5, eq. 3) per image: maximises the between-class variance of a
    ``bins``-level histogram. ``x`` ``[B, H, W]`` -> thresholds ``[B]``."""
    b = x.shape[0]
    flat = x.reshape(b, -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    scaled = (flat - lo) / (hi - lo).clamp_min(1e-12)
    idx = (scaled * (bins - 1)).round().long().clamp(0, bins - 1)
    hist = torch.zeros(b, bins, dtype=x.dtype, device=x.device).scatter_add_(1, idx, torch.ones_like(scaled))
    p = hist / hist.sum(dim=1, keepdim=True)
    levels = torch.arange(bins, dtype=x.dtype, device=x.device)
    w0 = p.cumsum(1)
    mu = (p * levels).cumsum(1)
    mu_t = mu[:, -1:]
    between = (mu_t * w0 - mu) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    k = between.argmax(dim=1).to(x.dtype)
    # threshold between level k and k+1, mapped back to the input's range
    return lo.squeeze(1) + (k + 0.5) / (bins - 1) * (hi - lo).squeeze(1)


def dilate_last_stage(layer: nn.Sequential) -> None:
    """Turn a torchvision ResNet stage into its dilated form in place (DeepLab's output stride 16,
    what ``replace_stride_with_dilation`` does for Bottleneck nets; torchvision refuses it for
    ResNet18/34's BasicBlock, so it is done here): the stride-2 convolutions get stride 1, every 3x3
    convolution after the strided one dilation 2 and padding 2. Weight shapes do not change, so the
    same (pretrained) weights load, and the even cells of the new map equal the old map (same
    receptive field; tested)."""
    seen_stride = False
    for block in layer:
        for mod in block.modules():
            if not isinstance(mod, nn.Conv2d):
                continue
            if mod.stride == (2, 2):
                mod.stride = (1, 1)
                seen_stride = seen_stride or mod.kernel_size == (3, 3)
            elif seen_stride and mod.kernel_size == (3, 3):
                mod.dilation, mod.padding = (2, 2), (2, 2)


class CamClassifier(nn.Module):
    """The separately trained classifier whose Grad-CAM guides the local branch (paper 5, 3.1:
    a classifier is trained to convergence first, then the hash network; its heat maps are "those
    of the classification task").

    Its own ResNet backbone (not shared with the hash network, so hashing cannot move it), global
    average pooling and a linear layer (sigmoid/BCE, eq. 5). ``output_stride`` 16 dilates the last
    stage (:func:`dilate_last_stage`): the CAM grid is ``input/16`` (8x8 at 128 px, 14x14 at 224)
    instead of ``input/32`` (4x4 at 128 px). Chosen over taking the CAM from layer3 because Grad-CAM
    wants the last convolutional layer (the paper: "最后一层的特征图") and the deepest semantics,
    and over dropping the stride without dilation because that shrinks the stage's receptive field
    (pretrained weights would then see a different scale).

    With average pooling and a linear layer, Grad-CAM (eq. 1-2) has the closed form
    ``ReLU(sum_k W_ck P^k) / hw`` (identical to the autograd result, see tests): no backward pass.
    """

    def __init__(
        self, num_classes: int, arch: str = "resnet18", output_stride: int = 16, pretrained: str | None = None
    ) -> None:
        super().__init__()
        from lungsearch.models.encoders import ResNetEncoder

        if output_stride not in (16, 32):
            raise ConfigError(f"attention_hash.cam.output_stride must be 16 or 32, got {output_stride}")
        self.backbone = ResNetEncoder(arch, pool="avg", pretrained=pretrained)
        if output_stride == 16:
            dilate_last_stage(self.backbone.body[-1])
        self.output_stride = output_stride
        self.fc = nn.Linear(self.backbone.out_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(images)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.features(images)
        pooled = self.backbone.pool(fmap)
        return {"logits": self.fc(pooled), "pooled": pooled, "fmap": fmap}

    def cam(self, fmap: torch.Tensor, target: int | torch.Tensor | None = None) -> torch.Tensor:
        """Grad-CAM ``[B, h, w]`` on the feature-map grid (closed form; not normalised)."""
        logits = self.fc(self.backbone.pool(fmap))
        tgt = _target(logits, target)
        w = self.fc.weight[tgt]  # [B, K]
        return F.relu(torch.einsum("bk,bkhw->bhw", w, fmap)) / (fmap.shape[-1] * fmap.shape[-2])


def _target(logits: torch.Tensor, target: int | torch.Tensor | None) -> torch.Tensor:
    """Class explained per image: the top-scoring one (multi-label: the most confident label)."""
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, int):
        return torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device)
    return target.to(logits.device).long()


class AttentionHash(nn.Module):
    """Paper 5's two-branch deep hashing.

    1. A separate classifier (:class:`CamClassifier`, its own backbone, BCE eq. 5) is trained
       first (stage ``classifier``) and then frozen (:meth:`freeze_cam`: no gradient, eval-mode
       BatchNorm), so a hash-stage step cannot change it.
    2. Its Grad-CAM heat map for the top class (eq. 1-2) is upsampled to the image, Otsu's
       threshold (eq. 3) gives a mask and ``x' = mask ⊙ x`` (eq. 4) is the local image.
       ``crop: true`` instead crops the mask's bounding box and resizes it (a zoomed variant).
    3. Global image -> global branch -> ``z'`` (bits/2); local image -> local branch -> ``z''``
       (bits/2); ``z = [z', z'']`` (codes concatenated as in the paper).
    4. ``classifier``, a linear head on the global branch, gives the L_cls of the hashing stage's
       total loss (the paper's loss "includes L_cls and L_weightedPair", multi-task; the frozen CAM
       classifier cannot carry it).
    5. Training uses ``tanh(beta z)`` with ``beta`` raised per epoch by ``beta_schedule``
       (HashNet continuation, eq. 12); inference uses ``sign(z)`` (eq. 11).

    For multi-label images the top-scoring class is explained. ``beta`` is a buffer: it is saved
    with the weights.
    """

    def __init__(
        self,
        global_encoder: nn.Module,
        local_encoder: nn.Module,
        num_classes: int,
        bits: int,
        beta_schedule: list[float] | None = None,
        crop: bool = False,
        otsu_bins: int = 64,
        cam: CamClassifier | None = None,
    ) -> None:
        super().__init__()
        if bits % 2 or bits <= 0:
            raise ConfigError(f"attention_hash: bits must be a positive even number, got {bits}")
        self.global_encoder = global_encoder
        self.local_encoder = local_encoder
        self.cam = cam if cam is not None else CamClassifier(num_classes)
        dim_g, dim_l = global_encoder.out_dim, local_encoder.out_dim
        self.classifier = nn.Linear(dim_g, num_classes)
        self.hash_global = HashLayer(dim_g, bits // 2)
        self.hash_local = HashLayer(dim_l, bits - bits // 2)
        self.bits = bits
        self.beta_schedule = [float(b) for b in (beta_schedule or [1.0])]
        self.register_buffer("beta", torch.tensor(self.beta_schedule[0]))
        self.crop = crop
        self.otsu_bins = otsu_bins
        self.cam_frozen = False

    def freeze_cam(self, frozen: bool = True) -> None:
        """Freeze (or release) the CAM classifier: no gradients, and BatchNorm in eval mode even
        while the rest trains (running statistics are state too: they must not drift either)."""
        self.cam_frozen = frozen
        self.cam.requires_grad_(not frozen)
        if frozen:
            self.cam.eval()
        else:
            self.cam.train(self.training)

    def train(self, mode: bool = True) -> "AttentionHash":
        super().train(mode)
        if self.cam_frozen:
            self.cam.eval()
        return self

    def set_epoch(self, epoch: int) -> None:
        """Continuation: ``beta = beta_schedule[min(epoch, len-1)]``."""
        self.beta.fill_(self.beta_schedule[min(max(epoch, 0), len(self.beta_schedule) - 1)])

    @torch.no_grad()
    def heatmap(self, images: torch.Tensor, target: int | torch.Tensor | None = None) -> torch.Tensor:
        """The CAM classifier's Grad-CAM ``[B, H, W]`` in [0, 1] at image resolution (bilinear)."""
        cam = self.cam.cam(self.cam.features(images), target)
        cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return normalise_heatmap(cam)

    def cam_grid(self, size: int) -> tuple[int, int]:
        """The CAM's feature-map grid ``(h, w)`` for a ``size`` x ``size`` input."""
        with torch.no_grad():
            was = self.cam.training
            self.cam.eval()
            shape = self.cam.features(torch.zeros(1, 1, size, size, device=self.beta.device)).shape[-2:]
            self.cam.train(was)
        return int(shape[0]), int(shape[1])

    def local_images(self, images: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
        """Otsu mask of the heat map applied to the image (eq. 3-4), or its bounding-box crop."""
        thr = otsu_threshold(heat, self.otsu_bins)
        mask = (heat > thr[:, None, None]).to(images.dtype)
        # an all-background mask (a flat heat map is all zeros) would erase the image: keep it whole instead
        empty = mask.flatten(1).sum(1) == 0
        mask[empty] = 1.0
        if not self.crop:
            return images * mask[:, None]
        out = []
        for img, m in zip(images, mask):
            ys, xs = torch.nonzero(m, as_tuple=True)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            patch = img[:, y0:y1, x0:x1][None]
            out.append(F.interpolate(patch, size=images.shape[-2:], mode="bilinear", align_corners=False)[0])
        return torch.stack(out)

    def forward(self, images: torch.Tensor, glob: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Returns ``logits`` [B, C] (the hash network's L_cls head), ``hash_logits`` z [B, bits],
        ``local_pooled``, ``heatmap`` (of the CAM classifier)."""
        if glob is None:
            glob = self.global_encoder(images)
        logits = self.classifier(glob["pooled"])
        # the mask is a data transform of the frozen classifier: no gradient through the threshold
        heat = self.heatmap(images)
        with torch.no_grad():
            local = self.local_images(images, heat)
        loc = self.local_encoder(local)
        z = torch.cat([self.hash_global(glob["pooled"]), self.hash_local(loc["pooled"])], dim=1)
        return {"logits": logits, "hash_logits": z, "local_pooled": loc["pooled"], "heatmap": heat}


@HASHING.register("attention_hash")
def _attention_hash(params: dict[str, Any], ctx: BuildContext) -> dict[str, Any]:
    """Returns the params; :mod:`lungsearch.models.factory` wires the branches (it owns the
    global encoder)."""
    p = take_params(
        "attention_hash",
        params,
        {
            "bits": 64,
            "beta_schedule": [1.0, 2.0, 4.0, 8.0, 16.0],
            "local_encoder": None,
            "crop": False,
            "otsu_bins": 64,
            "cam": None,
        },
    )
    cam = take_params(
        "attention_hash.cam", dict(p.pop("cam") or {}), {"arch": "resnet18", "output_stride": 16, "pretrained": None}
    )
    if cam["arch"] not in ("resnet18", "resnet34", "resnet50"):
        raise ConfigError(f"attention_hash.cam.arch must be resnet18/34/50, got {cam['arch']!r}")
    p["cam"] = CamClassifier(ctx.num_classes, cam["arch"], int(cam["output_stride"]), cam["pretrained"])
    return p


@HASHING.register("lsh")
def _lsh(params: dict[str, Any], ctx: BuildContext) -> LSH:
    p = take_params("lsh", params, {"bits": 64, "seed": 0})
    return LSH(ctx.embedding_dim, p["bits"], p["seed"])
