"""Whole-batch augmentation: each setting changes the batch, the geometry agrees with torchvision's functional
transforms, and the batches depend only on (seed, epoch, position) whatever the processes or the cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vitkit.data import AugmentConfig, build_data
from vitkit.data.batch_augment import BatchAugment, draw, step_generator
from vitkit.training.distributed import DistContext
from vitkit.training.loaders import Loaders

MEAN, STD = (0.5,), (0.25,)


def images(n: int = 6, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def rows(n: int, **columns: float) -> torch.Tensor:
    """Draws of n samples, all 0.5 (the middle of every range: no move) except the given columns."""
    u = torch.full((n, 14), 0.5, dtype=torch.float64)
    for index, value in columns.items():
        u[:, int(index[1:])] = value
    return u


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - MEAN[0]) / STD[0]


@pytest.mark.parametrize(
    "setting",
    [dict(crop_scale_min=0.3), dict(hflip=0.5), dict(affine_degrees=30.0), dict(affine_translate=0.2),
     dict(affine_scale=0.3), dict(random_erasing=0.5)],
)  # fmt: skip
def test_each_setting_changes_the_batch(setting: dict) -> None:
    x = images(32)
    u = draw(step_generator(0, 0, 0), 32)
    assert torch.equal(BatchAugment(AugmentConfig(), MEAN, STD)(x, u), normalised(x))  # nothing on: only normalised
    out = BatchAugment(AugmentConfig(**setting), MEAN, STD)(x, u)
    changed = (out != normalised(x)).flatten(1).any(dim=1)
    assert 0 < changed.sum() <= 32  # some samples change; probabilities and ranges differ per sample
    if "hflip" in setting or "random_erasing" in setting:
        assert changed.sum() < 32  # drawn per sample: with p=0.5 not all of 32


def test_flip_shift_and_rotation_agree_with_torchvision() -> None:
    x = images(3, size=8)
    nearest = dict(affine_interpolation="nearest")
    flip = BatchAugment(AugmentConfig(hflip=1.0), MEAN, STD)(x, rows(3))
    assert torch.allclose(flip, normalised(TF.horizontal_flip(x)), atol=1e-6)
    # u5 = 1: the largest shift to the right, 0.25 * 8 = 2 pixels; u6 = 0: 2 pixels up.
    shift = BatchAugment(AugmentConfig(affine_translate=0.25, **nearest), MEAN, STD)(x, rows(3, u5=1.0, u6=0.0))
    expected = TF.affine(x, angle=0.0, translate=[2, -2], scale=1.0, shear=[0.0, 0.0])
    assert torch.allclose(shift, normalised(expected), atol=1e-6)
    # u4 = 1: +90 degrees, counter-clockwise as torchvision's angle
    turn = BatchAugment(AugmentConfig(affine_degrees=90.0, **nearest), MEAN, STD)(x, rows(3, u4=1.0))
    expected = TF.affine(x, angle=90.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0],
                         interpolation=InterpolationMode.NEAREST)  # fmt: skip
    assert torch.allclose(turn, normalised(expected), atol=1e-6)
    # u7 = 1: zoom 1 + 0.5; the centre pixels of an 8x8 image spread out, as torchvision's scale does
    zoom = BatchAugment(AugmentConfig(affine_scale=0.5, **nearest), MEAN, STD)(x, rows(3, u7=1.0))
    expected = TF.affine(x, angle=0.0, translate=[0, 0], scale=1.5, shear=[0.0, 0.0])
    assert (zoom != normalised(expected)).float().mean() < 0.1  # nearest-pixel rounding at a few borders


def test_random_erasing_erases_one_rectangle_to_the_mean() -> None:
    x = torch.full((16, 1, 16, 16), 200, dtype=torch.uint8)
    out = BatchAugment(AugmentConfig(random_erasing=1.0), MEAN, STD)(x, draw(step_generator(1, 2, 3), 16))
    erased = out == 0  # normalised 0 = the mean
    for mask in erased[:, 0]:
        r, c = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        if len(r):
            assert mask[r[0] : r[-1] + 1, c[0] : c[-1] + 1].all()  # a filled rectangle
            assert 0.02 * 256 - 8 <= int(mask.sum()) <= 0.33 * 256 + 8
    assert erased.flatten(1).any(dim=1).sum() >= 10  # most samples have room for their rectangle


@pytest.fixture(scope="module")
def digits():
    augment = AugmentConfig(crop_scale_min=0.5, hflip=0.5, affine_degrees=10.0, random_erasing=0.5)
    return build_data("digits", aug=augment, cache="on")


def batches(loaders: Loaders, epoch: int, first: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loaders.epoch(epoch, first)]


def test_two_processes_and_accumulation_see_the_batches_of_one(digits) -> None:
    cpu = torch.device("cpu")
    one = batches(Loaders(digits, 64, 1, 0, 0, DistContext(), cpu), epoch=1)
    ranks = [batches(Loaders(digits, 64, 1, 0, 0, DistContext(r, r, 2), cpu), epoch=1) for r in (0, 1)]
    for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks, strict=True):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
    halves = batches(Loaders(digits, 32, 2, 0, 0, DistContext(), cpu), epoch=1)
    assert torch.equal(torch.cat([x for x, _ in one]), torch.cat([x for x, _ in halves]))


def test_a_resumed_epoch_continues_with_the_same_batches_and_epochs_differ(digits) -> None:
    loaders = Loaders(digits, 64, 1, 0, 0, DistContext(), torch.device("cpu"))
    whole = batches(loaders, epoch=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole[5:], batches(loaders, epoch=2, first=5), strict=True))
    assert not torch.equal(whole[0][0], batches(loaders, epoch=3)[0][0])


def test_cache_on_and_off_give_the_same_batches_without_moves() -> None:
    no_moves = dataclasses.replace(AugmentConfig(), affine_interpolation="nearest")
    cached, files = (build_data("digits", aug=no_moves, cache=cache) for cache in ("on", "off"))
    assert cached.memory is not None and files.memory is None
    cpu = torch.device("cpu")
    a, b = (batches(Loaders(data, 64, 1, 0, 0, DistContext(), cpu), epoch=0) for data in (cached, files))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.allclose(xa, xb, atol=1e-5) and torch.equal(ya, yb)


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_automatic_policies_take_the_per_sample_path_and_change_the_batch(policy: str) -> None:
    cpu = torch.device("cpu")
    plain, auto = (build_data("digits", aug=AugmentConfig(auto_augment=name), cache="on") for name in ("none", policy))
    plain_loaders, auto_loaders = (Loaders(data, 64, 1, 0, 0, DistContext(), cpu) for data in (plain, auto))
    assert plain_loaders.augment is not None and auto_loaders.augment is None  # no batched form: per sample
    (x_plain, y_plain), (x_auto, y_auto) = next(plain_loaders.epoch(0)), next(auto_loaders.epoch(0))
    assert torch.equal(y_plain, y_auto) and not torch.allclose(x_plain, x_auto)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_change_images_and_soften_targets(mixup: float, cutmix: float) -> None:
    from vitkit.data import build_batch_mixer

    x, y = normalised(images(16)), torch.arange(16) % 10
    torch.manual_seed(0)
    mixed, targets = build_batch_mixer(mixup, cutmix, 10)(x, y)
    assert not torch.equal(mixed, x)
    assert targets.shape == (16, 10) and torch.allclose(targets.sum(dim=1), torch.ones(16))
    assert (targets.max(dim=1).values < 1).all()  # every sample shares its label with another one
