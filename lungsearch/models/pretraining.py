"""Image-report pretraining parts (paper 4): the CLIP/InfoNCE baseline and subgraph matching.

The module here holds every *trained* piece (projections, GCNs, cross-attention, the inner
kernel's W) and turns a batch's features into the tensors the losses need; the losses
themselves (:mod:`lungsearch.losses`: ``infonce``, ``subgraph_total``) are parameter-free, so
an optimiser over ``model.parameters()`` trains everything.

Outputs of :meth:`SubgraphCLIP.forward` (``B`` samples, ``M`` image nodes, ``N`` text nodes):
``image_embedding`` / ``text_embedding`` [B, E] (L2-normalised globals I*, T*),
``image_nodes`` [B, M, d] / ``text_nodes`` [B, N, d] (sub-graph centre nodes, normalised),
``image_node_mask`` / ``text_node_mask`` [B, M] / [B, N] (nodes kept by the threshold),
``att_image`` [B, M, d] / ``att_text`` [B, N, d] (cross-attention, eq. 7), ``cluster`` [B, E]
(inner-kernel fusion C*, eq. 9).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lungsearch.errors import ConfigError
from lungsearch.models.encoders import token_mask
from lungsearch.models.registry import PRETRAINING, BuildContext, take_params

__all__ = ["CLIPHead", "SubgraphCLIP", "GCNLayer", "drop_weak_nodes", "reweight_edges"]


class CLIPHead(nn.Module):
    """CLIP baseline: linear projections of the pooled image and report features to the shared
    embedding space, plus a learnable temperature (``logit_scale``, CLIP's init 1/0.07)."""

    def __init__(self, image_dim: int, text_dim: int, embedding_dim: int) -> None:
        super().__init__()
        self.img = nn.Linear(image_dim, embedding_dim)
        self.txt = nn.Linear(text_dim, embedding_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"logit_scale": self.logit_scale.exp().clamp(max=100.0)}
        if features.get("image_pooled") is not None:
            out["image_embedding"] = F.normalize(self.img(features["image_pooled"]), dim=-1)
        if features.get("report_pooled") is not None:
            out["text_embedding"] = F.normalize(self.txt(features["report_pooled"]), dim=-1)
        return out


class GCNLayer(nn.Module):
    """``P' = P + ReLU(Â P W)`` with ``Â`` the row-normalised non-negative adjacency (residual so
    that weak nodes keep their own content)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, nodes: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        a = adj.clamp_min(0)
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        return nodes + F.relu(a @ self.lin(nodes))


def _role(nodes: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """G(p_m, A) = A p_mᵀ read as each node's similarity profile over the graph, as a
    distribution: softmax over the graph's nodes of ``p_m · p_n``."""
    return torch.softmax(nodes @ nodes.transpose(-1, -2) / math.sqrt(nodes.shape[-1]), dim=-1)


@torch.no_grad()
def reweight_edges(
    nodes: torch.Tensor,
    adj: torch.Tensor,
    mask: torch.Tensor,
    noise: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Edge update ``A' = (A + (1 - (ρ_n + ρ_a + d)/3) A) / 2`` (paper 4, eq. 1-3).

    * ρ_n (eq. 1): change of the entropy of a node's role distribution G when noise is added
      to the node; an edge gets the mean ρ_n of its two ends.
    * ρ_a (eq. 2): ``|H(m,n) - H(m,n')| + |H(m,n') - H(m',n)|`` with H the cross-entropy of
      the two ends' role distributions, ``'`` = with noise.
    * d (eq. 3): Euclidean distance of the two nodes.
    Each term is divided by its maximum over the sample's valid edges so the three are
    comparable in [0, 1] (the paper averages them without saying how they are scaled).
    No gradient: these are data-dependent weights.
    """
    eps = 1e-12
    out_dtype = adj.dtype
    nodes, adj = nodes.float(), adj.float()  # entropies and logs in float32 even under autocast
    noisy = (
        nodes
        + noise * torch.randn(nodes.shape, generator=generator, device=nodes.device, dtype=nodes.dtype) * nodes.std()
    )
    # role distributions with the node itself perturbed (others clean)
    g = _role(nodes, adj)
    g_noisy = torch.softmax(noisy @ nodes.transpose(-1, -2) / math.sqrt(nodes.shape[-1]), dim=-1)
    ent = -(g * (g + eps).log()).sum(-1)
    ent_n = -(g_noisy * (g_noisy + eps).log()).sum(-1)
    rho_n = (ent_n - ent).abs()  # [B, M]
    logg, logg_n = (g + eps).log(), (g_noisy + eps).log()
    h = -(g[:, :, None, :] * logg[:, None, :, :]).sum(-1)  # H(m, n)
    h_mn_ = -(g[:, :, None, :] * logg_n[:, None, :, :]).sum(-1)  # H(m, n')
    h_m_n = -(g_noisy[:, :, None, :] * logg[:, None, :, :]).sum(-1)  # H(m', n)
    rho_a = (h - h_mn_).abs() + (h_mn_ - h_m_n).abs()
    dist = torch.cdist(nodes, nodes)
    pair = mask[:, :, None] & mask[:, None, :]

    def scaled(x: torch.Tensor) -> torch.Tensor:
        mx = torch.where(pair, x, torch.zeros_like(x)).flatten(1).max(1).values.clamp_min(eps)
        return x / mx[:, None, None]

    rho_edge = scaled((rho_n[:, :, None] + rho_n[:, None, :]) / 2)
    score = (rho_edge + scaled(rho_a) + scaled(dist)) / 3
    return ((adj + (1 - score) * adj) / 2).to(out_dtype)


def drop_weak_nodes(score: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """Node mask ``[B, N]`` keeping, per sample, its valid nodes (``mask``) except the
    ``round(fraction × valid)`` with the lowest ``score``; at least one node stays, and a sample
    whose every node is padding keeps none. Ties go to the lower index (a stable sort)."""
    n_valid = mask.sum(-1)
    keep_n = torch.clamp(n_valid - torch.round(fraction * n_valid.to(torch.float32)).long(), min=1)
    keep_n = torch.minimum(keep_n, n_valid)
    ranked = score.float().masked_fill(~mask, float("-inf"))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
    )
    return mask & (rank < keep_n[:, None])


class SubgraphCLIP(nn.Module):
    """Subgraph matching + cross-attention + sample-pair clustering (paper 4, §3.2-3.4).

    Per modality: tokens are projected to width ``node_dim`` and normalised; ``A = P Pᵀ``;
    ``P' = GCN(P, A)``; ``A'`` from :func:`reweight_edges`; ``P'' = GCN(P', A')``. Then the
    percentage threshold of §3.2.2 ("对于 A' 设置一定的阈值去除低质量边和低质量节点。阈值的设置
    采用百分比的形式"): the fraction ``threshold`` of each sample's valid edges with the lowest
    ``A'`` weight is removed (Table 9: 30 % is best, the default), and the same fraction of its
    nodes, those with the lowest weighted degree over the edges left (a node's summed ``A'``
    weight to the others: condition 1's ρ_n and the other two conditions enter through
    ``A'``), together with their edges; at least one node stays. The paper gives one percentage
    for both and no node rule; "a node left without edges" would remove nothing, since in a
    complete graph thinned by 30-50 % every node keeps some edge (the kept fraction was 1.0).
    ``node_drop`` sets the node fraction apart (``None``: equal to ``threshold``; ``0``: no node
    removal). ``threshold: 0`` is Table 9's "0 %" row (no sparsification). Each remaining node
    is the centre of its sub-graph (a GCN over its kept edges) and its ``P''`` row is the
    cross-modal-graph node. The cross-attention of eq. 7
    (``W_q``, ``W_k``, ``W_v``; a softmax over the other modality's nodes, which eq. 7 omits)
    gives ``att_image`` / ``att_text``. The inner kernel of eq. 9 with learnable ``W`` gives
    the fused pair vector ``C*`` from the global embeddings (σ, β = standard deviations of the
    batch's image / text globals).
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        embedding_dim: int,
        node_dim: int = 128,
        threshold: float = 0.3,
        noise: float = 0.1,
        node_drop: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= threshold < 1.0:
            raise ConfigError("subgraph_clip: threshold is the fraction of edges removed, in [0, 1)")
        if node_drop is not None and not 0.0 <= node_drop < 1.0:
            raise ConfigError("subgraph_clip: node_drop is the fraction of nodes removed, in [0, 1)")
        self.clip = CLIPHead(image_dim, text_dim, embedding_dim)
        self.node_img = nn.Linear(image_dim, node_dim)
        self.node_txt = nn.Linear(text_dim, node_dim)
        self.gcn_img = nn.ModuleList([GCNLayer(node_dim), GCNLayer(node_dim)])
        self.gcn_txt = nn.ModuleList([GCNLayer(node_dim), GCNLayer(node_dim)])
        self.wq = nn.Linear(node_dim, node_dim, bias=False)
        self.wk = nn.Linear(node_dim, node_dim, bias=False)
        self.wv = nn.Linear(node_dim, node_dim, bias=False)
        self.inner_w = nn.Parameter(torch.eye(embedding_dim))
        self.threshold = threshold
        self.node_drop = threshold if node_drop is None else node_drop
        self.noise = noise
        self.node_dim = node_dim

    def _graph(
        self, tokens: torch.Tensor, mask: torch.Tensor, proj: nn.Linear, gcns: nn.ModuleList
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = F.normalize(proj(tokens), dim=-1) * mask[..., None]
        pair = mask[:, :, None] & mask[:, None, :]
        adj = (p @ p.transpose(1, 2)) * pair
        p1 = gcns[0](p, adj) * mask[..., None]
        adj2 = reweight_edges(p1.detach(), adj.detach(), mask, self.noise) * pair
        # P'' = GCN(P', A') is taken per sub-graph below (the centres): the same layer over the kept edges
        eye = torch.eye(adj2.shape[-1], dtype=torch.bool, device=adj2.device)
        off = pair & ~eye
        kept_edges = off
        if self.threshold > 0:
            # remove the lowest `threshold` fraction of each sample's valid off-diagonal edges
            # (quantiles need float32/64: adj2 is half under CUDA autocast)
            vals = torch.where(off, adj2, torch.full_like(adj2, float("nan"))).flatten(1).float()
            thr = torch.nanquantile(vals, self.threshold, dim=1).to(adj2.dtype)
            thr = torch.nan_to_num(thr, nan=float("inf"))
            kept_edges = off & (adj2 >= thr[:, None, None])
        node_mask = drop_weak_nodes(torch.where(kept_edges, adj2, torch.zeros_like(adj2)).sum(-1), mask, self.node_drop)
        kept_edges = kept_edges & node_mask[:, :, None] & node_mask[:, None, :]  # a removed node takes its edges along
        # sub-graph centre: GCN over the kept edges (self loop included)
        sub = torch.where(kept_edges | (eye & mask[:, :, None]), adj2, torch.zeros_like(adj2))
        centres = F.normalize(gcns[1](p1, sub), dim=-1) * node_mask[..., None]
        return centres, node_mask

    def _cross(self, q_nodes: torch.Tensor, kv_nodes: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.wq(q_nodes), self.wk(kv_nodes), self.wv(kv_nodes)
        s = q @ k.transpose(1, 2) / math.sqrt(self.node_dim)
        s = s.masked_fill(~kv_mask[:, None, :], float("-inf"))
        return F.normalize(torch.softmax(s, dim=-1) @ v, dim=-1)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.clip(features)
        img_tok, txt_tok = features.get("image_tokens"), features.get("report_tokens")
        if img_tok is None or txt_tok is None:
            return out  # one modality only (serving an image or a text query): embeddings suffice
        img_mask = torch.ones(img_tok.shape[:2], dtype=torch.bool, device=img_tok.device)
        txt_mask = token_mask(txt_tok)
        txt_mask[:, 0] |= ~txt_mask.any(1)
        i_nodes, i_mask = self._graph(img_tok, img_mask, self.node_img, self.gcn_img)
        t_nodes, t_mask = self._graph(txt_tok, txt_mask, self.node_txt, self.gcn_txt)
        out.update(
            image_nodes=i_nodes,
            text_nodes=t_nodes,
            image_node_mask=i_mask,
            text_node_mask=t_mask,
            att_image=self._cross(i_nodes, t_nodes, t_mask),
            att_text=self._cross(t_nodes, i_nodes, i_mask),
        )
        # eq. 9: F = (T*ᵀ W I*) I*;  C* = exp(-|F-I|²/2σ²) I* + exp(-|F-T|²/2β²) T*
        i_g, t_g = out["image_embedding"], out["text_embedding"]
        f = ((t_g @ self.inner_w) * i_g).sum(-1, keepdim=True) * i_g
        sigma = i_g.std().clamp_min(1e-3) if i_g.shape[0] > 1 else i_g.new_tensor(1.0)
        beta = t_g.std().clamp_min(1e-3) if t_g.shape[0] > 1 else t_g.new_tensor(1.0)
        c = (
            torch.exp(-((f - i_g) ** 2).sum(-1, keepdim=True) / (2 * sigma**2)) * i_g
            + torch.exp(-((f - t_g) ** 2).sum(-1, keepdim=True) / (2 * beta**2)) * t_g
        )
        out["cluster"] = c
        return out


@PRETRAINING.register("clip")
def _clip(params: dict[str, Any], ctx: BuildContext) -> CLIPHead:
    take_params("clip", params, {})
    if not ctx.dims.get("image") or not ctx.dims.get("text"):
        raise ConfigError("pretraining 'clip' needs an image_encoder and a text_encoder")
    return CLIPHead(ctx.dims["image"], ctx.dims["text"], ctx.embedding_dim)


@PRETRAINING.register("subgraph_clip")
def _subgraph(params: dict[str, Any], ctx: BuildContext) -> SubgraphCLIP:
    # threshold 0.3: paper 4 Table 9's best (30 % of the edges removed); it was 0.5 before issue 15
    p = take_params(
        "subgraph_clip",
        params,
        {"tau1": 0.1, "tau2": 0.2, "node_dim": 128, "threshold": 0.3, "node_drop": None, "noise": 0.1, "k": 3},
    )
    if not ctx.dims.get("image") or not ctx.dims.get("text"):
        raise ConfigError("pretraining 'subgraph_clip' needs an image_encoder and a text_encoder")
    m = SubgraphCLIP(
        ctx.dims["image"],
        ctx.dims["text"],
        ctx.embedding_dim,
        p["node_dim"],
        p["threshold"],
        p["noise"],
        p["node_drop"],
    )
    # temperatures and K belong to the loss; kept here too so a loss built without params agrees
    m.loss_defaults = {"tau1": p["tau1"], "tau2": p["tau2"], "k": p["k"]}
    return m
