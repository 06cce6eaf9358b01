"""Training batches whose order and augmentation depend only on (seed, epoch, position): any process count and any
resume sees the same batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from vitkit.data import DataBundle
from vitkit.data.batch_augment import BatchAugment, batched, draw, step_generator
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


class Loaders:
    """This process's training batches per epoch and its share of the validation set.

    Data held in memory (``DataBundle.memory``) with an augmentation that has a batched form is indexed on the
    device and augmented a whole batch at a time, seeded by (seed, epoch, micro-batch); anything else goes through
    DataLoaders whose per-sample augmentation is seeded by (seed, epoch, sample). Either way the batches depend only
    on the seed, the epoch and the position in it: the same for any number of processes and after a resume.
    """

    def __init__(
        self, data: DataBundle, batch_size: int, accum_steps: int, workers: int, seed: int, ctx: DistContext,
        device: torch.device,
    ) -> None:  # fmt: skip
        self.seed, self.ctx, self.device, self.batch_size, self.accum_steps = seed, ctx, device, batch_size, accum_steps
        self.per_process_batch = batch_size // ctx.world_size
        self.sampler = ResumableSampler(data.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
        self.micro_batches = self.sampler.num_samples // self.per_process_batch  # whole batches only (drop_last)
        self.augment = (
            BatchAugment(data.augment, data.mean, data.std) if data.memory is not None and batched(data.augment) else None
        )
        # Worker seeds come from this generator, not from torch's global one, whose state a checkpoint must capture.
        self.generator = torch.Generator()
        val_share = range(ctx.rank, len(data.val), ctx.world_size)  # no padding: exact accuracy
        self.val_batch = max(2 * self.per_process_batch, 256)
        if self.augment is not None:
            train_images, train_labels, val_images, val_labels = data.memory
            self.images, self.labels = train_images.to(device), train_labels.to(device)
            self.val_images, self.val_labels = val_images[val_share].to(device), val_labels[val_share]
            return
        common = dict(num_workers=workers, pin_memory=device.type == "cuda", generator=self.generator)
        # drop_last: every step averages equally many samples per process, so DDP's mean of means is the batch mean.
        self.train = DataLoader(data.train, batch_size=self.per_process_batch, sampler=self.sampler, drop_last=True,
                                **common)  # fmt: skip
        self.val_loader = DataLoader(Subset(data.val, val_share), batch_size=self.val_batch, shuffle=False, **common)

    def epoch(self, epoch: int, first: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's training batches of ``epoch``, from micro-batch ``first`` on (after a resume)."""
        self.sampler.set_epoch(epoch)
        self.sampler.start = first * self.per_process_batch
        if self.augment is not None:
            return self._memory_batches(epoch, first)
        self.train.dataset.set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)
        return iter(self.train)

    def _memory_batches(self, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = torch.tensor(list(self.sampler), dtype=torch.int64).to(self.device)
        size, global_size = self.per_process_batch, self.batch_size
        for i, micro in enumerate(range(first, self.micro_batches)):
            batch = indices[i * size : (i + 1) * size]
            # The step's rows, then this micro-batch's, then this process's (DistributedSampler deals samples in turn).
            step, part = divmod(micro, self.accum_steps)
            rows = draw(step_generator(self.seed, epoch, step), global_size * self.accum_steps)
            rows = rows[part * global_size : (part + 1) * global_size][self.ctx.rank :: self.ctx.world_size]
            yield self.augment(self.images[batch], rows), self.labels[batch]

    def val(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of the validation set, normalised as the model expects."""
        if self.augment is None:
            return iter(self.val_loader)
        return (
            (self.augment.normalise(self.val_images[i : i + self.val_batch]), self.val_labels[i : i + self.val_batch])
            for i in range(0, len(self.val_labels), self.val_batch)
        )
