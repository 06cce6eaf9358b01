"""Several processes, one model: torchrun and Slurm detection, process groups, DDP or FSDP2, and reductions.

Under ``torchrun`` (or ``srun``) every process runs the same training loop on its share of each batch.
DistributedDataParallel averages the gradients, so all processes hold the same weights; with ``--shard-model``
FSDP2 (``fully_shard``) instead keeps 1/N of every weight, gradient and optimizer state on each process and gathers
one encoder block's weights at a time. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from vitkit.training.config import check_batch_split

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
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE; without them, the task of an ``srun`` job step
    (SLURM_PROCID / SLURM_LOCALID / SLURM_STEP_NUM_TASKS); without either, a single process."""
    env = os.environ
    if "WORLD_SIZE" in env:
        names = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    elif "SLURM_STEP_NUM_TASKS" in env:  # set by srun for its tasks, not in the batch script itself
        names = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS")
    else:
        return DistContext()
    try:
        rank, local_rank, world_size = (int(env.get(name, "0")) for name in names)
    except ValueError as err:
        raise ValueError(f"{'/'.join(names)} must be integers, got {[env.get(name) for name in names]}") from err
    return DistContext(rank, local_rank, world_size) if world_size > 1 else DistContext()


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
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:  # torchrun sets them; under srun the batch script does (docs/guides/multi-node.md)
        raise ValueError(
            f"process {ctx.rank} of {ctx.world_size} cannot find the others: {' and '.join(missing)} not set. Under "
            "srun, export MASTER_ADDR (the first node's host name) and MASTER_PORT (a free port) in the batch script"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, rank=ctx.rank, world_size=ctx.world_size, device_id=device if device.type == "cuda" else None
    )
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


@contextlib.contextmanager
def run_processes(device_name: str, batch_size: int) -> Iterator[tuple[DistContext, torch.device]]:
    """This process's place and device for a run (``batch_size`` must split evenly between the processes), in the
    process group torchrun set up: joined here unless the caller did, and then left at the end, after the others
    when the block finished, at once after an error."""
    ctx = context_from_env()
    check_batch_split(batch_size, ctx.world_size)
    device = pick_device(device_name, ctx)
    owns_group = init_process_group(ctx, device)
    finished = False
    try:
        yield ctx, device
        finished = True
    finally:
        if owns_group:
            destroy_process_group(barrier=finished)


def parallelize(model: nn.Module, ctx: DistContext, device: torch.device, shard: bool) -> nn.Module:
    """The module the training steps run: ``model`` itself for one process; sharded in place with FSDP2 (one unit
    per encoder block, then the root) with ``shard``; else wrapped in DistributedDataParallel."""
    if not ctx.distributed:
        return model
    if shard:
        shard_blocks(model, device)
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def shard_blocks(model: nn.Module, device: torch.device) -> None:
    """``fully_shard`` each of ``model.blocks``, then the model (patch embedding, head and the rest)."""
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as err:  # public from PyTorch 2.6
        raise ValueError(
            f"--shard-model needs PyTorch 2.6 or newer (FSDP2's fully_shard), found {torch.__version__}"
        ) from err

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in cast(nn.ModuleList, model.blocks):  # a ViT's encoder blocks
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


@contextlib.contextmanager
def gradient_sync(network: nn.Module, enabled: bool) -> Iterator[None]:
    """Average the gradients between processes in this backward pass only if ``enabled`` (the last micro-batch of
    an optimizer step): DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync``."""
    from torch.distributed.fsdp import FSDPModule

    if enabled:
        yield
    elif isinstance(network, DistributedDataParallel):
        with network.no_sync():
            yield
    elif isinstance(network, FSDPModule):
        network.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            network.set_requires_gradient_sync(True)
    else:
        yield


def full_tensor(value: Tensor) -> Tensor:
    """A plain tensor from a DTensor (an FSDP2 gradient norm is one), else ``value`` itself."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def full_weights(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s whole state dict on the CPU, in rank 0 (every process calls it: it gathers FSDP2's shards;
    the other processes get an empty dict). A module that is not sharded gives its own state dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        return module.state_dict()
    weights = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return cast(dict[str, Tensor], weights)  # a full state dict holds plain tensors, no DTensor shards


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every process (no-op for one process)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
