import numpy as np
import pytest
import torch

from lungsearch.errors import ConfigError, InvalidRequestError
from lungsearch.models.radiomics import RadiomicsExtractor, RadiomicsModule, RadiomicsScaler


def _slice(seed=0, size=48):
    rng = np.random.default_rng(seed)
    img = rng.normal(-700, 120, size=(size, size))
    mask = np.zeros((size, size), bool)
    mask[8:40, 10:30] = True
    return img, mask


def test_feature_order_is_fixed_whatever_the_config_order():
    a = RadiomicsExtractor(["glcm", "firstorder"])
    b = RadiomicsExtractor(["firstorder", "glcm", "glcm"])
    assert a.feature_names == b.feature_names
    assert a.feature_names[0].startswith("firstorder_") and a.feature_names[-1].startswith("glcm_")
    assert a.num_features == 18 + 24
    assert RadiomicsExtractor(["shape"]).feature_names[0].startswith("shape2D_")
    with pytest.raises(ConfigError, match="unknown feature class"):
        RadiomicsExtractor(["wavelet"])


def test_extract_values_and_nan_handling():
    ex = RadiomicsExtractor()
    img, mask = _slice()
    v = ex.extract(img, mask)
    assert v.shape == (42,) and np.isfinite(v).all()
    mean = v[ex.feature_names.index("firstorder_Mean")]
    assert mean == pytest.approx(img[mask].mean(), rel=1e-6)
    assert np.isnan(ex.extract(img, np.zeros_like(mask))).all()  # empty ROI
    assert np.isnan(ex.extract(np.zeros_like(img), mask)).all()  # constant ROI
    with pytest.raises(InvalidRequestError):
        ex.extract(img, mask[:10])


def test_extract_study_is_a_nan_aware_mean():
    ex = RadiomicsExtractor(["firstorder"])
    (a, m), (b, _) = _slice(0), _slice(1)
    out = ex.extract_study(np.stack([a, b, a]), np.stack([m, m, np.zeros_like(m)]))
    ref = (ex.extract(a, m) + ex.extract(b, m)) / 2
    assert np.allclose(out, ref)


def test_scaler_standardises_handles_nonfinite_and_is_saved():
    rng = np.random.default_rng(0)
    raw = rng.normal(5.0, 3.0, size=(200, 4))
    raw[:, 3] = 7.0  # constant feature
    raw[0, 0] = np.nan
    sc = RadiomicsScaler(["a", "b", "c", "d"], clip=4.0)
    assert torch.equal(sc(np.ones((1, 4))), torch.ones(1, 4))  # identity before fit
    sc.fit(raw)
    z = sc(raw).numpy()
    assert z.dtype == np.float32
    assert abs(np.nanmean(z[1:, 0])) < 0.05 and abs(z[1:, 1].std() - 1) < 0.05
    assert z[0, 0] == 0.0 and (z[:, 3] == 0).all()
    assert sc(np.array([[np.inf, 1e9, -1e9, 7.0]])).tolist() == [[0.0, 4.0, -4.0, 0.0]]
    state = sc.state_dict()
    twin = RadiomicsScaler(["a", "b", "c", "d"], clip=4.0)
    twin.load_state_dict(state)
    assert bool(twin.fitted) and torch.equal(twin(raw), sc(raw))
    with pytest.raises(InvalidRequestError):
        sc.fit(raw[:, :3])


def test_radiomics_module_sizes_the_scaler_from_the_classes():
    mod = RadiomicsModule(classes=["firstorder"])
    assert mod.out_dim == 18 == len(mod.extractor.feature_names)


def test_bounding_box_crop_keeps_every_feature_class_identical():
    """extract() crops to the ROI before pyradiomics (a speed-up, benchmarks/ingest.py): the
    features must equal those of pyradiomics run on the whole, uncropped slice, also for an ROI
    touching the image border (no margin to keep)."""
    import SimpleITK as sitk

    from lungsearch.models.radiomics import FEATURE_CLASSES

    rng = np.random.default_rng(3)
    img = rng.normal(-700, 150, size=(96, 96))
    yy, xx = np.mgrid[:96, :96]
    lungs = ((yy - 40) ** 2 / 400 + (xx - 30) ** 2 / 150 < 1) | ((yy - 50) ** 2 / 300 + (xx - 70) ** 2 / 120 < 1)
    edge = np.zeros_like(lungs)
    edge[:20, 70:] = True
    ex = RadiomicsExtractor(FEATURE_CLASSES)
    for mask in (lungs, edge):
        cropped = ex.extract(img, mask)
        full = ex._get().execute(sitk.GetImageFromArray(img[None]), sitk.GetImageFromArray(mask[None].astype(np.uint8)))
        ref = np.array([float(full[f"original_{n}"]) for n in ex.feature_names])
        assert np.isfinite(cropped).sum() > 80
        np.testing.assert_allclose(cropped, ref, rtol=1e-9, atol=1e-9, equal_nan=True)
