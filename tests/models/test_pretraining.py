import pytest
import torch

from lungsearch.losses import InfoNCELoss, SubgraphTotalLoss
from lungsearch.models.pretraining import CLIPHead, SubgraphCLIP, reweight_edges


def _feats(b=5, n=9, t=7, di=24, dt=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    txt = torch.randn(b, t, dt, generator=g)
    txt[0, 4:] = 0  # a shorter report
    return {"image_pooled": torch.randn(b, di, generator=g), "image_tokens": torch.randn(b, n, di, generator=g),
            "report_pooled": torch.randn(b, dt, generator=g), "report_tokens": txt}


def test_reweight_edges_keeps_shape_and_shrinks_noisy_far_edges():
    torch.manual_seed(0)
    nodes = torch.nn.functional.normalize(torch.randn(2, 6, 8), dim=-1)
    mask = torch.ones(2, 6, dtype=torch.bool)
    adj = (nodes @ nodes.transpose(1, 2)).clamp_min(0)
    new = reweight_edges(nodes, adj, mask)
    assert new.shape == adj.shape and torch.isfinite(new).all()
    # A' = (A + (1 - score) A)/2 with score in [0, 1]: between A/2 and A
    assert (new <= adj + 1e-6).all() and (new >= adj / 2 - 1e-6).all()


@pytest.mark.parametrize("n,t", [(4, 5), (9, 7)])
def test_subgraph_clip_outputs(n, t):
    torch.manual_seed(0)
    mod = SubgraphCLIP(24, 16, embedding_dim=12, node_dim=8, threshold=0.5)
    out = mod(_feats(n=n, t=t))
    assert out["image_embedding"].shape == (5, 12) and out["text_embedding"].shape == (5, 12)
    assert out["image_nodes"].shape == (5, n, 8) and out["text_nodes"].shape == (5, t, 8)
    assert out["att_image"].shape == (5, n, 8) and out["att_text"].shape == (5, t, 8)
    assert out["cluster"].shape == (5, 12)
    assert not out["text_node_mask"][0, 4:].any()  # padding never becomes a node
    assert out["image_node_mask"].any(1).all() and out["text_node_mask"].any(1).all()
    # the threshold drops some nodes
    assert out["image_node_mask"].float().mean() < 1.0


def test_subgraph_losses_train_every_part():
    torch.manual_seed(0)
    mod = SubgraphCLIP(24, 16, embedding_dim=12, node_dim=8)
    loss = SubgraphTotalLoss(tau1=0.1, tau2=0.2, k=2)
    total = loss(mod(_feats()))
    assert set(loss.parts) == {"l1", "l2", "l3", "global", "loss"}
    assert all(v == v and v >= 0 for v in loss.parts.values())
    total.backward()
    for name, p in mod.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_l1_prefers_matching_pairs():
    """With report nodes equal to their image's nodes, matched pairs score highest: L1 is far
    lower than for shuffled reports."""
    torch.manual_seed(0)
    loss = SubgraphTotalLoss()
    nodes = torch.nn.functional.normalize(torch.randn(6, 5, 8), dim=-1)
    mask = torch.ones(6, 5, dtype=torch.bool)
    out = {"image_nodes": nodes, "text_nodes": nodes, "image_node_mask": mask, "text_node_mask": mask}
    shuffled = dict(out, text_nodes=nodes[torch.tensor([1, 2, 3, 4, 5, 0])])
    assert loss.l1(out) < loss.l1(shuffled) - 1.0


def test_one_modality_query_gives_embeddings_only():
    mod = SubgraphCLIP(24, 16, embedding_dim=12, node_dim=8)
    f = _feats()
    out = mod({"report_pooled": f["report_pooled"], "report_tokens": f["report_tokens"]})
    assert set(out) == {"logit_scale", "text_embedding"}


def test_clip_baseline_infonce():
    torch.manual_seed(0)
    head = CLIPHead(24, 16, 12)
    out = head(_feats())
    l = InfoNCELoss()(out)
    l.backward()
    assert head.logit_scale.grad is not None and head.img.weight.grad is not None
    aligned = {"image_embedding": out["image_embedding"].detach(), "text_embedding": out["image_embedding"].detach(), "logit_scale": torch.tensor(10.0)}
    assert InfoNCELoss()(aligned) < InfoNCELoss()(dict(aligned, text_embedding=aligned["text_embedding"].roll(1, 0)))
