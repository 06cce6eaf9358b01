"""Datasets that apply a transform to (image, label) pairs, with per-sample seeded randomness for training."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vitkit.data.images import ImageLoadError
from vitkit.data.transforms import single_threaded

logger = logging.getLogger(__name__)


class TransformedDataset(Dataset):
    """`base`'s (image, label) pairs with `transform` applied to the image (for deterministic eval transforms).

    A file that fails to decode here (its damage is past what the start-up check reads) does not stop the run: the
    next sample that decodes, (index + 1, index + 2, ...) modulo the length, takes its place, with the failed
    sample's random draws; so every process, worker and resumed run makes the same substitution. Each one is
    logged, naming the file, the reason and the substitute, and counted in ``substitutions`` (per process).
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform
        self.substitutions = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def random_state(self, index: int) -> contextlib.AbstractContextManager[Any]:
        """The random state sample ``index``'s transform runs in (here: the caller's)."""
        return contextlib.nullcontext()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = range(len(self))[index]  # negative indices and bounds as for a list
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            image, label = self.base[candidate]
            try:
                with single_threaded(), self.random_state(index):
                    return self.transform(image), int(label)
            except ImageLoadError as exc:
                self.substitutions += 1
                logger.warning("%s; substituting the next sample that decodes for sample %d (%d substitution(s) "
                               "in this process)", exc, index, self.substitutions)  # fmt: skip
        raise ImageLoadError(f"none of the {len(self)} samples could be decoded (the warnings above name each file)")


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

    @contextlib.contextmanager
    def random_state(self, index: int) -> Any:
        """torch's CPU generator seeded by (seed, epoch, index), the caller's state restored afterwards."""
        with seeded_random_state(self.sample_seed(index)):
            yield


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed (the width torch's CPU generator uses) for sample `index` of `epoch`."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_random_state(seed: int) -> Any:
    """torch's CPU generator seeded by `seed` for the block; the caller's stream is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def seeded_transform(transform: Callable[[Any], torch.Tensor], image: Any, seed: int) -> torch.Tensor:
    """`transform(image)` on one thread with torch's CPU generator seeded by `seed`; the caller's stream is kept."""
    with single_threaded(), seeded_random_state(seed):
        return transform(image)
