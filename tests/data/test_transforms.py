"""Preprocessing: one function for train and serve, fixed output shape, finite values."""

from __future__ import annotations

import numpy as np
import pytest

from lungsearch.config import DataConfig, PhantomConfig
from lungsearch.data import DecodedImage, ImageMeta, Study, preprocess, preprocess_study
from lungsearch.data.transforms import NORM_MEAN, NORM_STD, apply_window


def _cfg(**kw) -> DataConfig:
    return DataConfig(
        source="phantom", phantom=PhantomConfig(kind="cxr", n=4), image_size=kw.pop("image_size", 32), **kw
    )


def _img(pixels, hu=False, modality="cxr"):
    return DecodedImage(pixels=np.asarray(pixels, np.float32), meta=ImageMeta(modality=modality, hu=hu))


def test_lung_window_matches_paper():
    np.testing.assert_allclose(apply_window(np.array([-1250.0, -500.0, 250.0, 900.0]), "lung"), [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(apply_window(np.array([-160.0, 40.0, 240.0]), "mediastinum"), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("shape", [(1, 1), (3, 50), (64, 64), (300, 120)])
def test_shape_and_range(shape):
    rng = np.random.default_rng(0)
    out = preprocess(_img(rng.random(shape)), _cfg())
    assert out.shape == (1, 32, 32) and out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() >= (0 - NORM_MEAN) / NORM_STD - 1e-6 and out.max() <= (1 - NORM_MEAN) / NORM_STD + 1e-6


def test_aspect_kept_by_padding():
    x = np.ones((16, 32), np.float32)
    x[:, :16] = 0.0
    out = preprocess(_img(x), _cfg()) * NORM_STD + NORM_MEAN
    # 16x32 -> 16x32 in a 32x32 frame: 8 rows of padding top and bottom (the image minimum, 0)
    assert np.allclose(out[0, :7], 0.0) and np.allclose(out[0, 25:], 0.0)
    assert out[0, 16, 28] > 0.9 and out[0, 16, 3] < 0.1


def test_ct_window_applied():
    hu = np.full((8, 8), -500.0)
    out = preprocess(_img(hu, hu=True, modality="ct"), _cfg(window="lung"))
    np.testing.assert_allclose(out * NORM_STD + NORM_MEAN, 0.5, atol=1e-5)


def test_denoise_and_equalize_change_the_image():
    rng = np.random.default_rng(1)
    x = rng.random((32, 32)).astype(np.float32) * 0.3
    base = preprocess(_img(x), _cfg())
    den = preprocess(_img(x), _cfg(denoise=True))
    eq = preprocess(_img(x), _cfg(equalize=True))
    assert den.std() < base.std()
    assert eq.max() > base.max()  # equalisation stretches a 0..0.3 image to ~0..1


def test_train_augmentation_is_seeded_and_off_at_eval():
    x = np.random.default_rng(2).random((40, 40)).astype(np.float32)
    cfg = _cfg(augment=True)
    a = preprocess(_img(x), cfg, train=True, rng=np.random.default_rng(7))
    b = preprocess(_img(x), cfg, train=True, rng=np.random.default_rng(7))
    c = preprocess(_img(x), cfg, train=False)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(c, preprocess(_img(x), _cfg(augment=False), train=True))


def test_study_shape_and_consistent_augmentation():
    sl = [_img(np.full((20, 20), -800.0 + 100 * i), hu=True, modality="ct") for i in range(3)]
    out = preprocess_study(Study(images=sl), _cfg(window="lung"), train=True, rng=np.random.default_rng(0))
    assert out.shape == (3, 1, 32, 32) and np.isfinite(out).all()
