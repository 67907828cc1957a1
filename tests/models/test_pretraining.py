import pytest
import torch

from lungsearch.losses import InfoNCELoss, SubgraphTotalLoss
from lungsearch.models.pretraining import CLIPHead, SubgraphCLIP, reweight_edges


def _feats(b=5, n=9, t=7, di=24, dt=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    txt = torch.randn(b, t, dt, generator=g)
    txt[0, 4:] = 0  # a shorter report
    return {
        "image_pooled": torch.randn(b, di, generator=g),
        "image_tokens": torch.randn(b, n, di, generator=g),
        "report_pooled": torch.randn(b, dt, generator=g),
        "report_tokens": txt,
    }


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
    loss = InfoNCELoss()(out)
    loss.backward()
    assert head.logit_scale.grad is not None and head.img.weight.grad is not None
    aligned = {
        "image_embedding": out["image_embedding"].detach(),
        "text_embedding": out["image_embedding"].detach(),
        "logit_scale": torch.tensor(10.0),
    }
    assert InfoNCELoss()(aligned) < InfoNCELoss()(dict(aligned, text_embedding=aligned["text_embedding"].roll(1, 0)))


def test_node_removal_removes_nodes_at_init():
    """Issue 15: "a node left without edges" removed nothing (every node of a complete graph
    thinned by 30-50 % keeps an edge: kept fraction 1.0). The percentage threshold now removes
    that fraction of the nodes too, from an untrained model on ReLU-like (non-negative) tokens."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    feats = _feats(b=4, n=16, t=12)
    feats["image_tokens"] = torch.rand(4, 16, 24, generator=g)  # ResNet tokens are post-ReLU
    for threshold, kept in ((0.3, 11 / 16), (0.5, 8 / 16)):
        mod = SubgraphCLIP(24, 16, embedding_dim=12, node_dim=8, threshold=threshold)
        out = mod(feats)
        frac = out["image_node_mask"].float().mean(1)
        assert torch.allclose(frac, torch.full((4,), kept)), (threshold, frac)
        # text: padding is never a node; of row 0's 4 valid tokens round(threshold * 4) go
        assert int(out["text_node_mask"][0].sum()) == 4 - round(threshold * 4)
        # removed nodes are zero rows of the cross-modal graph
        assert (out["image_nodes"][~out["image_node_mask"]] == 0).all()
    # threshold 0 (Table 9's "0 %"): no edge and no node removed
    out = SubgraphCLIP(24, 16, embedding_dim=12, node_dim=8, threshold=0.0)(feats)
    assert bool(out["image_node_mask"].all())


def test_drop_weak_nodes_ranks_by_score_and_keeps_one():
    from lungsearch.models.pretraining import drop_weak_nodes

    score = torch.tensor([[0.1, 0.9, 0.5, 0.3], [5.0, 1.0, 2.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False], [True, False, False, False]])
    got = drop_weak_nodes(score, mask, 0.5)
    assert got.tolist() == [[False, True, True, False], [True, False, False, False], [True, False, False, False]]
    assert drop_weak_nodes(score, torch.zeros_like(mask), 0.5).sum() == 0  # all padding: nothing kept
    assert drop_weak_nodes(score, mask, 0.0).equal(mask)


def test_subgraph_clip_defaults_to_the_papers_30_percent():
    from lungsearch.models.registry import PRETRAINING, BuildContext

    ctx = BuildContext(embedding_dim=12)
    ctx.dims.update(image=24, text=16)
    m = PRETRAINING.build("subgraph_clip", {}, ctx)
    assert m.threshold == 0.3 and m.node_drop == 0.3
    m = PRETRAINING.build("subgraph_clip", {"threshold": 0.5, "node_drop": 0.0}, ctx)
    assert m.threshold == 0.5 and m.node_drop == 0.0


def test_loss_term_weights_for_the_ablations():
    torch.manual_seed(0)
    mod = SubgraphCLIP(24, 16, embedding_dim=12, node_dim=8)
    out = mod(_feats())
    full = SubgraphTotalLoss(global_weight=0)
    total = full(out).detach()
    assert set(full.parts) == {"l1", "l2", "l3", "loss"}  # eq. 12 as printed
    assert float(total) == pytest.approx(full.parts["l1"] + full.parts["l2"] + full.parts["l3"], rel=1e-5)
    for drop in ("l1", "l2", "l3"):
        loss = SubgraphTotalLoss(global_weight=0, **{f"{drop}_weight": 0.0})
        t = loss(out).detach()
        assert drop not in loss.parts
        assert float(t) == pytest.approx(sum(v for k, v in full.parts.items() if k not in (drop, "loss")), rel=1e-5)
    glob = SubgraphTotalLoss(global_weight=1, l1_weight=0)  # Table 6's "global matching"
    glob(out)
    assert set(glob.parts) == {"global", "l2", "l3", "loss"}
    from lungsearch.errors import ConfigError

    with pytest.raises(ConfigError):
        SubgraphTotalLoss(global_weight=0, l1_weight=0, l2_weight=0, l3_weight=0)
