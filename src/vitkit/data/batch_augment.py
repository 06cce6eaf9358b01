"""Augmentation of whole batches as tensors, on the device that trains, with randomness seeded per (seed, epoch, step).

For data held in memory as uint8 tensors (the digits, torchvision's small data sets, cached image folders) a batch
is augmented in one pass: each sample's random resized crop, random affine move and horizontal flip are composed
into one 2x3 matrix, applied with a single ``affine_grid`` + ``grid_sample``; random erasing is a batched mask.
The per-sample parameters are drawn on the CPU from a generator seeded by (seed, epoch, optimizer step) for all the
samples of the step, and each micro-batch and process takes the rows of its own samples: a resumed run, N
processes and gradient accumulation see exactly the augmentation of one uninterrupted process. RandAugment and
TrivialAugment have no batched form here; data sets using them keep the per-sample path (``SeededTransformDataset``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitkit.data.augment_config import AugmentConfig

_NUM_DRAWS = 14  # uniform numbers drawn per sample, whatever is enabled, so each column keeps its meaning
_ERASE_AREA = (0.02, 0.33)  # RandomErasing's defaults
_ERASE_LOG_RATIO = (math.log(0.3), math.log(3.3))
_CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # RandomResizedCrop's defaults


def batched(aug: AugmentConfig) -> bool:
    """Whether ``aug`` can run on whole batches (everything but the automatic policies)."""
    return aug.auto_augment == "none"


def step_generator(seed: int, epoch: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, step): the same on every process and after a resume.
    ``stream`` > 0 gives another independent generator of the same step (for draws other than the augmentation's)."""
    keys = [seed, epoch, step] + ([stream] if stream else [])
    state = int(np.random.SeedSequence(keys).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(state)


def draw(generator: torch.Generator, samples: int) -> Tensor:
    """The random numbers of ``samples`` samples, one row each (rows are then dealt to micro-batches and processes)."""
    return torch.rand(samples, _NUM_DRAWS, generator=generator, dtype=torch.float64)


class BatchAugment:
    """``aug`` applied to uint8 batches (B, C, H, W) on any device, then normalised with ``mean`` / ``std``."""

    def __init__(self, aug: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        if not batched(aug):
            raise ValueError(f"auto_augment={aug.auto_augment!r} has no batched form; use SeededTransformDataset")
        self.aug = aug
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.moves = (
            aug.crop_scale_min < 1 or aug.hflip > 0 or aug.affine_degrees or aug.affine_translate or (aug.affine_scale)
        )

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 -> float, scaled to [0, 1], normalised: the evaluation path."""
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float() / 255 - mean) / std

    def __call__(self, images: Tensor, draws: Tensor) -> Tensor:
        """Augment uint8 ``images`` (B, C, H, W) with their rows of :func:`draw` (B, ...)."""
        u = draws.to(images.device)
        x = images.float() / 255
        if self.moves:
            theta = self._sampling_matrices(u, images.shape[-2], images.shape[-1]).to(x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode=self.aug.affine_interpolation, padding_mode="zeros", align_corners=False)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.aug.random_erasing > 0:
            x = x * ~self._erase_masks(u, x.shape[-2], x.shape[-1])  # erased to 0: the mean, after normalisation
        return x

    def _sampling_matrices(self, u: Tensor, height: int, width: int) -> Tensor:
        """(B, 2, 3) maps from output to input coordinates (normalised to [-1, 1]): crop, then affine, then flip."""
        aug, n = self.aug, u.shape[0]
        eye = torch.eye(3, dtype=u.dtype, device=u.device).expand(n, 3, 3)
        # Random resized crop: a window of area fraction s and aspect ratio r, placed uniformly inside the image.
        crop = eye.clone()
        if aug.crop_scale_min < 1:
            area = aug.crop_scale_min + (1 - aug.crop_scale_min) * u[:, 0]
            ratio = torch.exp(_CROP_LOG_RATIO[0] + (_CROP_LOG_RATIO[1] - _CROP_LOG_RATIO[0]) * u[:, 1])
            w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
            crop[:, 0, 0], crop[:, 1, 1] = w, h
            crop[:, 0, 2], crop[:, 1, 2] = (1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1)
        # Random affine: output = zoom * rotate(input) + shift (in pixels), inverted to sample the input.
        affine = eye.clone()
        if aug.affine_degrees or aug.affine_translate or aug.affine_scale:
            angle = torch.deg2rad(aug.affine_degrees * (2 * u[:, 4] - 1))
            zoom = 1 + aug.affine_scale * (2 * u[:, 7] - 1)
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            aspect = width / height  # rotate in pixel units: normalised x and y have different scales
            affine[:, 0, 0], affine[:, 0, 1] = cos, sin / aspect
            affine[:, 1, 0], affine[:, 1, 1] = -sin * aspect, cos
            shift = 2 * aug.affine_translate * (2 * u[:, 5:7] - 1)  # fraction of the size -> normalised units
            affine[:, :2, 2] = -(affine[:, :2, :2] @ shift.unsqueeze(-1)).squeeze(-1)
        flip = eye.clone()
        flip[:, 0, 0] = torch.where(u[:, 8] < aug.hflip, -1.0, 1.0)
        return (crop @ affine @ flip)[:, :2]

    def _erase_masks(self, u: Tensor, height: int, width: int) -> Tensor:
        """(B, 1, H, W) booleans: one random rectangle per sample chosen with probability random_erasing."""
        area = height * width * (_ERASE_AREA[0] + (_ERASE_AREA[1] - _ERASE_AREA[0]) * u[:, 10])
        ratio = torch.exp(_ERASE_LOG_RATIO[0] + (_ERASE_LOG_RATIO[1] - _ERASE_LOG_RATIO[0]) * u[:, 11])
        h, w = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
        erase = (u[:, 9] < self.aug.random_erasing) & (h < height) & (w < width)
        top = ((height - h + 1) * u[:, 12]).floor()
        left = ((width - w + 1) * u[:, 13]).floor()
        rows = torch.arange(height, device=u.device, dtype=u.dtype).view(1, -1, 1)
        cols = torch.arange(width, device=u.device, dtype=u.dtype).view(1, 1, -1)
        inside = (rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
        inside = inside & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1))
        return (inside & erase.view(-1, 1, 1)).unsqueeze(1)
