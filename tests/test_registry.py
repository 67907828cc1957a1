"""Registry: save/load round trip, version resolution, LIVE, atomicity, errors."""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from torch import nn

from lungsearch import registry
from lungsearch.config import load_profile
from lungsearch.errors import ConfigError, ModelNotFoundError


class TinyModel(nn.Module):
    """Stand-in for a LungModel: a parameter, a fitted buffer, and the contract's attributes."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.targets = list(cfg.data.targets)
        self.input_size = cfg.data.image_size
        self.embedding_dim = cfg.model.embedding_dim
        self.code_bits = cfg.index.code_bits if cfg.index else 0
        self.lin = nn.Linear(4, len(self.targets))
        self.register_buffer("scaler_mean", torch.zeros(4))


@pytest.fixture
def cfg():
    return load_profile("cxr-hash")


@pytest.fixture
def fake_create(monkeypatch):
    """load_model builds via lungsearch.models.create_model; use the stand-in."""
    import lungsearch.models

    monkeypatch.setattr(lungsearch.models, "create_model", TinyModel, raising=False)
    return TinyModel


def _trained(cfg, seed=1):
    torch.manual_seed(seed)
    m = TinyModel(cfg)
    m.scaler_mean.fill_(float(seed))
    return m


def test_save_load_round_trip(tmp_path, cfg, fake_create):
    model = _trained(cfg)
    card = registry.save_model(
        model,
        cfg,
        metrics={"val_map10": 0.5},
        data_fingerprint="abc",
        synthetic_data=True,
        root=tmp_path,
        extra={"seed": 0, "path": tmp_path},
    )
    assert card.path == tmp_path / "cxr-hash" / card.version
    assert card.version.endswith(cfg.fingerprint()[:6])
    assert len(card.version.split("-")[0]) == 8 and len(card.version.split("-")[1]) == 6
    doc = yaml.safe_load((card.path / "model_card.yaml").read_text())
    assert doc["synthetic_data"] is True and doc["data_fingerprint"] == "abc"
    assert doc["config"]["profile"] == "cxr-hash" and doc["code_bits"] == 64
    assert doc["code_version"].startswith("0.") and doc["created_at"].endswith("+00:00")
    assert doc["extra"]["path"] == str(tmp_path)

    loaded, card2 = registry.load_model(f"cxr-hash@{card.version}", root=tmp_path)
    assert not loaded.training
    assert card2.config == cfg and card2.metrics == {"val_map10": 0.5}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.scaler_mean[0].item() == 1.0  # fitted buffers travel with the weights


def test_ddp_wrapper_is_unwrapped(tmp_path, cfg, fake_create):
    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    card = registry.save_model(
        Wrapper(_trained(cfg)), cfg, metrics={}, data_fingerprint="x", synthetic_data=True, root=tmp_path
    )
    state = torch.load(card.weights_path, weights_only=True)
    assert "lin.weight" in state and not any(k.startswith("module.") for k in state)


def test_newest_live_and_latest(tmp_path, cfg, fake_create):
    a = registry.save_model(_trained(cfg, 1), cfg, metrics={}, data_fingerprint="a", synthetic_data=True, root=tmp_path)
    b = registry.save_model(_trained(cfg, 2), cfg, metrics={}, data_fingerprint="b", synthetic_data=True, root=tmp_path)
    assert a.version < b.version  # same second: the clock is stepped, order kept
    assert registry.resolve("cxr-hash", root=tmp_path).version == b.version
    registry.set_live("cxr-hash", a.version, root=tmp_path)
    assert (tmp_path / "cxr-hash" / "LIVE").read_text().strip() == a.version
    assert registry.resolve("cxr-hash", root=tmp_path).version == a.version
    assert registry.resolve("cxr-hash", "latest", root=tmp_path).version == b.version
    model, card = registry.load_model("cxr-hash", root=tmp_path)
    assert card.version == a.version and model.scaler_mean[0].item() == 1.0
    # A LIVE naming a deleted version falls back to the newest.
    import shutil

    shutil.rmtree(a.path)
    assert registry.resolve("cxr-hash", root=tmp_path).version == b.version


def test_list_cards_skips_temp_and_corrupt(tmp_path, cfg, fake_create):
    other = load_profile("cxr-cnn")
    registry.save_model(_trained(cfg), cfg, metrics={}, data_fingerprint="a", synthetic_data=True, root=tmp_path)
    registry.save_model(
        TinyModel(other), other, metrics={"acc": 1}, data_fingerprint="a", synthetic_data=False, root=tmp_path
    )
    (tmp_path / "cxr-hash" / ".tmp-half-written").mkdir()
    bad = tmp_path / "cxr-hash" / "20000101-000000-badbad"
    bad.mkdir()
    (bad / "model_card.yaml").write_text("config: [not, a, config]\n")
    cards = registry.list_cards(root=tmp_path)
    assert [c.profile for c in cards] == ["cxr-cnn", "cxr-hash"]
    assert [c.profile for c in registry.list_cards(root=tmp_path, profile="cxr-cnn")] == ["cxr-cnn"]
    assert registry.list_cards(root=tmp_path / "nowhere") == []
    with pytest.raises(ModelNotFoundError):
        registry.resolve("cxr-hash", "20000101-000000-badbad", root=tmp_path)


@pytest.mark.parametrize("ref", ["nope", "cxr-hash@20990101-000000-aaaaaa", "cxr-hash@", "@v"])
def test_unknown_refs(tmp_path, cfg, fake_create, ref):
    registry.save_model(_trained(cfg), cfg, metrics={}, data_fingerprint="a", synthetic_data=True, root=tmp_path)
    with pytest.raises(ModelNotFoundError):
        registry.load_model(ref, root=tmp_path)


def test_path_escape_refused(tmp_path, cfg):
    with pytest.raises(ConfigError):
        registry.resolve("../etc", root=tmp_path)
    with pytest.raises(ConfigError):
        registry.save_model(
            _trained(cfg), cfg, metrics={}, data_fingerprint="a", synthetic_data=True, root=tmp_path, version="../x"
        )


def test_existing_version_refused_and_failed_save_leaves_nothing(tmp_path, cfg, monkeypatch):
    registry.save_model(
        _trained(cfg), cfg, metrics={}, data_fingerprint="a", synthetic_data=True, root=tmp_path, version="v1"
    )
    with pytest.raises(ConfigError):
        registry.save_model(
            _trained(cfg), cfg, metrics={}, data_fingerprint="a", synthetic_data=True, root=tmp_path, version="v1"
        )

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        registry.save_model(
            _trained(cfg), cfg, metrics={}, data_fingerprint="a", synthetic_data=True, root=tmp_path, version="v2"
        )
    assert sorted(os.listdir(tmp_path / "cxr-hash")) == ["v1"]


def test_mismatched_weights(tmp_path, cfg, fake_create):
    card = registry.save_model(_trained(cfg), cfg, metrics={}, data_fingerprint="a", synthetic_data=True, root=tmp_path)
    torch.save({"other": torch.zeros(1)}, card.weights_path)
    with pytest.raises(ModelNotFoundError, match="do not match"):
        registry.load_model(card.ref, root=tmp_path)


def test_set_live_unknown(tmp_path, cfg):
    with pytest.raises(ModelNotFoundError):
        registry.set_live("cxr-hash", "nope", root=tmp_path)
