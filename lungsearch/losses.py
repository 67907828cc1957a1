"""Training objectives behind a registry: ``create_loss(cfg.model.loss)``.

Every loss is an ``nn.Module`` called as ``loss(outputs, targets) -> scalar`` where ``outputs``
is the model's ``forward`` dict and ``targets`` is ``LongTensor [B]`` (single-label) or a
multi-hot ``FloatTensor [B, C]`` (multi-label; ``None`` for self-supervised losses). After a
call ``loss.parts`` holds the named terms (detached floats) for logging. Losses have no
parameters: everything trained lives in the model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lungsearch.config import Component, ProfileConfig
from lungsearch.errors import ConfigError, InvalidRequestError
from lungsearch.models.registry import LOSSES, BuildContext, take_params

__all__ = [
    "create_loss",
    "loss_for_stage",
    "similarity_matrix",
    "CrossEntropyLoss",
    "BCELoss",
    "ContrastiveLoss",
    "SupConLoss",
    "WeightedPairwiseBayesLoss",
    "InfoNCELoss",
    "SubgraphTotalLoss",
]


def _need(outputs: dict[str, torch.Tensor], key: str, loss: str) -> torch.Tensor:
    t = outputs.get(key)
    if t is None:
        raise InvalidRequestError(f"loss {loss!r} needs model output {key!r}")
    return t


def similarity_matrix(targets: torch.Tensor) -> torch.Tensor:
    """``S [B, B]`` bool: same class (single-label) or at least one shared label (multi-label,
    paper 5's definition of s_ij = 1)."""
    if targets.ndim == 1:
        return targets[:, None] == targets[None, :]
    t = (targets > 0).to(torch.float32)
    return (t @ t.T) > 0


class _Loss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.parts: dict[str, float] = {}

    def _done(self, total: torch.Tensor, **parts: torch.Tensor) -> torch.Tensor:
        self.parts = {k: float(v.detach()) for k, v in parts.items()}
        self.parts["loss"] = float(total.detach())
        return total


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy on ``outputs["logits"]`` (paper 1, paper 2)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        logits = _need(outputs, "logits", "ce")
        if targets.ndim == 2:  # one-hot / soft targets
            targets = targets.to(logits.dtype)
        return self._done(F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing))


class BCELoss(_Loss):
    """Multi-label binary cross-entropy averaged over classes and samples (paper 5, eq. 5)."""

    def __init__(self, pos_weight: list[float] | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        logits = _need(outputs, "logits", "bce")
        if targets.ndim == 1:
            targets = F.one_hot(targets.long(), logits.shape[1])
        pw = torch.tensor(self.pos_weight, device=logits.device, dtype=logits.dtype) if self.pos_weight else None
        return self._done(F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=pw))


def _pairs_mask(b: int, device: torch.device) -> torch.Tensor:
    return ~torch.eye(b, dtype=torch.bool, device=device)


class ContrastiveLoss(_Loss):
    """Margin contrastive loss (paper 3): ``½ lbl D² + ½ (1 - lbl) max(0, m - D)²`` with D the
    Euclidean distance of two embeddings and ``m = 0.7``, averaged over all ordered pairs of the
    batch (the paper samples one positive and N-1 negatives per query; all pairs is the
    batch-efficient superset)."""

    def __init__(self, margin: float = 0.7, key: str = "embedding") -> None:
        super().__init__()
        self.margin, self.key = margin, key

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        emb = _need(outputs, self.key, "contrastive")
        same = similarity_matrix(targets).to(emb.dtype)
        # cdist's gradient at D = 0 (the diagonal) is NaN-prone: use the squared form
        d2 = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
        d = (d2 + 1e-12).sqrt()
        per = 0.5 * same * d2 + 0.5 * (1 - same) * F.relu(self.margin - d) ** 2
        m = _pairs_mask(emb.shape[0], emb.device)
        return self._done(per[m].mean())


class SupConLoss(_Loss):
    """Supervised contrastive loss (Khosla et al. 2020; paper 3's SCL) on the L2-normalised
    embeddings: for each anchor with at least one positive,
    ``-1/|P| Σ_p log(exp(s_ap/τ) / Σ_{k≠a} exp(s_ak/τ))``. Positives share the label (or at
    least one label, multi-label)."""

    def __init__(self, temperature: float = 0.1, key: str = "embedding") -> None:
        super().__init__()
        self.temperature, self.key = temperature, key

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(_need(outputs, self.key, "supcon"), dim=-1)
        b = emb.shape[0]
        logits = emb @ emb.T / self.temperature
        not_self = _pairs_mask(b, emb.device)
        logits = logits.masked_fill(~not_self, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = similarity_matrix(targets) & not_self
        n_pos = pos.sum(1)
        has = n_pos > 0
        if not bool(has.any()):
            return self._done(emb.sum() * 0.0)
        mean_log_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)[has] / n_pos[has]
        return self._done(-mean_log_pos.mean())


class WeightedPairwiseBayesLoss(_Loss):
    """Weighted pairwise Bayesian hashing loss (paper 5, eq. 6-10) + quantisation.

    With relaxed codes ``b = tanh(beta z)`` (``outputs["hash_relaxed"]``) and ``θ_ij = <b_i,b_j>``:
    ``L = 1/|S| Σ_{i≠j} w_ij (log(1 + exp(α θ_ij)) - α s_ij θ_ij)`` where ``w_ij = |S|/|S1|``
    for similar pairs and ``|S|/|S0|`` for dissimilar ones (eq. 9, counted in the batch).
    Eq. 10 is printed with a leading minus; this is the negative log-likelihood of eq. 7-8,
    which is what is minimised. ``α`` defaults to ``10 / K`` (< 1 for K ≥ 16, as the paper asks;
    HashNet's choice, keeps ``α θ`` in [-10, 10]). Quantisation: ``mean((|b| - 1)²)`` =
    ``|sign(b) - b|²`` times ``quantization``. ``classification`` weighs the BCE of eq. 5 on
    ``outputs["logits"]`` (the hash network's classification head): paper 5's total loss is
    ``L_cls + L_weightedPair`` (section 3, "损失函数包括 L_cls 和 L_weightedPair"; no weight is
    printed, so the default is 1). ``classification: 0`` is the pairwise loss alone.
    """

    def __init__(self, alpha: float | None = None, quantization: float = 0.0, classification: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.quantization, self.classification = alpha, quantization, classification

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        b = outputs.get("hash_relaxed")
        if b is None:
            b = torch.tanh(_need(outputs, "hash_logits", "pairwise_bayes"))
        k = b.shape[1]
        alpha = self.alpha if self.alpha is not None else 10.0 / k
        s = similarity_matrix(targets)
        pairs = _pairs_mask(b.shape[0], b.device)
        s_f = s.to(b.dtype)
        theta = b @ b.T
        n_all = pairs.sum()
        n1 = (s & pairs).sum().clamp_min(1)
        n0 = (~s & pairs).sum().clamp_min(1)
        w = torch.where(s, n_all / n1, n_all / n0).to(b.dtype)
        nll = w * (F.softplus(alpha * theta) - alpha * s_f * theta)
        pair_loss = nll[pairs].mean()
        quant = ((b.abs() - 1) ** 2).mean()
        total = pair_loss + self.quantization * quant
        parts = {"pairwise": pair_loss, "quantization": quant}
        if self.classification > 0 and outputs.get("logits") is not None:
            t = targets if targets.ndim == 2 else F.one_hot(targets.long(), outputs["logits"].shape[1])
            cls = F.binary_cross_entropy_with_logits(outputs["logits"], t.to(b.dtype))
            total = total + self.classification * cls
            parts["bce"] = cls
        return self._done(total, **parts)


def _info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    logits = scale * a @ b.T
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class InfoNCELoss(_Loss):
    """Symmetric image-report InfoNCE (CLIP): matched pairs on the diagonal. Uses the model's
    learnable ``logit_scale`` when present, else ``1 / temperature``."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor | None = None) -> torch.Tensor:
        i = _need(outputs, "image_embedding", "infonce")
        t = _need(outputs, "text_embedding", "infonce")
        scale = outputs.get("logit_scale", 1.0 / self.temperature)
        return self._done(_info_nce(i, t, scale))


class SubgraphTotalLoss(_Loss):
    """Paper 4's objective ``L = L1 + L2 + L3`` (eq. 12) (+ ``global_weight`` × InfoNCE on the
    global embeddings that retrieval uses; ``global_weight: 0`` is eq. 12 exactly).

    ``l1_weight`` / ``l2_weight`` / ``l3_weight`` (default 1) weigh the three terms for the
    paper's ablations: a term with weight 0 is not computed (Table 6 "no matching" is
    ``l1_weight: 0, global_weight: 0``; "global matching" ``l1_weight: 0, global_weight: 1``;
    Table 10 drops L2, Table 11 L3).

    * **L1** (eq. 4-6), sub-graph matching: the score of image i against report k is the mean
      over i's kept nodes of the best cosine match among k's kept nodes (the alignment term of
      eq. 4; the printed log-sum-exp term is invariant to how well nodes match, so it is left
      out; nodes are L2-normalised, so cosine replaces ``·/√d``). InfoNCE over the batch in both
      directions with ``τ1``.
    * **L2** (eq. 7-8), fine alignment: for each kept image node m, its cross-attended report
      vector must pick m among the image's own nodes (softmax over nodes, ``-log`` of the
      probability, ``τ1``); and the same for report nodes.
    * **L3** (eq. 9-11), sample-pair clustering: with the fused pair vectors C*, the outer
      kernel ``D_mn = exp(-|C_m - C_n|²/2α²) (C_m C_nᵀ)`` picks each pair's K nearest pairs
      (``W`` of eq. 10 is the identity: a discrete top-K gives it no gradient), which are
      pulled close against the rest: ``-log Σ_K exp(c·c_k/τ2) / Σ_{j≠s} exp(c·c_j/τ2)``.
    """

    def __init__(
        self,
        tau1: float = 0.1,
        tau2: float = 0.2,
        k: int = 3,
        global_weight: float = 1.0,
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        l3_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.tau1, self.tau2, self.k, self.global_weight = tau1, tau2, k, global_weight
        self.weights = {"l1": float(l1_weight), "l2": float(l2_weight), "l3": float(l3_weight)}
        if min(self.weights.values()) < 0 or global_weight < 0:
            raise ConfigError("subgraph_total: loss weights must be >= 0")
        if not any(self.weights.values()) and not global_weight:
            raise ConfigError("subgraph_total: every term has weight 0 (nothing to train)")

    def l1(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        i, t = out["image_nodes"], out["text_nodes"]
        im, tm = out["image_node_mask"], out["text_node_mask"]
        sim = torch.einsum("amd,bnd->abmn", i, t)
        neg = torch.finfo(sim.dtype).min
        i2t = sim.masked_fill(~tm[None, :, None, :], neg).max(-1).values  # [A, B, M]
        w_i = im[:, None, :].to(sim.dtype)
        s_i2t = (i2t * w_i).sum(-1) / w_i.sum(-1).clamp_min(1)  # [A, B]
        t2i = sim.masked_fill(~im[:, None, :, None], neg).max(-2).values  # [A, B, N]
        w_t = tm[None, :, :].to(sim.dtype)
        s_t2i = (t2i * w_t).sum(-1) / w_t.sum(-1).clamp_min(1)  # [A, B]: report b vs image a
        labels = torch.arange(i.shape[0], device=i.device)
        return (F.cross_entropy(s_i2t / self.tau1, labels) + F.cross_entropy(s_t2i.T / self.tau1, labels)) / 2

    def _fine(self, nodes: torch.Tensor, att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("bmd,bnd->bmn", att, nodes) / self.tau1  # row m: att_m vs own nodes n
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        target = torch.arange(nodes.shape[1], device=nodes.device).expand(nodes.shape[0], -1)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1])[mask.flatten()], target.reshape(-1)[mask.flatten()])
        return ce

    def l2(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return (
            self._fine(out["image_nodes"], out["att_image"], out["image_node_mask"])
            + self._fine(out["text_nodes"], out["att_text"], out["text_node_mask"])
        ) / 2

    def l3(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        c = F.normalize(out["cluster"], dim=-1)
        b = c.shape[0]
        if b < 3:
            return c.sum() * 0.0
        k = max(1, min(self.k, b - 2))  # leave at least one negative
        not_self = _pairs_mask(b, c.device)
        with torch.no_grad():
            dots = c @ c.T
            alpha = dots[not_self].std().clamp_min(1e-3)
            dmat = torch.exp(-(torch.cdist(c, c) ** 2) / (2 * alpha**2)) * dots
            dmat = dmat.masked_fill(~not_self, float("-inf"))
            nn_idx = dmat.topk(k, dim=1).indices
            pos = torch.zeros(b, b, dtype=torch.bool, device=c.device).scatter_(1, nn_idx, True)
        logits = (c @ c.T / self.tau2).masked_fill(~not_self, float("-inf"))
        log_pos = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
        return (torch.logsumexp(logits, dim=1) - log_pos).mean()

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor | None = None) -> torch.Tensor:
        need = {"l1": ("image_nodes", "text_nodes"), "l2": ("image_nodes", "att_image", "att_text"), "l3": ("cluster",)}
        parts: dict[str, torch.Tensor] = {}
        terms: list[torch.Tensor] = []
        for name, w in self.weights.items():
            if w <= 0:
                continue
            for key in need[name]:
                _need(outputs, key, "subgraph_total")
            parts[name] = getattr(self, name)(outputs)
            terms.append(w * parts[name])
        if self.global_weight > 0:
            i, t = (
                _need(outputs, "image_embedding", "subgraph_total"),
                _need(outputs, "text_embedding", "subgraph_total"),
            )
            parts["global"] = _info_nce(i, t, outputs.get("logit_scale", 1.0 / 0.07))
            terms.append(self.global_weight * parts["global"])
        return self._done(torch.stack(terms).sum(), **parts)


@LOSSES.register("ce")
def _ce(params: dict[str, Any], ctx: BuildContext) -> CrossEntropyLoss:
    return CrossEntropyLoss(**take_params("ce", params, {"label_smoothing": 0.0}))


@LOSSES.register("bce")
def _bce(params: dict[str, Any], ctx: BuildContext) -> BCELoss:
    return BCELoss(**take_params("bce", params, {"pos_weight": None}))


@LOSSES.register("contrastive")
def _contrastive(params: dict[str, Any], ctx: BuildContext) -> ContrastiveLoss:
    return ContrastiveLoss(**take_params("contrastive", params, {"margin": 0.7, "key": "embedding"}))


@LOSSES.register("supcon")
def _supcon(params: dict[str, Any], ctx: BuildContext) -> SupConLoss:
    return SupConLoss(**take_params("supcon", params, {"temperature": 0.1, "key": "embedding"}))


@LOSSES.register("pairwise_bayes")
def _pairwise(params: dict[str, Any], ctx: BuildContext) -> WeightedPairwiseBayesLoss:
    return WeightedPairwiseBayesLoss(
        **take_params("pairwise_bayes", params, {"alpha": None, "quantization": 0.0, "classification": 1.0})
    )


@LOSSES.register("infonce")
def _infonce(params: dict[str, Any], ctx: BuildContext) -> InfoNCELoss:
    return InfoNCELoss(**take_params("infonce", params, {"temperature": 0.07}))


@LOSSES.register("subgraph_total")
def _subgraph_total(params: dict[str, Any], ctx: BuildContext) -> SubgraphTotalLoss:
    return SubgraphTotalLoss(
        **take_params(
            "subgraph_total",
            params,
            {
                "tau1": 0.1,
                "tau2": 0.2,
                "k": 3,
                "global_weight": 1.0,
                "l1_weight": 1.0,
                "l2_weight": 1.0,
                "l3_weight": 1.0,
            },
        )
    )


def create_loss(component: Component) -> nn.Module:
    """Build the loss a profile names (``cfg.model.loss``).

    Raises:
        ConfigError: unknown loss name or param (close matches listed).
    """
    return LOSSES.build(component.name, component.params, BuildContext())


def loss_for_stage(cfg: ProfileConfig, stage: str | None = None) -> nn.Module:
    """The loss of a training stage: ``classifier`` / ``probe`` stages train the classifier
    with BCE (multi-label) or CE; any other stage (or None) uses ``cfg.model.loss`` (for cxr-hash's
    ``hash`` stage that is ``pairwise_bayes``, whose ``classification`` term keeps L_cls)."""
    if stage in ("classifier", "probe"):
        return BCELoss() if cfg.data.multilabel else CrossEntropyLoss()
    return create_loss(cfg.model.loss)
