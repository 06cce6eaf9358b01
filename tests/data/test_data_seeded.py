"""SeededTransformDataset: augmentation reproducible by (seed, epoch, index), whoever loads the sample."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vitkit.data import AugmentConfig, SeededTransformDataset, TransformedDataset, build_train_transform

AUG = AugmentConfig(crop_scale_min=0.5, hflip=0.5, affine_degrees=15, auto_augment="randaugment", random_erasing=0.5)


def _dataset(seed: int = 0) -> SeededTransformDataset:
    generator = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=generator)
    base = TensorDataset(images, torch.arange(12) % 3)
    return SeededTransformDataset(base, build_train_transform(12, 3, [0.5] * 3, [0.2] * 3, AUG), seed=seed)


def _epoch(dataset: SeededTransformDataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_same_seed_epoch_index_gives_same_sample_across_instances() -> None:
    first, second = _dataset(), _dataset()
    torch.manual_seed(1)  # the global RNG state must not matter
    a = _epoch(first)
    torch.manual_seed(2)
    assert torch.equal(a, _epoch(second))
    # Reverse order of access: still the same per index.
    assert torch.equal(a[5], second[5][0]) and torch.equal(a[0], second[-12][0])


def test_epochs_and_seeds_differ_and_set_epoch_goes_back() -> None:
    dataset = _dataset()
    epoch0 = _epoch(dataset)
    dataset.set_epoch(1)
    epoch1 = _epoch(dataset)
    assert all(not torch.equal(epoch0[i], epoch1[i]) for i in range(len(dataset)))
    dataset.set_epoch(0)
    assert torch.equal(_epoch(dataset), epoch0)
    assert not torch.equal(_epoch(_dataset(seed=1)), epoch0)
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert labels == [i % 3 for i in range(12)] and all(type(label) is int for label in labels)


def test_callers_rng_stream_is_untouched() -> None:
    dataset = _dataset()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    dataset[0]
    assert torch.equal(torch.rand(3), expected)


def test_same_samples_with_worker_processes() -> None:
    dataset = _dataset()
    dataset.set_epoch(3)
    single = torch.cat([x for x, _ in DataLoader(dataset, batch_size=4)])
    workers = torch.cat([x for x, _ in DataLoader(dataset, batch_size=4, num_workers=2)])
    assert torch.equal(single, workers)


def test_bad_arguments() -> None:
    dataset = _dataset()
    with pytest.raises(IndexError):
        dataset[12]
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        _dataset(seed=-1)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -2"):
        dataset.set_epoch(-2)


def test_transformed_dataset_applies_transform() -> None:
    base = TensorDataset(torch.arange(4.0), torch.tensor([1, 0, 1, 0]))
    dataset = TransformedDataset(base, lambda x: x * 2)
    assert len(dataset) == 4 and dataset[3] == (6.0, 0)
