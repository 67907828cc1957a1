import math

import pytest
import torch

from lungsearch.config import Component, load_profile
from lungsearch.errors import ConfigError, InvalidRequestError
from lungsearch.losses import (
    BCELoss,
    ContrastiveLoss,
    CrossEntropyLoss,
    SupConLoss,
    WeightedPairwiseBayesLoss,
    create_loss,
    loss_for_stage,
    similarity_matrix,
)


def test_similarity_matrix_single_and_multi_label():
    assert similarity_matrix(torch.tensor([0, 1, 0])).tolist() == [
        [True, False, True],
        [False, True, False],
        [True, False, True],
    ]
    multi = torch.tensor([[1, 0, 1], [0, 1, 1], [0, 1, 0]])
    assert similarity_matrix(multi).tolist() == [[True, True, False], [True, True, True], [False, True, True]]


def _codes_and_labels(seed=0, n=8, k=32):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])[:n]
    proto = torch.sign(torch.randn(3, k, generator=g))
    agree = proto[labels]  # same class -> same code, different class -> different code
    contradict = agree[torch.randperm(n, generator=g)] * -1
    return agree, contradict, labels


def test_weighted_pairwise_loss_lower_for_codes_that_agree_with_s():
    agree, contradict, labels = _codes_and_labels()
    loss = WeightedPairwiseBayesLoss()
    a = loss({"hash_relaxed": agree}, labels)
    c = loss({"hash_relaxed": contradict}, labels)
    assert a < c
    # swap roles: the similar pairs get maximally dissimilar codes
    anti = agree.clone()
    anti[labels == 0] *= -1
    assert loss({"hash_relaxed": anti}, labels) > a


def test_weighted_pairwise_loss_hand_computed():
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    alpha = 0.5
    loss = WeightedPairwiseBayesLoss(alpha=alpha)
    # ordered pairs i != j: 6; similar: (0,2),(2,0) -> |S1| = 2, |S0| = 4
    theta = (b @ b.T).tolist()
    total = 0.0
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            s = float(labels[i] == labels[j])
            w = 6 / 2 if s else 6 / 4
            total += w * (math.log1p(math.exp(alpha * theta[i][j])) - alpha * s * theta[i][j])
    assert float(loss({"hash_relaxed": b}, labels)) == pytest.approx(total / 6, rel=1e-6)
    assert loss.parts["quantization"] == 0.0


def test_pairwise_quantization_and_classification_terms():
    b = torch.tensor([[0.5, -0.5], [0.2, 0.9]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = WeightedPairwiseBayesLoss(quantization=1.0, classification=1.0)
    loss({"hash_relaxed": b, "logits": torch.zeros(2, 2)}, y)
    assert loss.parts["quantization"] == pytest.approx(((b.abs() - 1) ** 2).mean().item())
    assert loss.parts["bce"] == pytest.approx(math.log(2), rel=1e-6)


def test_contrastive_margin_hand_computed():
    emb = torch.tensor([[0.0, 0.0], [0.3, 0.4], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # pairs (ordered, i != j): d(0,1)=0.5 same; d(0,2)=1.0 diff (>0.7 -> 0); d(1,2)=sqrt(0.49+0.16)=0.806 diff -> 0
    expected = 2 * (0.5 * 0.25) / 6
    assert float(ContrastiveLoss(margin=0.7)({"embedding": emb}, labels)) == pytest.approx(expected, rel=1e-5)
    close = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.5, 0.0]])
    # same pair at 0; different pairs at 0.5 < 0.7: 4 * 0.5 * 0.2^2 / 6
    assert float(ContrastiveLoss()({"embedding": close}, labels)) == pytest.approx(4 * 0.5 * 0.04 / 6, rel=1e-4)


def test_supcon_matches_reference_loop():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    tau = 0.1
    ref, anchors = 0.0, 0
    for a in range(6):
        pos = [p for p in range(6) if p != a and labels[p] == labels[a]]
        if not pos:
            continue
        denom = sum(math.exp(float(emb[a] @ emb[k]) / tau) for k in range(6) if k != a)
        ref += -sum(math.log(math.exp(float(emb[a] @ emb[p]) / tau) / denom) for p in pos) / len(pos)
        anchors += 1
    assert float(SupConLoss(tau)({"embedding": emb}, labels)) == pytest.approx(ref / anchors, rel=1e-5)
    # well-clustered embeddings score lower
    clustered = torch.nn.functional.one_hot(labels, 5).float()
    assert SupConLoss(tau)({"embedding": clustered}, labels) < SupConLoss(tau)({"embedding": emb}, labels)


def test_ce_and_bce():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert float(CrossEntropyLoss()({"logits": logits}, torch.tensor([0, 1]))) == pytest.approx(
        math.log1p(math.exp(-2)), rel=1e-6
    )
    assert float(BCELoss()({"logits": torch.zeros(2, 3)}, torch.tensor([[1, 0, 1], [0, 0, 0]]))) == pytest.approx(
        math.log(2)
    )
    assert float(BCELoss()({"logits": torch.zeros(2, 3)}, torch.tensor([0, 2]))) == pytest.approx(math.log(2))


def test_create_loss_registry_and_errors():
    assert isinstance(create_loss(Component(name="supcon", params={"temperature": 0.2})), SupConLoss)
    with pytest.raises(ConfigError, match="did you mean supcon"):
        create_loss(Component(name="supcom"))
    with pytest.raises(ConfigError, match="unknown param"):
        create_loss(Component(name="ce", params={"smoothing": 0.1}))
    with pytest.raises(InvalidRequestError, match="embedding"):
        SupConLoss()({}, torch.tensor([0]))


@pytest.mark.parametrize("profile", ["cxr-report", "cxr-cnn", "ct-ild", "cxr-clip", "cxr-hash"])
def test_every_profile_loss_builds(profile):
    cfg = load_profile(profile)
    assert create_loss(cfg.model.loss) is not None
    for stage in cfg.train.stages:
        assert loss_for_stage(cfg, stage) is not None
    assert isinstance(loss_for_stage(load_profile("cxr-hash"), "classifier"), BCELoss)
