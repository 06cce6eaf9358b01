"""Training batches whose order and augmentation depend only on (seed, epoch, position): any process count and any
resume sees the same batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from vitkit.data import DataBundle
from vitkit.data.batch_augment import BatchAugment, batched, draw, step_generator
from vitkit.data.decode import Normalise
from vitkit.data.gpu_decode import BatchDecoder, EncodedImages, collate_encoded
from vitkit.data.shards import training_stream
from vitkit.training.distributed import DistContext


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that can start part-way through an epoch and end early (set ``start`` and ``stop``
    after ``set_epoch``; ``stop`` None: the epoch's end).

    DistributedSampler shuffles with a generator seeded by seed + epoch and deals the permutation out in turn,
    sample i to process i mod world_size: with a per-process batch of B / world_size, one step of all processes
    together sees exactly the batch of B a single process would.
    """

    start: int = 0
    stop: int | None = None

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, self.stop)

    def __len__(self) -> int:
        return (self.num_samples if self.stop is None else min(self.stop, self.num_samples)) - self.start


class Loaders:
    """This process's training batches per epoch and its share of the validation set.

    Data held in memory (``DataBundle.memory``) with an augmentation that has a batched form is indexed on the
    device and augmented a whole batch at a time, seeded by (seed, epoch, micro-batch); so are image files decoded
    on the device (``decode="gpu"``: the workers read bytes). Anything else goes through DataLoaders whose
    per-sample augmentation is seeded by (seed, epoch, sample) (image files decoded at their crop's scale arrive as
    uint8 and are normalised on the device); shards are streamed (``DataBundle.stream``). Either
    way the batches depend only on the seed, the epoch and the position in it: the same after a resume, and for
    any number of processes (shards: the same samples per epoch, grouped into batches per process).
    """

    def __init__(
        self, data: DataBundle, batch_size: int, accum_steps: int, workers: int, seed: int, ctx: DistContext,
        device: torch.device, decode: str = "cpu",
    ) -> None:  # fmt: skip
        self.seed, self.ctx, self.device, self.batch_size, self.accum_steps = seed, ctx, device, batch_size, accum_steps
        self.per_process_batch = batch_size // ctx.world_size
        self.sampler = ResumableSampler(data.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
        self.micro_batches = self.sampler.num_samples // self.per_process_batch  # whole batches only (drop_last)
        self.train_set = data.train
        self.in_memory = data.memory is not None and batched(data.augment)
        # --decode gpu: workers read files, this process decodes and augments whole batches on the device.
        on_device = decode == "gpu" and data.memory is None
        self.decoder = BatchDecoder(data.image_size, data.in_channels, device) if on_device else None
        self.augment = BatchAugment(data.augment, data.mean, data.std) if self.in_memory or on_device else None
        self.normalise = None if self.in_memory or on_device else data.train_normalise
        # Worker seeds come from this generator, not from torch's global one, whose state a checkpoint must capture.
        self.generator = torch.Generator()
        val_share = range(ctx.rank, len(data.val), ctx.world_size)  # no padding: exact accuracy
        self.val_batch = max(2 * self.per_process_batch, 256)
        self.largest_val_share = len(range(0, len(data.val), ctx.world_size))  # rank 0's share, the largest
        self.empty_batch_shape = (0, data.in_channels, *data.image_size)
        if self.in_memory:
            train_images, train_labels, val_images, val_labels = data.memory
            self.images, self.labels = train_images.to(device), train_labels.to(device)
            self.val_images, self.val_labels = val_images[val_share].to(device), val_labels[val_share]
            return
        common: dict[str, Any] = dict(num_workers=workers, pin_memory=device.type == "cuda", generator=self.generator)
        self.stream = None
        if data.stream is not None:
            self.stream = training_stream(data, ctx.rank, ctx.world_size, self.per_process_batch, on_device)
            self.micro_batches = self.stream.batches
            self.train = DataLoader(self.stream, batch_size=None, **common)
        else:
            # drop_last: every step averages equally many samples per process, so DDP's mean of means is the batch
            # mean.
            self.train = DataLoader(
                EncodedImages(data.train.base) if on_device else data.train, batch_size=self.per_process_batch,
                sampler=self.sampler, drop_last=True, collate_fn=collate_encoded if on_device else None, **common,
            )  # fmt: skip
        self.val_loader = DataLoader(Subset(data.val, val_share), batch_size=self.val_batch, shuffle=False, **common)

    def epoch(self, epoch: int, first: int = 0, end: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's training batches of ``epoch``, from micro-batch ``first`` on (after a resume) up to
        micro-batch ``end`` (a step limit within the epoch; None: the epoch's end), so that no worker decodes a
        batch that will not be trained on."""
        self.sampler.set_epoch(epoch)
        self.sampler.start = first * self.per_process_batch
        self.sampler.stop = None if end is None else end * self.per_process_batch
        if self.in_memory:
            return self._memory_batches(epoch, first, self.micro_batches if end is None else end)
        if self.stream is not None:
            self.stream.set_epoch(epoch, first)
        elif self.decoder is None:
            self.train_set.set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)
        if self.decoder is not None:
            return self._decoded_batches(epoch, first)
        if self.normalise is not None:
            return self._normalised_batches(self.normalise)
        return iter(self.train)

    def _normalised_batches(self, normalise: Normalise) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The workers' uint8 batches moved to the device and normalised there (timm's prefetcher does the same)."""
        for images, labels in self.train:
            yield normalise(images.to(self.device, non_blocking=True)), labels

    def _rows(self, epoch: int, micro: int) -> torch.Tensor:
        """The augmentation draws of this process's samples of micro-batch ``micro``: the step's rows, then this
        micro-batch's, then this process's (DistributedSampler deals samples in turn)."""
        step, part = divmod(micro, self.accum_steps)
        rows = draw(step_generator(self.seed, epoch, step), self.batch_size * self.accum_steps)
        return rows[part * self.batch_size : (part + 1) * self.batch_size][self.ctx.rank :: self.ctx.world_size]

    def _memory_batches(self, epoch: int, first: int, end: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        augment = self._batch_augment()
        indices = torch.tensor(list(self.sampler), dtype=torch.int64).to(self.device)
        size = self.per_process_batch
        for i, micro in enumerate(range(first, min(end, self.micro_batches))):
            batch = indices[i * size : (i + 1) * size]
            yield augment(self.images[batch], self._rows(epoch, micro)), self.labels[batch]

    def _decoded_batches(self, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches decoded on the device, the next one in a thread while the current one trains."""
        augment, decoder = self._batch_augment(), self.decoder
        if decoder is None:
            raise RuntimeError("device-decoded batches need the BatchDecoder made for decode='gpu'")
        batches = enumerate(self.train, start=first)
        with ThreadPoolExecutor(1, thread_name_prefix="vitkit-decode") as decoding:

            def decode_next() -> tuple[int, Future[torch.Tensor], torch.Tensor] | None:
                item = next(batches, None)
                if item is None:
                    return None
                micro, (files, labels) = item
                return micro, decoding.submit(decoder, files), labels

            pending = decode_next()
            while pending is not None:
                micro, decoded, labels = pending
                pending = decode_next()
                images = decoded.result()
                if images.is_cuda:  # made on the decoder's stream: keep its memory until this stream is done
                    images.record_stream(torch.cuda.current_stream(images.device))
                yield augment(images, self._rows(epoch, micro)), labels

    def _batch_augment(self) -> BatchAugment:
        """The whole-batch augmentation, made for data held in memory and for images decoded on the device."""
        if self.augment is None:
            raise RuntimeError("batches augmented on the device need the BatchAugment made for them")
        return self.augment

    def val(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of the validation set, normalised as the model expects.

        Shares differ by at most one image, so one process may have one batch fewer; it gets an empty batch in its
        place. Every process then runs as many forward passes as the others, which a sharded model needs: each
        pass gathers the weights from all of them.
        """
        if self.in_memory:
            normalise = self._batch_augment().normalise
            batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = (
                (normalise(self.val_images[i : i + self.val_batch]), self.val_labels[i : i + self.val_batch])
                for i in range(0, len(self.val_labels), self.val_batch)
            )
        else:
            batches = iter(self.val_loader)
        return itertools.chain(batches, self._empty_val_batches())

    def _empty_val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Empty batches up to the number of batches of the largest share (none for it)."""
        if self.in_memory:
            own, batch = len(self.val_labels), self.val_batch
        else:
            own, batch = len(self.val_loader.dataset), self.val_loader.batch_size or 1  # type: ignore[arg-type]
        missing = -(-self.largest_val_share // batch) - -(-own // batch)
        for _ in range(missing):
            yield torch.zeros(self.empty_batch_shape, device=self.device), torch.zeros(0, dtype=torch.int64)
