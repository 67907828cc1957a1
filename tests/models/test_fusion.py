import pytest
import torch

from lungsearch.errors import InvalidRequestError
from lungsearch.models.fusion import ConcatFusion, CrossModalAttention, OuterProductFusion, PooledFusion


def _tokens(b, n, t, di, dt, pad_from=None):
    txt = torch.randn(b, t, dt)
    if pad_from is not None:
        txt[-1, pad_from:] = 0  # last report is shorter
    return {"image_tokens": torch.randn(b, n, di), "report_tokens": txt}


@pytest.mark.parametrize("n,t", [(4, 6), (16, 11)])
def test_cma_shapes(n, t):
    cma = CrossModalAttention(32, 24, dim=16)
    out = cma(_tokens(3, n, t, 32, 24))
    assert out["fused"].shape == (3, 16)
    assert out["sequence"].shape == (3, n + t, 16)
    assert out["sequence_mask"].all()
    assert out["attention"].shape == (3, n, t)
    assert torch.allclose(out["attention"].sum(-1), torch.ones(3, n), atol=1e-5)


def test_cma_ignores_padding_tokens_and_keeps_valid_prefix():
    torch.manual_seed(0)
    cma = CrossModalAttention(8, 8, dim=8)
    feats = _tokens(2, 4, 6, 8, 8, pad_from=3)
    out = cma(feats)
    assert out["attention"][1, :, 3:].abs().max() == 0
    assert out["sequence_mask"][1].tolist() == [True] * 7 + [False] * 3
    # the short report alone gives the same fused vector
    single = {"image_tokens": feats["image_tokens"][1:], "report_tokens": feats["report_tokens"][1:, :3]}
    assert torch.allclose(cma(single)["fused"], out["fused"][1:], atol=1e-5)


def test_cma_gradients_and_concat_baseline():
    for cls in (CrossModalAttention, ConcatFusion):
        mod = cls(8, 6, dim=4)
        out = mod(_tokens(2, 3, 5, 8, 6))
        out["sequence"].sum().backward()
        assert all(p.grad is not None for p in mod.parameters()), cls.__name__


def test_cma_needs_both_modalities():
    with pytest.raises(InvalidRequestError):
        CrossModalAttention(8, 8)({"image_tokens": torch.randn(1, 2, 8)})


@pytest.mark.parametrize("q,p", [(512, 42), (64, 9)])
def test_outer_product_shapes(q, p):
    fus = OuterProductFusion(q, p, out_dim=32)
    assert fus.r_dim == (-(-q // 8)) * (-(-p // 8))
    x, y = torch.randn(3, q), torch.randn(3, p)
    r = fus.correlation(x, y)
    assert r.shape == (3, fus.r_dim)
    out = fus({"image_pooled": x, "radiomics": y})
    assert out["fused"].shape == (3, 32)
    out["fused"].sum().backward()
    assert all(prm.grad is not None for prm in fus.parameters())


def test_outer_product_depends_on_the_interaction():
    torch.manual_seed(0)
    fus = OuterProductFusion(16, 8, out_dim=4).eval()
    x, y = torch.randn(2, 16), torch.randn(2, 8)
    # R is built from x_i * y_j: scaling x by -1 and y by -1 leaves z unchanged
    assert torch.allclose(fus.correlation(x, y), fus.correlation(-x, -y), atol=1e-6)


def test_pooled_fusion_concatenates_in_fixed_order():
    fus = PooledFusion({"image": 3, "radiomics": 2})
    out = fus({"image_pooled": torch.ones(1, 3), "radiomics": torch.zeros(1, 2)})
    assert out["fused"].tolist() == [[1, 1, 1, 0, 0]]
