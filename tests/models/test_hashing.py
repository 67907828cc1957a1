import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lungsearch.errors import InvalidRequestError
from lungsearch.models.encoders import ResNetEncoder
from lungsearch.models.hashing import (
    LSH,
    AttentionHash,
    CamClassifier,
    grad_cam,
    hamming_distance,
    otsu_threshold,
    pack_codes,
    unpack_codes,
)


@pytest.mark.parametrize("bits", [16, 32, 48, 64, 12])
def test_packed_hamming_equals_inner_product_formula(bits):
    rng = np.random.default_rng(bits)
    b = np.where(rng.standard_normal((20, bits)) >= 0, 1, -1)
    packed = pack_codes(b)
    assert packed.dtype == np.uint8 and packed.shape == (20, -(-bits // 8))
    ham = hamming_distance(packed, packed)
    assert np.array_equal(ham, (bits - b @ b.T) // 2)  # paper 5, eq. 6 (read as (K - <b_i, b_j>)/2)
    assert np.array_equal(unpack_codes(packed, bits), b)


def test_bit_order_matches_the_proto():
    """bit i of the code is bit i % 8 of byte i // 8 (little-endian), 1 = +1."""
    code = -np.ones((1, 16))
    code[0, 0] = 1  # bit 0 -> byte 0, value 1
    code[0, 9] = 1  # bit 9 -> byte 1, value 2
    assert pack_codes(code).tolist() == [[1, 2]]
    assert pack_codes(np.array([[1, 0, 0, 0, 0, 0, 0, 0]], dtype=np.uint8)).tolist() == [[1]]  # {0,1} input
    assert pack_codes(torch.tensor([[0.3, -0.2, 0.0, -1, -1, -1, -1, -1]])).tolist() == [[0b101]]  # sign, 0 -> +1
    assert unpack_codes(bytes([1, 2]), 16)[0, [0, 9]].tolist() == [1, 1]


def test_hamming_rejects_mismatched_lengths():
    with pytest.raises(InvalidRequestError):
        hamming_distance(np.zeros((1, 8), np.uint8), np.zeros((1, 4), np.uint8))


def test_lsh_is_deterministic_and_buffered():
    a, b = LSH(32, 64, seed=7), LSH(32, 64, seed=7)
    assert torch.equal(a.planes, b.planes) and "planes" in a.state_dict()
    assert not torch.equal(a.planes, LSH(32, 64, seed=8).planes)
    x = torch.randn(50, 32)
    codes = a.codes(x)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0} and codes.shape == (50, 64)
    assert torch.equal(codes, a.codes(3.0 * x))  # scale invariant
    # similar vectors collide more than random ones
    near = a.codes(x + 0.05 * torch.randn_like(x))
    far = a.codes(torch.randn(50, 32))
    assert (codes == near).float().mean() > (codes == far).float().mean() + 0.3


def test_tanh_continuation_approaches_sign():
    z = torch.randn(1000) * 2
    z = z[z.abs() > 1e-2]  # pointwise limit: tanh(beta z) -> sign(z) for every fixed z != 0
    errs = [float((torch.tanh(beta * z) - torch.sign(z)).abs().max()) for beta in (1, 10, 100, 1000)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 1e-2 and errs[0] > 0.1


def test_otsu_separates_two_modes():
    x = torch.cat([torch.full((1, 50), 0.1), torch.full((1, 50), 0.9)], dim=1).view(1, 10, 10)
    x = x + 0.01 * torch.randn_like(x)
    thr = otsu_threshold(x)
    assert torch.equal(x > thr, torch.arange(100).view(1, 10, 10) >= 50)
    from skimage.filters import threshold_otsu

    img = torch.rand(1, 32, 32) ** 3
    assert abs(float(otsu_threshold(img, bins=256)) - threshold_otsu(img[0].numpy(), nbins=256)) < 0.02


@pytest.fixture()
def hasher():
    torch.manual_seed(0)
    g, loc = ResNetEncoder("resnet18"), ResNetEncoder("resnet18")
    return AttentionHash(g, loc, num_classes=3, bits=16, beta_schedule=[1, 4], cam=CamClassifier(3)).eval()


def test_grad_cam_closed_form_equals_autograd(hasher):
    imgs = torch.randn(2, 1, 64, 64)
    fast = hasher.heatmap(imgs)
    with torch.no_grad():
        fmap = hasher.cam.features(imgs)
    f = fmap.clone().requires_grad_(True)
    logits = hasher.cam.fc(hasher.cam.backbone.pool(f))
    cam = grad_cam(f, logits.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)).detach()
    cam = F.interpolate(cam[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    cam = (cam - flat.min(1).values[:, None, None]) / (flat.max(1).values - flat.min(1).values).clamp_min(1e-12)[
        :, None, None
    ]
    assert torch.allclose(fast, cam, atol=1e-4)


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("crop", [False, True])
def test_attention_hash_shapes(hasher, size, crop):
    hasher.crop = crop
    with torch.no_grad():
        out = hasher(torch.randn(2, 1, size, size))
    assert out["hash_logits"].shape == (2, 16) and out["logits"].shape == (2, 3)
    assert out["heatmap"].shape == (2, size, size)


def test_local_image_is_the_otsu_masked_image(hasher):
    img = torch.ones(1, 1, 8, 8)
    heat = torch.zeros(1, 8, 8)
    heat[0, :4, :4] = 1.0
    local = hasher.local_images(img, heat)
    assert local[0, 0, :4, :4].eq(1).all() and local[0, 0, 4:, :].eq(0).all()
    # a flat heat map keeps the whole image
    assert hasher.local_images(img, torch.zeros(1, 8, 8)).eq(1).all()


def test_beta_schedule(hasher):
    hasher.set_epoch(0)
    assert float(hasher.beta) == 1.0
    hasher.set_epoch(5)
    assert float(hasher.beta) == 4.0


def test_a_flat_heat_map_normalises_to_zeros_not_to_rounding_noise():
    """Bilinear upsampling of a 1x1 CAM is constant up to float32 rounding; scaling that range to
    [0, 1] made the Otsu mask (and so the code) depend on the batch a case was computed in."""
    import torch.nn.functional as F

    from lungsearch.models.hashing import normalise_heatmap

    cam = torch.full((3, 1, 1), 0.37)
    cam[1] = 0.0
    up = F.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert all(float(m.max() - m.min()) < 1e-6 for m in up)  # each map nearly, not always exactly, constant
    out = normalise_heatmap(up)
    assert torch.equal(out, torch.zeros_like(out))
    ramp = torch.linspace(0, 2, 16).reshape(1, 4, 4)
    out = normalise_heatmap(ramp)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


@pytest.mark.parametrize(("size", "grid"), [(128, 8), (224, 14)])
def test_cam_grid_is_at_least_7x7_at_the_working_size(size, grid):
    """A plain ResNet's CAM is input/32: 4x4 at the demo's 128 px. The CAM classifier dilates its
    last stage (output stride 16): 8x8 at 128 px, 14x14 at 224 px."""
    torch.manual_seed(0)
    plain, dilated = CamClassifier(3, output_stride=32).eval(), CamClassifier(3).eval()
    with torch.no_grad():
        x = torch.randn(1, 1, size, size)
        assert plain.features(x).shape[-2:] == (size // 32, size // 32)
        assert dilated.features(x).shape[-2:] == (grid, grid)
    assert grid >= 7
    # same weight shapes: a plain ResNet18's (pretrained) weights load into the dilated one
    dilated.load_state_dict(plain.state_dict())


def test_dilated_stage_keeps_the_receptive_field():
    """Dilation 2 after the removed stride: the dilated map is the plain map on a finer grid.
    Shifting the input by 16 px shifts the dilated map by one cell exactly (output stride 16),
    away from the borders; and the response at even cells equals the plain net's at stride 32."""
    torch.manual_seed(0)
    plain = CamClassifier(3, output_stride=32).eval()
    dilated = CamClassifier(3).eval()
    dilated.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 256, 256)
    with torch.no_grad():
        fp, fd = plain.features(x), dilated.features(x)
    assert fd.shape[-1] == 2 * fp.shape[-1]
    # the even cells of the dilated map see the same input window as the plain map's cells
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert torch.allclose(fd[:, :, ::2, ::2][inner], fp[inner], atol=1e-4)


def _hash_model(size: int = 64):
    from lungsearch.config import load_profile
    from lungsearch.models import create_model

    torch.manual_seed(0)
    return create_model(load_profile("cxr-hash", overrides=[f"data.image_size={size}"]))


def _batch(model, b: int = 6, size: int = 64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 1, size, size, generator=g)
    y = torch.zeros(b, len(model.targets))
    y[torch.arange(b), torch.arange(b) % len(model.targets)] = 1
    return x, y


def test_a_hash_stage_step_leaves_the_cam_classifier_bit_identical():
    """Paper 5: the classifier behind the attention maps is trained first and then frozen. A
    hash-stage optimizer step (the loop's optimizer and loss) moves the hash network but not one
    parameter or BatchNorm statistic of the CAM classifier."""
    from lungsearch.losses import loss_for_stage
    from lungsearch.training.loop import build_optimizer
    from lungsearch.training.recipes import stages_for

    model = _hash_model()
    cfg = model.cfg
    stage = next(s for s in stages_for(cfg) if s.name == "hash")
    model.set_stage("hash")
    model.train()
    assert not model.hasher.cam.training  # frozen BatchNorm: running stats cannot drift
    before = {k: v.clone() for k, v in model.hasher.cam.state_dict().items()}
    glob_before = [p.detach().clone() for p in model.hasher.global_encoder.parameters()]
    opt = build_optimizer(model, stage, cfg)
    cam_ids = {id(p) for p in model.hasher.cam.parameters()}
    assert not any(id(p) in cam_ids for g in opt.param_groups for p in g["params"])
    x, y = _batch(model)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        loss = loss_for_stage(cfg, "hash")(model(images=x), y)
        loss.backward()
        opt.step()
    after = model.hasher.cam.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = [not torch.equal(a, p.detach()) for a, p in zip(glob_before, model.hasher.global_encoder.parameters())]
    assert any(moved)  # the step did train the hash network


def test_classifier_stage_trains_only_the_cam_classifier():
    from lungsearch.losses import loss_for_stage

    model = _hash_model()
    model.set_stage("classifier")
    model.train()
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad and n.startswith("hasher.")}
    assert trainable == {"cam"}
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    x, y = _batch(model)
    out = model(images=x)
    assert "hash_logits" not in out  # the frozen hash network is not even run
    loss_for_stage(model.cfg, "classifier")(out, y).backward()
    assert all(p.grad is not None for p in model.hasher.cam.parameters())
    # the heat map is the CAM classifier's: changing the global branch does not change it
    model.eval()
    h0 = model.explain(x)
    with torch.no_grad():
        for p in model.image_encoder.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(h0, model.explain(x))


def test_hash_stage_total_loss_keeps_l_cls():
    """Paper 5's total loss is L_cls + L_weightedPair: the shipped config keeps a non-zero L_cls
    in the hash stage, on the hash network's own head (the CAM classifier is frozen)."""
    from lungsearch.losses import WeightedPairwiseBayesLoss, loss_for_stage

    model = _hash_model()
    loss_fn = loss_for_stage(model.cfg, "hash")
    assert isinstance(loss_fn, WeightedPairwiseBayesLoss) and loss_fn.classification > 0
    model.set_stage("hash")
    model.train()
    x, y = _batch(model)
    out = model(images=x)
    total = loss_fn(out, y)
    assert loss_fn.parts["bce"] > 0
    expected = (
        loss_fn.parts["pairwise"]
        + loss_fn.quantization * loss_fn.parts["quantization"]
        + loss_fn.classification * loss_fn.parts["bce"]
    )
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert model.hasher.classifier.weight.grad is not None and model.hasher.classifier.weight.grad.abs().sum() > 0
    # the registry default keeps it too (a config that names the loss without params)
    from lungsearch.config import Component
    from lungsearch.losses import create_loss

    assert create_loss(Component(name="pairwise_bayes", params={})).classification == 1.0
