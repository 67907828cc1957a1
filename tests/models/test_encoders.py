import pytest
import torch
import torch.nn.functional as F

from lungsearch.errors import ConfigError
from lungsearch.models.encoders import (
    GeM,
    HashedTextEncoder,
    HFTextEncoder,
    LDCEncoder,
    ResNetEncoder,
    ViTEncoder,
    token_mask,
)


def test_gem_with_p_one_equals_average_pooling():
    x = torch.rand(3, 8, 5, 7) + 0.01
    gem = GeM(p=1.0)
    assert torch.allclose(gem(x), F.adaptive_avg_pool2d(x, 1).flatten(1), atol=1e-6)


def test_gem_p_is_learnable_and_large_p_tends_to_max():
    x = torch.rand(2, 4, 6, 6) + 0.01
    gem = GeM(p=3.0)
    gem(x).sum().backward()
    assert gem.p.grad is not None and torch.isfinite(gem.p.grad)
    big = GeM(p=200.0, learnable=False)
    assert torch.allclose(big(x), x.amax(dim=(-2, -1)), rtol=0.05)


@pytest.mark.parametrize(
    "arch,dim,pool",
    [("resnet18", 512, "avg"), ("resnet18", 512, "gem"), ("resnet34", 512, "avg"), ("resnet50", 2048, "gem")],
)
@pytest.mark.parametrize("size", [64, 96])
def test_resnet_shapes(arch, dim, pool, size):
    enc = ResNetEncoder(arch, pool=pool)
    enc.eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 1, size, size))
    side = -(-size // 32)
    assert out["pooled"].shape == (2, dim)
    assert out["fmap"].shape == (2, dim, side, side)
    assert out["tokens"].shape == (2, side * side, dim)


def test_resnet_loads_local_torchvision_weights_file(tmp_path):
    import torchvision

    rgb = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(rgb.state_dict(), path)
    enc = ResNetEncoder("resnet18", pretrained=str(path))
    # RGB conv1 summed over its input channels: same response to a replicated grey image
    assert torch.allclose(enc.body[0].weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(enc.body[4][0].conv1.weight, rgb.layer1[0].conv1.weight)
    with pytest.raises(ConfigError, match="not found"):
        ResNetEncoder("resnet18", pretrained=str(tmp_path / "missing.pth"))
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="do not fit"):
        ResNetEncoder("resnet18", pretrained=str(tmp_path / "bad.pth"))


def test_resnet_freeze():
    enc = ResNetEncoder("resnet18", freeze=True)
    assert not any(p.requires_grad for p in enc.body.parameters())


@pytest.mark.parametrize("size", [32, 64])
def test_small_vit_shapes_and_grads(size):
    enc = ViTEncoder(size, patch=16, layers=1, heads=2, hidden=32, mlp=64)
    out = enc(torch.randn(2, 1, size, size))
    n = (size // 16) ** 2
    assert out["pooled"].shape == (2, 32) and out["tokens"].shape == (2, n, 32)
    assert out["fmap"].shape == (2, 32, size // 16, size // 16)
    out["pooled"].sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_vit_rejects_size_not_multiple_of_patch():
    with pytest.raises(ConfigError):
        ViTEncoder(40, patch=16, layers=1, heads=2, hidden=32, mlp=64)


@pytest.mark.parametrize("size", [64, 128])
def test_ldc_shapes_and_grads(size):
    enc = LDCEncoder(size, blocks=3)
    out = enc(torch.randn(2, 1, size, size))
    assert out["pooled"].shape == (2, 128)
    assert out["fmap"].shape == (2, 64, size // 8, size // 8)
    out["pooled"].sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    with pytest.raises(ConfigError):
        enc(torch.randn(2, 1, size + 8, size + 8))


def test_hashed_text_encoder_zero_padding_and_grads():
    enc = HashedTextEncoder(dim=32, buckets=128)
    out = enc(["left lower lobe opacity", "normal", ""])
    assert out["pooled"].shape == (3, 32) and out["tokens"].shape[0] == 3
    mask = token_mask(out["tokens"])
    assert mask.sum(1).tolist() == [4, 1, 1]
    out["pooled"].sum().backward()
    assert enc.embed.weight.grad is not None


@pytest.fixture(scope="module")
def minilm():
    return HFTextEncoder(max_tokens=16)


def test_minilm_is_offline_frozen_and_deterministic(minilm):
    assert minilm.out_dim == 384
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.bert.training  # frozen = no dropout
    a = minilm(["no acute disease", "a much longer report " * 10])
    b = minilm(["no acute disease"])
    assert a["tokens"].shape[1] == 16  # truncated at max_tokens
    assert torch.allclose(a["pooled"][0], b["pooled"][0], atol=1e-5)  # padding does not leak
    assert token_mask(a["tokens"])[0].sum() == b["tokens"].shape[1]
    assert "no acute disease" in minilm._cache


def test_minilm_fine_tuning_path():
    enc = HFTextEncoder(max_tokens=8, freeze=False, pooling="cls")
    enc.train()
    enc(["effusion"])["pooled"].sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing  # no unused parameters (DDP would fail on them)


def test_hf_bert_needs_a_directory():
    with pytest.raises(ConfigError):
        HFTextEncoder(path="/nonexistent/bert")
