"""Eval/train transforms, AugmentConfig and its per-source defaults, normalisation statistics, MixUp/CutMix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset
from torchvision.transforms import v2

from vitkit.data import (
    SOURCES,
    AugmentConfig,
    build_batch_mixer,
    build_eval_transform,
    build_train_transform,
    compute_mean_std,
    default_augment,
    eval_transform,
    single_threaded,
)
from vitkit.model import ViTConfig


def test_default_augment_per_source() -> None:
    for source in SOURCES:
        assert isinstance(default_augment(source), AugmentConfig)
    for digit_like in ("digits", "mnist", "svhn"):
        aug = default_augment(digit_like)
        assert aug.hflip == 0.0, digit_like
        assert aug.affine_degrees > 0 or aug.affine_translate > 0
    for natural in ("cifar10", "cifar100", "folder"):
        aug = default_augment(natural)
        assert aug.hflip == 0.5 and aug.crop_scale_min < 1.0, natural
    assert default_augment("cifar10").auto_augment == "trivialaugment"


def test_default_augment_overrides() -> None:
    aug = default_augment("digits", hflip=None, affine_degrees=0.0, random_erasing=0.1)
    assert aug.hflip == default_augment("digits").hflip
    assert (aug.affine_degrees, aug.random_erasing) == (0.0, 0.1)
    with pytest.raises(ValueError, match="unknown augmentation option.*'flip'"):
        default_augment("digits", flip=0.5)
    with pytest.raises(ValueError, match="unknown data source 'imagenet'"):
        default_augment("imagenet")


@pytest.mark.parametrize(
    "bad",
    [
        {"crop_scale_min": 0.0},
        {"crop_scale_min": 1.5},
        {"hflip": -0.1},
        {"affine_degrees": 200.0},
        {"affine_translate": 2.0},
        {"affine_scale": 1.0},
        {"affine_interpolation": "lanczos"},
        {"auto_augment": "autoaugment"},
        {"randaugment_magnitude": 31},
        {"random_erasing": 1.1},
    ],
)
def test_augment_config_rejects_bad_values(bad: dict) -> None:
    ((name, value),) = bad.items()
    with pytest.raises(ValueError, match=f"AugmentConfig.{name}={value!r}"):
        AugmentConfig(**bad)


def test_eval_transform_values_and_shapes() -> None:
    grey = Image.new("L", (40, 20), 128)
    out = build_eval_transform(10, 1, [0.5], [0.25])(grey)
    assert out.shape == (1, 10, 10) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25), atol=1e-6)
    # RGBA PIL input is converted as load_image does: a transparent image becomes white.
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    white = build_eval_transform(8, 3, [0.0] * 3, [1.0] * 3)(clear)
    assert white.shape == (3, 8, 8) and torch.allclose(white, torch.ones_like(white))
    # uint8 tensors go in as well, with channels converted either way, and non-square sizes come out (h, w).
    tensor = torch.randint(0, 256, (1, 30, 50), dtype=torch.uint8)
    assert build_eval_transform((6, 10), 3, [0.0] * 3, [1.0] * 3)(tensor).shape == (3, 6, 10)
    rgb = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    assert build_eval_transform(8, 1, [0.0], [1.0])(rgb).shape == (1, 8, 8)


def test_eval_transform_centre_crops_the_shorter_side() -> None:
    pixels = np.zeros((10, 30), np.uint8)
    pixels[:, 10:20] = 255  # a white centre third: after resize (10, 30) and crop 10x10 only white remains
    out = build_eval_transform(10, 1, [0.0], [1.0])(Image.fromarray(pixels))
    assert torch.allclose(out, torch.ones_like(out))


def _photo(width: int, height: int) -> Image.Image:
    """A smooth colourful picture: resampling differences show up, unlike on flat test images."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


PREPROCESSING = dict(in_channels=3, patch_size=8, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize(("interpolation", "crop_pct"), [("bicubic", 0.9), ("bilinear", 0.875), ("bicubic", 1.0)])
def test_eval_transform_matches_timm(interpolation: str, crop_pct: float) -> None:
    from timm.data import create_transform

    config = ViTConfig(image_size=48, interpolation=interpolation, crop_pct=crop_pct, **PREPROCESSING)
    timm_transform = create_transform(
        48, interpolation=interpolation, crop_pct=crop_pct, mean=config.mean, std=config.std
    )
    for photo in (_photo(90, 70), _photo(50, 120)):
        torch.testing.assert_close(eval_transform(config)(photo), timm_transform(photo), atol=1e-6, rtol=0)


def test_eval_transform_squash_matches_transformers_processor() -> None:
    from transformers import ViTImageProcessor

    stats = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    config = ViTConfig(image_size=(32, 48), crop_mode="squash", **{**PREPROCESSING, **stats})
    processor = ViTImageProcessor(size={"height": 32, "width": 48})
    photo = _photo(100, 61)
    expected = torch.as_tensor(processor(photo, return_tensors="np")["pixel_values"][0])
    diff = (eval_transform(config)(photo) - expected).abs()
    # transformers rounds its resized pixels on its own path: at most one uint8 level apart, and rarely.
    assert diff.max() <= 1 / 255 / 0.5 + 1e-6 and (diff > 1e-5).float().mean() < 0.01


def test_eval_transform_without_stats_feeds_plain_pixels(caplog) -> None:
    config = ViTConfig(image_size=8, patch_size=4, in_channels=1)
    out = eval_transform(config)(Image.new("L", (8, 8), 51))
    assert torch.allclose(out, torch.full_like(out, 0.2)) and "no mean/std" in caplog.text


AUGMENTS = {
    "crop": AugmentConfig(crop_scale_min=0.3),
    "affine": AugmentConfig(affine_degrees=20, affine_translate=0.2, affine_scale=0.2),
    "affine-nearest": AugmentConfig(affine_degrees=20, affine_translate=0.2, affine_interpolation="nearest"),
    "randaugment": AugmentConfig(auto_augment="randaugment"),
    "trivialaugment": AugmentConfig(auto_augment="trivialaugment"),
    "erasing": AugmentConfig(random_erasing=1.0),
}


@pytest.mark.parametrize("name", list(AUGMENTS))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["pil", "tensor"])
def test_train_transform_runs_and_randomises(name: str, channels: int, kind: str) -> None:
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (channels, 16, 16), dtype=torch.uint8)
    image = v2.functional.to_pil_image(pixels) if kind == "pil" else pixels
    mean, std = [0.5] * channels, [0.25] * channels
    train = build_train_transform(12, channels, mean, std, AUGMENTS[name])
    plain = build_eval_transform(12, channels, mean, std)(image)
    outs = [train(image) for _ in range(8)]
    assert all(o.shape == (channels, 12, 12) and o.dtype == torch.float32 for o in outs)
    assert any(not torch.equal(o, plain) for o in outs)


def test_per_image_transforms_run_on_one_thread_and_give_the_others_back() -> None:
    torch.set_num_threads(3)
    with single_threaded():
        assert torch.get_num_threads() == 1
        with single_threaded():  # nested, as in a seeded dataset's transform
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with pytest.raises(RuntimeError), single_threaded():
        raise RuntimeError
    assert torch.get_num_threads() == 3


def test_no_augmentation_equals_eval_and_full_flip_flips() -> None:
    image = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    stats = ([0.4] * 3, [0.2] * 3)
    plain = build_eval_transform(12, 3, *stats)(image)
    assert torch.equal(build_train_transform(12, 3, *stats, AugmentConfig())(image), plain)
    flipped = build_train_transform(12, 3, *stats, AugmentConfig(hflip=1.0))(image)
    assert torch.equal(flipped, plain.flip(-1))


def test_compute_mean_std_matches_direct_computation() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    images[:, 2] = 77  # a constant channel: std falls back to 1
    dataset = TensorDataset(images, torch.zeros(50, dtype=torch.long))
    mean, std = compute_mean_std(dataset, 8, 3)
    as_float = images.double() / 255
    expected_mean = as_float.mean(dim=(0, 2, 3))
    expected_std = as_float.std(dim=(0, 2, 3), unbiased=False)
    assert np.allclose(mean, expected_mean.tolist(), atol=1e-6)
    assert np.allclose(std[:2], expected_std[:2].tolist(), atol=1e-6)
    assert math.isclose(mean[2], 77 / 255, rel_tol=1e-6) and std[2] == 1.0
    # Subsampled statistics stay close, and are the same for the same seed.
    sub = compute_mean_std(dataset, 8, 3, max_samples=20, seed=3)
    assert sub == compute_mean_std(dataset, 8, 3, max_samples=20, seed=3)
    assert np.allclose(sub[0], mean, atol=0.05)
    with pytest.raises(ValueError, match="empty"):
        compute_mean_std(TensorDataset(images[:0]), 8, 3)


def test_batch_mixer() -> None:
    assert build_batch_mixer(0.0, 0.0, 10) is None
    assert isinstance(build_batch_mixer(0.8, 0.0, 10), v2.MixUp)
    assert isinstance(build_batch_mixer(0.0, 1.0, 10), v2.CutMix)
    both = build_batch_mixer(0.8, 1.0, 10)
    assert isinstance(both, v2.RandomChoice)
    torch.manual_seed(0)
    images, labels = torch.randn(6, 3, 8, 8), torch.arange(6)
    mixed, targets = both(images, labels)
    assert mixed.shape == images.shape and targets.shape == (6, 10)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6))
    assert (targets > 0).sum(dim=1).max() == 2  # every row mixes two classes (0.8 / 1.0 alphas never give lambda 1)
    with pytest.raises(ValueError, match="mixup_alpha must be >= 0"):
        build_batch_mixer(-1.0, 0.0, 10)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        build_batch_mixer(1.0, 0.0, 1)


def test_nearest_affine_keeps_pixel_values() -> None:
    torch.manual_seed(0)
    image = torch.randint(1, 256, (1, 8, 8), dtype=torch.uint8)
    aug = AugmentConfig(affine_degrees=10, affine_translate=0.125, affine_scale=0.1, affine_interpolation="nearest")
    identity = ([0.0], [1.0 / 255])  # normalising with std 1/255 gives back the uint8 values
    outs = torch.stack([build_train_transform(8, 1, *identity, aug)(image) for _ in range(20)])
    assert set(outs.round().long().unique().tolist()) <= set(image.unique().tolist()) | {0}  # 0: the fill


def test_augment_config_round_trips_and_channel_errors() -> None:
    aug = default_augment("cifar10")
    assert AugmentConfig(**aug.to_dict()) == aug
    with pytest.raises(ValueError, match=r"cannot convert an image tensor of shape \(4, 8, 8\) to 3 channel"):
        build_eval_transform(8, 3, [0.0] * 3, [1.0] * 3)(torch.zeros(4, 8, 8, dtype=torch.uint8))
