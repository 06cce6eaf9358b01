"""Datasets that apply a transform to (image, label) pairs, with per-sample seeded randomness for training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vitkit.data.transforms import single_threaded


class TransformedDataset(Dataset):
    """`base`'s (image, label) pairs with `transform` applied to the image (for deterministic eval transforms)."""

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        with single_threaded():
            return self.transform(image), int(label)


class SeededTransformDataset(TransformedDataset):
    """A TransformedDataset whose random transform depends only on (seed, epoch, index).

    Each sample's transform runs with the CPU generator seeded from those three numbers inside
    torch.random.fork_rng, so the augmentation of a sample is the same whatever worker, process (rank) or resumed
    run loads it, differs between epochs, and the caller's RNG stream is left untouched. Only the CPU generator is
    touched, never CUDA's. Call set_epoch(epoch) before iterating each epoch; a DataLoader with
    persistent_workers=True keeps the workers' copies and would not see it.
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor], seed: int) -> None:
        super().__init__(base, transform)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed!r}")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        self.epoch = epoch

    def sample_seed(self, index: int) -> int:
        """A well-mixed 32-bit seed (the width torch's CPU generator uses) for this epoch's sample `index`."""
        return sample_seed(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = range(len(self))[index]  # negative indices and bounds as for a list
        image, label = self.base[index]
        return seeded_transform(self.transform, image, self.sample_seed(index)), int(label)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed (the width torch's CPU generator uses) for sample `index` of `epoch`."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def seeded_transform(transform: Callable[[Any], torch.Tensor], image: Any, seed: int) -> torch.Tensor:
    """`transform(image)` on one thread with torch's CPU generator seeded by `seed`; the caller's stream is kept."""
    with single_threaded(), torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return transform(image)
