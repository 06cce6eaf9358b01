"""Augmentation settings and each data set's defaults, without importing torch (the CLI builds flags from them)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCES = ("digits", "folder", "shards", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn")
CACHE_CHOICES = ("auto", "on", "off")  # keep decoded images in memory (vitkit.data.build_data)
DECODE_CHOICES = ("cpu", "gpu")  # where training images are decoded and augmented (vitkit.data.gpu_decode)
SHARDS_INFO = "shards.json"  # beside WebDataset shards: classes, counts (vitkit.data.shards)
AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment")
INTERPOLATION_NAMES = ("bilinear", "nearest", "bicubic")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation. The field defaults mean "no augmentation"; `default_augment` gives each data set's.

    crop_scale_min: lower bound of RandomResizedCrop's area fraction; 1.0 turns the random crop off (plain resize).
    hflip: probability of a horizontal flip.
    affine_degrees / affine_translate / affine_scale: RandomAffine with rotation in [-d, d] degrees, shifts up to
        this fraction of the width/height, zoom in [1 - s, 1 + s]; all 0 turns it off. affine_interpolation:
        "bilinear" or "nearest" (keeps tiny images' pixel values crisp, as their test images are).
    auto_augment: "none", "randaugment" (2 ops of strength randaugment_magnitude, 0..30) or "trivialaugment"
        (TrivialAugmentWide).
    random_erasing: probability of RandomErasing (applied after normalisation, erasing to the mean).
    """

    crop_scale_min: float = 1.0
    hflip: float = 0.0
    affine_degrees: float = 0.0
    affine_translate: float = 0.0
    affine_scale: float = 0.0
    affine_interpolation: str = "bilinear"
    auto_augment: str = "none"
    randaugment_magnitude: int = 9
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "crop_scale_min": (0.0 < self.crop_scale_min <= 1.0, "in (0, 1]"),
            "hflip": (0.0 <= self.hflip <= 1.0, "a probability in [0, 1]"),
            "affine_degrees": (0.0 <= self.affine_degrees <= 180.0, "in [0, 180]"),
            "affine_translate": (0.0 <= self.affine_translate <= 1.0, "a fraction in [0, 1]"),
            "affine_scale": (0.0 <= self.affine_scale < 1.0, "in [0, 1)"),
            "affine_interpolation": (self.affine_interpolation in INTERPOLATION_NAMES, f"one of {INTERPOLATION_NAMES}"),
            "auto_augment": (self.auto_augment in AUTO_AUGMENTS, f"one of {AUTO_AUGMENTS}"),
            "randaugment_magnitude": (0 <= self.randaugment_magnitude <= 30, "an integer in [0, 30]"),
            "random_erasing": (0.0 <= self.random_erasing <= 1.0, "a probability in [0, 1]"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)!r} is invalid; expected {expected}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DIGIT_LIKE_AUGMENT = AugmentConfig(affine_degrees=10.0, affine_translate=0.1, affine_scale=0.1)
_DEFAULT_AUGMENTS = {
    # Upright digits: a flip or a large crop changes the class or loses the digit; small affine moves do not.
    "digits": dataclasses.replace(DIGIT_LIKE_AUGMENT, affine_interpolation="nearest"),
    "mnist": DIGIT_LIKE_AUGMENT,
    "svhn": DIGIT_LIKE_AUGMENT,
    "fashion-mnist": AugmentConfig(hflip=0.5, affine_translate=0.1, affine_scale=0.1),
    # Natural images: the DeiT-style recipe scaled down for small images.
    "cifar10": AugmentConfig(crop_scale_min=0.5, hflip=0.5, auto_augment="trivialaugment", random_erasing=0.25),
    "cifar100": AugmentConfig(crop_scale_min=0.5, hflip=0.5, auto_augment="trivialaugment", random_erasing=0.25),
    "folder": AugmentConfig(crop_scale_min=0.5, hflip=0.5),
    "shards": AugmentConfig(crop_scale_min=0.5, hflip=0.5),  # image folders written as shards
}


def is_shard_location(data_dir: str | os.PathLike) -> bool:
    """Whether ``data_dir`` names WebDataset shards (a folder holding shards.json, .tar paths or patterns, URLs, a
    .txt list of them) rather than an image folder or a torchvision root."""
    text = str(data_dir)
    if Path(text).is_dir():
        return (Path(text) / SHARDS_INFO).is_file()
    if text.endswith(".txt") and Path(text).is_file():  # a list of shards, one a line, or some other text file
        with open(text, errors="replace") as listing:
            text = next((line.strip() for line in listing if line.strip()), "")
    parts = [part.strip() for part in text.split("::")]
    return any("://" in p or p.startswith("pipe:") or p.endswith(".tar") for p in parts)


def default_augment(source: str, **overrides: Any) -> AugmentConfig:
    """The augmentation that suits `source`, with the non-None `overrides` applied (None means "keep the default")."""
    if source not in _DEFAULT_AUGMENTS:
        raise ValueError(f"unknown data source {source!r}; expected one of {sorted(_DEFAULT_AUGMENTS)}")
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {unknown}; expected some of {sorted(fields)}")
    return dataclasses.replace(_DEFAULT_AUGMENTS[source], **{k: v for k, v in overrides.items() if v is not None})
