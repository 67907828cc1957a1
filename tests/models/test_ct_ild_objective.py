"""Paper 3's objective: the margin contrastive loss (margin 0.7, Euclidean distance) is what the
shipped ct-ild profile trains with; SupCon is a variant by config."""

import pytest
import torch

from lungsearch.config import CONFIG_DIR, load_profile
from lungsearch.losses import ContrastiveLoss, SupConLoss, loss_for_stage


@pytest.mark.parametrize("name", ["ct-ild.yaml", "ct-ild.gpu.yaml"])
def test_ct_ild_trains_with_the_margin_contrastive_loss(name):
    cfg = load_profile(CONFIG_DIR / name)
    loss = loss_for_stage(cfg, None)  # ct-ild has one stage ("train")
    assert isinstance(loss, ContrastiveLoss) and loss.margin == pytest.approx(0.7)
    # on unit embeddings: a different-label pair closer than the margin is pushed apart,
    # a same-label pair is pulled by its squared Euclidean distance
    emb = torch.tensor([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0]])  # |e0 - e1| = 0.283, |e0 - e2| = 1.414
    labels = torch.tensor([0, 1, 0])
    d01 = float((emb[0] - emb[1]).norm())
    d12 = float((emb[1] - emb[2]).norm())
    d02 = float((emb[0] - emb[2]).norm())
    per_pair = [0.5 * max(0.0, 0.7 - d01) ** 2, 0.5 * max(0.0, 0.7 - d12) ** 2, 0.5 * d02**2]
    assert float(loss({"embedding": emb}, labels)) == pytest.approx(2 * sum(per_pair) / 6, rel=1e-5)


def test_ct_ild_objective_reaches_the_model_and_supcon_is_a_variant():
    from lungsearch.models import create_model

    torch.manual_seed(0)
    cfg = load_profile("ct-ild")
    model = create_model(cfg).train()
    out = model(images=torch.randn(4, 1, 64, 64), radiomics=torch.randn(4, model.radiomics.out_dim))
    loss = loss_for_stage(cfg, None)(out, torch.tensor([0, 0, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and model.fusion is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_encoder.parameters())
    variant = load_profile("ct-ild", overrides=["model.loss={name: supcon, params: {temperature: 0.1}}"])
    assert isinstance(loss_for_stage(variant, None), SupConLoss)
