"""Augmentations as training uses them: generated-view lookup and mixing, SASSL on crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslaug.augment.generative import GenerativeAugment, GenerativeConfig, GeneratedViewBank
from sslaug.augment.generative_views import ShardError
from sslaug.augment.sassl import SASSLConfig, StyleAugment
from sslaug.augment.stylizer import StylizerConfig, build_stylizer
from sslaug.augment.views import ViewPipeline, ViewRecipe, normalize_uint8


def bank_of(*shards: np.ndarray) -> GeneratedViewBank:
    """A bank over in-memory shards (the files' manifest checks are tested in test_precompute)."""
    bank = GeneratedViewBank.__new__(GeneratedViewBank)
    start, bank.shards = 0, []
    for views in shards:
        bank.shards.append((start, start + len(views), views))
        start += len(views)
    bank.num_views = shards[0].shape[1]
    return bank


def test_lookup_reads_the_right_view_across_shards() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (5, 3, 4, 4, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (7, 3, 4, 4, 3), dtype=np.uint8)
    indices, views = np.array([11, 0, 4, 5, 7]), np.array([2, 1, 0, 2, 1])
    expected = np.stack([(a[i, k] if i < 5 else b[i - 5, k]) for i, k in zip(indices, views)])
    out = bank_of(a, b).lookup(indices, views)
    assert torch.equal(out, torch.from_numpy(expected).permute(0, 3, 1, 2))


def test_missing_shards_are_named(tmp_path) -> None:
    with pytest.raises(ShardError, match=str(tmp_path)):
        GeneratedViewBank(tmp_path, num_items=10)


def test_view_index_is_redrawn_each_epoch_reproducibly() -> None:
    views = np.zeros((64, 10, 4, 4, 3), dtype=np.uint8)
    augment = GenerativeAugment(bank_of(views), GenerativeConfig(), size=4, seed=3)
    assert torch.equal(augment.view_indices(0), augment.view_indices(0))
    assert not torch.equal(augment.view_indices(0), augment.view_indices(1))


def test_p_zero_keeps_the_real_images_and_generative_only_uses_the_generated_ones() -> None:
    images = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    generated = np.random.default_rng(1).integers(0, 255, (6, 2, 8, 8, 3), dtype=np.uint8)
    pipeline = ViewPipeline(ViewRecipe(crop_scale=(1.0, 1.0), jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0), 8)
    indices = torch.arange(6)
    keep = GenerativeAugment(bank_of(generated), GenerativeConfig(p=0.0), size=8, seed=0)
    assert torch.allclose(keep(images, indices, 0, pipeline), normalize_uint8(images), atol=1e-5)
    only = GenerativeAugment(bank_of(generated), GenerativeConfig(p=1.0, strategy="generative_only"), size=8, seed=0)
    k = only.view_indices(0)
    expected = torch.from_numpy(generated[np.arange(6), k.numpy()]).permute(0, 3, 1, 2)
    assert torch.allclose(only(images, indices, 0, pipeline), normalize_uint8(expected), atol=1e-5)


@pytest.fixture(scope="module")
def stylizer():
    return build_stylizer(StylizerConfig(tiny=True))


def test_sassl_with_p_zero_or_beta_zero_returns_the_crops(stylizer) -> None:
    crops = torch.rand(4, 3, 16, 16)
    assert torch.equal(StyleAugment(stylizer, SASSLConfig(p=0.0))(crops), crops)
    no_pixels = StyleAugment(stylizer, SASSLConfig(p=1.0, beta_min=0.0, beta_max=0.0))
    assert torch.allclose(no_pixels(crops), crops, atol=1e-6)


def test_sassl_stylizes_about_p_of_the_crops_in_range(stylizer) -> None:
    torch.manual_seed(0)
    crops = torch.rand(64, 3, 16, 16)
    out = StyleAugment(stylizer, SASSLConfig(p=0.8, beta_min=1.0, beta_max=1.0))(crops)
    changed = (out - crops).abs().flatten(1).amax(1) > 1e-4
    assert 0.6 < changed.float().mean() < 0.95 and out.min() >= 0 and out.max() <= 1


def test_external_styles_need_their_features(stylizer) -> None:
    with pytest.raises(ValueError, match="needs precomputed style features"):
        StyleAugment(stylizer, SASSLConfig(style_source="pbn"))
    bank = torch.randn(5, stylizer.style_dim)
    out = StyleAugment(stylizer, SASSLConfig(style_source="pbn", p=1.0), bank)(torch.rand(3, 3, 16, 16))
    assert out.shape == (3, 3, 16, 16)
