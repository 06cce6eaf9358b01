"""Data loaders whose order depends only on (seed, epoch), so any process count and any resume sees the same batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from vitkit.data import DataBundle
from vitkit.training.distributed import DistContext


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that can start part-way through an epoch (set ``start`` after ``set_epoch``).

    DistributedSampler shuffles with a generator seeded by seed + epoch and deals the permutation out in turn,
    sample i to process i mod world_size: with a per-process batch of B / world_size, one step of all processes
    together sees exactly the batch of B a single process would.
    """

    start: int = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


@dataclass
class Loaders:
    sampler: ResumableSampler
    train: DataLoader
    val: DataLoader
    # Worker seeds come from this generator, not from torch's global one, whose state a checkpoint must capture.
    generator: torch.Generator
    per_process_batch: int
    seed: int

    def epoch(self, epoch: int, first: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's training batches of ``epoch``, from micro-batch ``first`` on (after a resume)."""
        self.train.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.start = first * self.per_process_batch
        self.generator.manual_seed(self.seed + epoch)
        return iter(self.train)


def build_loaders(
    data: DataBundle, batch_size: int, workers: int, seed: int, ctx: DistContext, device: torch.device
) -> Loaders:
    """Training loader (shuffled, whole batches only) and this process's share of the validation set."""
    pin_memory = device.type == "cuda"
    per_process_batch = batch_size // ctx.world_size
    sampler = ResumableSampler(data.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    generator = torch.Generator()
    common = dict(num_workers=workers, pin_memory=pin_memory, generator=generator)
    # drop_last: every step averages equally many samples per process, so DDP's mean of means is the batch mean.
    train = DataLoader(data.train, batch_size=per_process_batch, sampler=sampler, drop_last=True, **common)
    val_share = Subset(data.val, range(ctx.rank, len(data.val), ctx.world_size))  # no padding: exact accuracy
    val = DataLoader(val_share, batch_size=max(2 * per_process_batch, 64), shuffle=False, **common)
    return Loaders(sampler, train, val, generator, per_process_batch, seed)
