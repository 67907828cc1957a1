"""Paper 2's torchvision baselines: built offline (from scratch, or from a local state dict), on
1-channel input, as cxr-cnn variants whose row names say how they were initialised."""

from __future__ import annotations

import pytest
import torch

from lungsearch.config import load_profile
from lungsearch.errors import ConfigError
from lungsearch.models import create_model
from lungsearch.models.baselines import TorchvisionEncoder
from lungsearch.training.recipes import cnn_baselines, variants


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """Any attempt to fetch weights fails the test (the machine is offline by design)."""
    import torch.hub

    def refuse(*a, **k):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("arch,dim", [("vgg16", 4096), ("alexnet", 4096), ("mobilenet_v2", 1280)])
def test_from_scratch_on_one_channel(arch, dim):
    enc = TorchvisionEncoder(arch).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 1, 64, 64))
    assert out["pooled"].shape == (2, dim) and out["fmap"].ndim == 4 and out["tokens"].shape[0] == 2
    assert enc.out_dim == dim and not enc.pretrained
    first = next(m for m in enc.features_net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1
    # the 1000-way output layer is gone: the profile's head replaces it
    assert not any(isinstance(m, torch.nn.Linear) and m.out_features == 1000 for m in enc.modules())


def test_local_pretrained_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(3)
    ref = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(ref.state_dict(), path)
    enc = TorchvisionEncoder("mobilenet_v2", pretrained=str(path))
    assert enc.pretrained
    first = enc.features_net[0][0]
    assert torch.equal(first.weight, ref.features[0][0].weight.sum(dim=1, keepdim=True))  # RGB kernels summed to grey
    assert torch.equal(enc.features_net[5].conv[1][0].weight, ref.features[5].conv[1][0].weight)
    # a grey image copied to 3 channels gives the ImageNet network's features
    x = torch.rand(1, 1, 64, 64)
    enc.eval()
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(enc(x)["fmap"], ref.features(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
    # a file of another architecture is refused, not half-loaded
    other = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(ConfigError, match="do not fit mobilenet_v2"):
        TorchvisionEncoder("mobilenet_v2", pretrained=str(other))
    with pytest.raises(ConfigError, match="not found"):
        TorchvisionEncoder("mobilenet_v2", pretrained=str(tmp_path / "missing.pth"))


def test_cxr_cnn_variants_name_their_initialisation(tmp_path):
    cfg = load_profile("cxr-cnn")
    rows = variants(cfg)
    assert [v.name for v in rows] == [
        "LDC-Model (ours)",
        "VGG16 (from scratch)",
        "VGG19 (from scratch)",
        "AlexNet (from scratch)",
        "ResNet50 (from scratch)",
        "MobileNetV2 (from scratch)",
    ]
    assert rows[0].main and not any(v.main for v in rows[1:])
    w = {"mobilenet_v2": str(tmp_path / "mn.pth")}
    named = {v.name: v for v in variants(cfg, w)}
    assert "MobileNetV2 (ImageNet weights)" in named and "VGG16 (from scratch)" in named
    vcfg = cfg.with_overrides(list(named["MobileNetV2 (ImageNet weights)"].overrides))
    assert (
        vcfg.model.image_encoder.name == "mobilenet_v2"
        and vcfg.model.image_encoder.params["pretrained"] == w["mobilenet_v2"]
    )
    assert vcfg.model.head == cfg.model.head and vcfg.model.loss == cfg.model.loss and vcfg.train == cfg.train
    with pytest.raises(ConfigError, match="unknown architecture 'vgg11'"):
        cnn_baselines({"vgg11": "x.pth"})


def test_baseline_variant_builds_and_trains_a_step():
    cfg = load_profile("cxr-cnn")
    v = next(v for v in variants(cfg) if v.name.startswith("MobileNetV2"))
    model = create_model(cfg.with_overrides(list(v.overrides)))
    x = torch.randn(4, 1, cfg.data.image_size, cfg.data.image_size)
    out = model(images=x)
    assert out["logits"].shape == (4, len(cfg.data.targets)) and out["embedding"].shape == (4, cfg.model.embedding_dim)
    loss = torch.nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.image_encoder.features_net[0][0].weight.grad is not None
    heat = model.explain(x[:1])
    assert heat.shape == (1, cfg.data.image_size, cfg.data.image_size)
