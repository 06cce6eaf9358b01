"""Preprocessing, augmentation, normalisation statistics and batch mixing, all built from torchvision.transforms.v2."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vitkit.data.augment_config import AugmentConfig
from vitkit.data.images import ImageFile, ImageLoadError, convert_image
from vitkit.model.config import ViTConfig, to_pair

logger = logging.getLogger(__name__)

INTERPOLATIONS = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run per-image transforms on one intra-op thread.

    Small images gain nothing from splitting a kernel across threads, and waking a second thread can cost a whole
    scheduler time slice, far longer than the transform itself, whenever another process keeps the cores busy, as
    the training step does.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ConvertChannels(v2.Transform):
    """Give every image `channels` channels: PIL images as `load_image` does, tensors by grey <-> RGB conversion;
    an :class:`~vitkit.data.images.ImageFile` is decoded in full here."""

    _transformed_types = (ImageFile, PIL.Image.Image, tv_tensors.Image, torch.Tensor)

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        self.channels = channels

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, ImageFile):
            return inpt.load(self.channels)
        if isinstance(inpt, PIL.Image.Image):
            return convert_image(inpt, self.channels)
        have = inpt.shape[-3]
        if have == self.channels:
            return inpt
        if have == 3:
            return F.rgb_to_grayscale(inpt)
        if have == 1:
            return F.grayscale_to_rgb(inpt)
        raise ValueError(f"cannot convert an image tensor of shape {tuple(inpt.shape)} to {self.channels} channel(s)")


def resize_size(side: int, crop_pct: float) -> int:
    """The resized side whose centre ``side`` pixels are a ``crop_pct`` crop: floor(side / crop_pct), as timm."""
    return math.floor(round(side / crop_pct, 6))  # rounded first: 32 / (32 / 36) must give 36, not 35


def _resize_crop(
    size: tuple[int, int], interpolation: str = "bilinear", crop_pct: float = 1.0, crop_mode: str = "center"
) -> list[v2.Transform]:
    """Resize so that an (h, w) centre crop covers ``crop_pct`` of the image, then crop (ViTConfig explains the modes).

    "center" resizes the shorter side to max(h, w) / crop_pct, which covers (h, w) whatever the aspect ratio (for
    square sizes timm's eval resize); "squash" resizes to exactly (h, w) / crop_pct (transformers' ViT processor
    at crop_pct 1).
    """
    mode = INTERPOLATIONS[interpolation]
    if crop_mode == "squash":
        resize = v2.Resize([resize_size(s, crop_pct) for s in size], interpolation=mode, antialias=True)
    else:
        resize = v2.Resize(resize_size(max(size), crop_pct), interpolation=mode, antialias=True)
    return [resize, v2.CenterCrop(size)]


def _to_float() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


def build_decode_transform(image_size: int | Sequence[int], channels: int, **resize: Any) -> v2.Compose:
    """PIL image or uint8 tensor -> uint8 (channels, h, w) at the training size: what a cached data set keeps.

    ``resize``: interpolation, crop_pct and crop_mode of the resize and centre crop (default: plain bilinear)."""
    return v2.Compose(
        [ConvertChannels(channels), *_resize_crop(to_pair(image_size, "image_size"), **resize), v2.ToImage()]
    )


def _unnormalised_eval_steps(image_size: int | Sequence[int], channels: int, **resize: Any) -> list[v2.Transform]:
    return [ConvertChannels(channels), *_resize_crop(to_pair(image_size, "image_size"), **resize), *_to_float()]


def build_eval_transform(
    image_size: int | Sequence[int],
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    crop_mode: str = "center",
) -> v2.Compose:
    """PIL image or uint8 (C, H, W) tensor -> normalised float (channels, h, w): convert, resize, centre-crop."""
    resize = dict(interpolation=interpolation, crop_pct=crop_pct, crop_mode=crop_mode)
    return v2.Compose([*_unnormalised_eval_steps(image_size, channels, **resize), v2.Normalize(list(mean), list(std))])


def eval_transform(config: ViTConfig) -> v2.Compose:
    """The preprocessing a model's weights expect, all read from its config: what predict, evaluate, explain, serve
    and export feed the model (size, channels, interpolation, crop, mean and std).

    A config without mean/std (a model saved without them) gets unnormalised pixels in [0, 1], with a warning.
    """
    mean, std = config.mean, config.std
    if mean is None or std is None:
        logger.warning("the model's config has no mean/std; feeding it unnormalised pixels in [0, 1]")
        mean, std = (0.0,) * config.in_channels, (1.0,) * config.in_channels
    return build_eval_transform(
        config.image_size,
        config.in_channels,
        mean,
        std,
        interpolation=config.interpolation,
        crop_pct=config.crop_pct,
        crop_mode=config.crop_mode,
    )


def build_train_transform(
    image_size: int | Sequence[int],
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    aug: AugmentConfig,
) -> v2.Compose:
    """The eval pipeline with `aug`'s random steps; geometric and colour steps run before the float conversion."""
    size = to_pair(image_size, "image_size")
    steps: list[v2.Transform] = [ConvertChannels(channels)]
    if aug.crop_scale_min < 1.0:
        steps.append(v2.RandomResizedCrop(size, scale=(aug.crop_scale_min, 1.0), antialias=True))
    else:
        steps.extend(_resize_crop(size))
    if aug.affine_degrees or aug.affine_translate or aug.affine_scale:
        steps.append(
            v2.RandomAffine(
                degrees=aug.affine_degrees,
                translate=(aug.affine_translate, aug.affine_translate) if aug.affine_translate else None,
                scale=(1.0 - aug.affine_scale, 1.0 + aug.affine_scale) if aug.affine_scale else None,
                interpolation=INTERPOLATIONS[aug.affine_interpolation],
            )
        )
    if aug.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.auto_augment == "randaugment":
        steps.append(v2.RandAugment(magnitude=aug.randaugment_magnitude))
    elif aug.auto_augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    steps += [*_to_float(), v2.Normalize(list(mean), list(std))]
    if aug.random_erasing > 0:
        steps.append(v2.RandomErasing(aug.random_erasing, value=0))
    return v2.Compose(steps)


class _PixelSums(Dataset):
    """Per-channel (sum, sum of squares, count) of the pixels of chosen samples of a data set, one sample each."""

    def __init__(
        self, dataset: Dataset, indices: list[int], to_tensor: Callable[[Any], torch.Tensor], channels: int
    ) -> None:
        self.dataset, self.indices, self.to_tensor, self.channels = dataset, indices, to_tensor, channels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        try:
            with single_threaded():
                pixels = self.to_tensor(self.dataset[self.indices[i]][0]).flatten(1).double()
        except ImageLoadError as exc:  # training substitutes such a file; the statistics leave it out
            logger.warning("%s; left out of the normalisation statistics", exc)
            pixels = torch.zeros(self.channels, 0, dtype=torch.float64)
        return pixels.sum(dim=1), pixels.square().sum(dim=1), pixels.shape[1]


def compute_mean_std(
    dataset: Dataset,
    image_size: int | Sequence[int],
    channels: int,
    max_samples: int = 2000,
    seed: int = 0,
    workers: int = 0,
    to_tensor: Callable[[Any], torch.Tensor] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (a seeded random subsample of) `dataset`'s images at the training size.

    `dataset` yields (image, label) with raw PIL images, image files or uint8 tensors; the images are decoded in
    `workers` processes (0: this one) by `to_tensor` (default: convert, resize and centre-crop as evaluation does).
    Values are in [0, 1], as the model sees them before normalisation. A channel with no variation gets std 1 so
    normalising never divides by zero.
    """
    if not isinstance(dataset, Sized):
        raise ValueError(f"normalisation statistics need a data set with a length, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("cannot compute normalisation statistics of an empty data set")
    to_tensor = to_tensor or v2.Compose(_unnormalised_eval_steps(image_size, channels))
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:max_samples].tolist()
    sums = _PixelSums(dataset, indices, to_tensor, channels)
    # A generator of its own: iterating must not draw from torch's global one (the model's initial weights come next).
    loader = DataLoader(sums, batch_size=64, num_workers=workers, generator=torch.Generator())
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for batch_total, batch_total_sq, batch_count in loader:
        total += batch_total.sum(dim=0)
        total_sq += batch_total_sq.sum(dim=0)
        count += int(batch_count.sum())
    return pixel_statistics(total, total_sq, count)


def pixel_statistics(
    total: torch.Tensor, total_sq: torch.Tensor, count: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) from sums of pixels and of their squares; a flat channel gets std 1."""
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    if bool((std < 1e-6).any()):
        logger.warning("an image channel has no variation (std %s); using std 1 for it", std.tolist())
        std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return tuple(mean.tolist()), tuple(std.tolist())


def build_batch_mixer(
    mixup_alpha: float, cutmix_alpha: float, num_classes: int
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """A callable (images, labels) -> (mixed images, soft targets) for MixUp and/or CutMix, or None if both are off.

    With both alphas > 0 each batch gets one of the two, chosen at random (as in DeiT). Labels are class indices
    (B,) or probabilities (B, num_classes); targets come back as (B, num_classes) float probabilities.
    """
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise ValueError(f"{name} must be >= 0 (0 turns it off), got {alpha!r}")
    if num_classes < 2:
        raise ValueError(f"MixUp/CutMix need num_classes >= 2, got {num_classes!r}")
    mixers: list[v2.Transform] = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
