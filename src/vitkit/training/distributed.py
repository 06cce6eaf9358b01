"""Several processes, one model: torchrun detection, process groups and reductions.

Under ``torchrun`` every process runs the same training loop on its share of each batch; DistributedDataParallel
averages the gradients, so all processes hold the same weights. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files, logs and plots."""
        return self.rank == 0


def context_from_env() -> DistContext:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE (absent: a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    return DistContext(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)


@contextlib.contextmanager
def only_main_logs(ctx: DistContext) -> Iterator[None]:
    """Only rank 0 logs: while it runs, the other processes' ``vitkit`` loggers pass warnings and errors only."""
    root = logging.getLogger("vitkit")
    level = root.level
    if not ctx.is_main:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def pick_device(name: str, ctx: DistContext) -> torch.device:
    """'auto' is CUDA when available (GPU ``LOCAL_RANK`` under torchrun), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N ({err})") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


def init_process_group(ctx: DistContext, device: torch.device) -> bool:
    """Join the process group torchrun set up (nccl between GPUs, gloo on the CPU), unless the caller already did.

    Returns whether this call created the group, and so whether :func:`destroy_process_group` should end it.
    """
    if not ctx.distributed or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    if ctx.is_main:
        logger.info("process group: %s, %d processes", backend, ctx.world_size)
    return True


@contextlib.contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """Run the block on the main process first, then on the others, which find what it wrote (an image folder's
    index): one process checks the files instead of every one at once."""
    if ctx.distributed and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.distributed and ctx.is_main:
        dist.barrier()


def destroy_process_group(barrier: bool) -> None:
    """Leave the process group; ``barrier`` waits for the others first (skip it after an error on one process)."""
    if barrier:
        dist.barrier()
    dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum numbers over all processes (no-op for one process)."""
    if not ctx.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_process(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any: lets all ranks stop together."""
    return all_reduce_sum([float(flag)], ctx, device)[0] > 0


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every process's ``obj``, in rank order (for per-process RNG states)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
