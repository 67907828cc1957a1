import io

import pytest
import torch

from lungsearch.config import CONFIG_DIR, load_profile
from lungsearch.errors import ConfigError
from lungsearch.models import LungModel, create_model, list_models

SHIPPED = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
TEXTS = ["no acute cardiopulmonary disease", "small left pleural effusion", "", "opacity in the right upper lobe"]


def _inputs(model, b=4, size=None):
    size = size or model.input_size
    kw = {"images": torch.randn(b, 1, size, size)}
    if model.text_encoder is not None:
        kw["texts"] = TEXTS[:b]
    if model.radiomics is not None:
        kw["radiomics"] = torch.randn(b, model.radiomics.out_dim)
    return kw


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: create_model(load_profile(CONFIG_DIR / name)) for name in SHIPPED}


@pytest.mark.parametrize("name", SHIPPED)
def test_create_model_builds_every_shipped_profile(models, name):
    model = models[name]
    cfg = model.cfg
    assert isinstance(model, LungModel)
    assert model.targets == list(cfg.data.targets)
    assert model.input_size == cfg.data.image_size
    assert model.embedding_dim == cfg.model.embedding_dim
    if cfg.index is not None and cfg.index.kind in ("hamming", "lsh"):
        assert model.code_bits == cfg.index.code_bits
    model.eval()
    with torch.no_grad():
        out = model(**_inputs(model, b=2))
    emb = out["embedding"]
    assert emb.shape == (2, cfg.model.embedding_dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    if model.code_bits:
        assert out["hash_logits"].shape == (2, model.code_bits)
    if "logits" in out:
        assert out["logits"].shape == (2, len(cfg.data.targets))


@pytest.mark.parametrize("name", SHIPPED)
def test_state_dict_round_trip_rebuilds_exactly(models, name):
    model = models[name]
    model.eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    torch.manual_seed(123)  # a different init: only the state dict may make them equal
    twin = create_model(model.cfg)
    twin.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    twin.eval()
    torch.manual_seed(1)
    kw = _inputs(model, b=2)
    with torch.no_grad():
        a, b = model(**kw), twin(**kw)
    assert torch.allclose(a["embedding"], b["embedding"], atol=1e-6)


def test_list_models_names_every_kind():
    names = list_models()
    assert set(names) == {"image_encoder", "text_encoder", "radiomics", "fusion", "head", "hashing", "pretraining", "loss"}
    assert {"resnet18", "resnet50", "ldc", "vit_b_16"} <= set(names["image_encoder"])
    assert {"cma", "concat", "outer_product"} <= set(names["fusion"])
    assert {"sg_bilstm", "bilstm", "linear"} <= set(names["head"])
    assert {"ce", "bce", "contrastive", "supcon", "pairwise_bayes", "infonce", "subgraph_total"} <= set(names["loss"])


def test_unknown_part_name_suggests_close_matches():
    cfg = load_profile("cxr-cnn", overrides=["model.image_encoder.name=resnet51"])
    with pytest.raises(ConfigError, match=r"unknown image encoder 'resnet51'; did you mean .*resnet50"):
        create_model(cfg)


def test_unknown_param_suggests_close_matches():
    cfg = load_profile("ct-ild", overrides=["model.image_encoder.params.pol=gem"])
    with pytest.raises(ConfigError, match=r"unknown param 'pol'; did you mean pool"):
        create_model(cfg)


def test_hash_bits_must_match_index():
    cfg = load_profile("cxr-hash", overrides=["index.code_bits=32"])
    with pytest.raises(ConfigError, match="code bits"):
        create_model(cfg)
