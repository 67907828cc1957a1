import io

import pytest
import torch

from lungsearch.config import CONFIG_DIR, load_profile
from lungsearch.errors import ConfigError
from lungsearch.models import LungModel, create_model, list_models

SHIPPED = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
#: CPU demo profiles get the full (forward/backward/explain) checks; GPU-size variants
#: (``*.gpu.yaml``: ResNet50 at 512 px, ViT-B/16) are built and run once, without gradients.
CPU = [n for n in SHIPPED if ".gpu." not in n]
FIXED_SIZE_ENCODERS = ("ldc", "vit", "vit_b_16")
TEXTS = ["no acute cardiopulmonary disease", "small left pleural effusion", "", "opacity in the right upper lobe"]


def _inputs(model, b=4, size=None):
    size = size or model.input_size
    kw = {"images": torch.randn(b, 1, size, size)}
    if model.text_encoder is not None:
        kw["texts"] = [TEXTS[i % len(TEXTS)] for i in range(b)]
    if model.radiomics is not None:
        kw["radiomics"] = torch.randn(b, model.radiomics.out_dim)
    return kw


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: create_model(load_profile(CONFIG_DIR / name)) for name in CPU}


@pytest.fixture(scope="module")
def any_model(models):
    def get(name):
        if name in models:
            return models[name]
        torch.manual_seed(0)
        return create_model(load_profile(CONFIG_DIR / name))

    return get


@pytest.mark.parametrize("name", SHIPPED)
def test_create_model_builds_every_shipped_profile(any_model, name):
    model = any_model(name)
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


@pytest.mark.parametrize("name", CPU)
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
    assert set(names) == {
        "image_encoder",
        "text_encoder",
        "radiomics",
        "fusion",
        "head",
        "hashing",
        "pretraining",
        "loss",
    }
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


from lungsearch.losses import loss_for_stage  # noqa: E402


def _targets(cfg, b):
    c = len(cfg.data.targets)
    if cfg.data.multilabel:
        y = torch.zeros(b, c)
        y[torch.arange(b), torch.arange(b) % c] = 1
        y[0, 1] = 1  # one case with two labels
        return y
    return torch.arange(b) % c


@pytest.mark.parametrize("name", CPU)
def test_gradients_reach_every_trainable_parameter(name):
    torch.manual_seed(0)
    model = create_model(load_profile(CONFIG_DIR / name))
    cfg = model.cfg
    stages = cfg.train.stages or [None]
    for stage in stages:
        if stage is not None:
            model.set_stage(stage)
        model.train()
        model.zero_grad(set_to_none=True)
        b = 6 if model.pretraining is not None else 4
        out = model(**_inputs(model, b=b))
        loss = loss_for_stage(cfg, stage)(out, _targets(cfg, b)) + model.regularization()
        loss.backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert trainable, f"{name}/{stage}: nothing trains"
        missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"{name}/{stage}: no gradient for {missing[:5]}"
        if stage == "probe":
            assert {n.split(".")[0] for n, _ in trainable} == {"probe"}


@pytest.mark.parametrize(
    "name", [n for n in CPU if load_profile(CONFIG_DIR / n).model.image_encoder.name not in FIXED_SIZE_ENCODERS]
)
@pytest.mark.parametrize("size", [64, 96])
def test_profiles_accept_other_input_sizes(models, name, size):
    model = models[name]
    model.eval()
    with torch.no_grad():
        out = model(**_inputs(model, b=2, size=size))
    assert out["embedding"].shape == (2, model.embedding_dim)


def test_ldc_profile_is_built_for_its_input_size():
    small = create_model(load_profile("cxr-cnn", overrides=["data.image_size=64"]))
    small.eval()
    with torch.no_grad():
        assert small(images=torch.randn(2, 1, 64, 64))["logits"].shape == (2, 4)


@pytest.mark.parametrize("name", CPU)
def test_explain_gives_unit_heatmaps(models, name):
    model = models[name]
    kw = _inputs(model, b=2)
    heat = model.explain(kw["images"], texts=kw.get("texts"))
    assert heat.shape == (2, model.input_size, model.input_size)
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0 + 1e-6
    assert torch.isfinite(heat).all()


def test_explain_after_probe_stage(models):
    model = models["cxr-clip.yaml"]
    model.set_stage("probe")
    try:
        kw = _inputs(model, b=2)
        assert model.explain(kw["images"], texts=kw["texts"]).shape == (2, 128, 128)
    finally:
        model.set_stage("pretrain")


def test_ct_slices_pool_per_case(models):
    model = models["ct-ild.yaml"]
    model.eval()
    slices = torch.randn(5, 1, 128, 128)
    with torch.no_grad():
        feats = model.encode(images=slices)
    case_index = torch.tensor([0, 0, 1, 1, 1])
    pooled = LungModel.pool_slices(feats["image_pooled"], case_index, 2)
    assert torch.allclose(pooled[1], feats["image_pooled"][2:].mean(0), atol=1e-6)
    with torch.no_grad():
        out = model.fuse({"image_pooled": pooled, "radiomics": torch.zeros(2, model.radiomics.out_dim)})
    assert out["embedding"].shape == (2, 128) and out["hash_logits"].shape == (2, 64)


def test_hash_beta_follows_schedule_and_is_saved(models):
    model = models["cxr-hash.yaml"]
    model.on_epoch_start(3)
    assert float(model.hasher.beta) == 8.0
    assert float(model.state_dict()["hasher.beta"]) == 8.0
    model.on_epoch_start(99)
    assert float(model.hasher.beta) == 16.0
    model.on_epoch_start(0)


def test_wrong_inputs_raise_typed_errors(models):
    from lungsearch.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        models["cxr-cnn.yaml"].encode(texts=["x"])
    with pytest.raises(InvalidRequestError):
        models["cxr-cnn.yaml"].encode(images=torch.randn(2, 3, 128, 128))
    with pytest.raises(InvalidRequestError):
        models["cxr-cnn.yaml"].encode()
