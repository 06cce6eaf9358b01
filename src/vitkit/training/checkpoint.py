"""Checkpoints that survive ``kill -9``: weights and training state written as one atomic commit.

``last.safetensors`` holds the model's weights, ``last_state.pt`` everything else a resumed run needs (optimizer,
scheduler, EMA, RNG states, epoch and step). Each file is written atomically, but two files cannot be replaced
in one operation, so the state is first written complete as ``last_state.pt.next``, then the weights replace
``last.safetensors``, then the state is renamed into place. Both carry the same checkpoint id, and loading picks
whichever state file matches the weights: a kill between the two renames still resumes exactly.

A sharded run (``--shard-model``) writes the folder ``last.dcp`` instead, through ``torch.distributed.checkpoint``:
every process writes its shards of the model, the optimizer and the EMA, rank 0 the metadata and the rest of the
training state (``trainer_state.pt``, written last: it marks the folder complete). The new folder is written as
``last.dcp.next`` and renamed into place (the previous one moved aside first and then deleted), so a crash at any
point leaves a complete checkpoint. Loading reshards: a run resumes on any number of processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitkit.io import (
    atomic_path,
    load_pickle_weights_only,
    load_safetensors,
    read_json,
    safetensors_metadata,
    save_safetensors,
)
from vitkit.model import ViTConfig
from vitkit.model.weights import LAST_WEIGHTS, find_weights

logger = logging.getLogger(__name__)

LAST_STATE = "last_state.pt"
BEST_WEIGHTS = "best.safetensors"
_PENDING_STATE = LAST_STATE + ".next"
_ID_KEY = "checkpoint_id"
_STEP_KEY = "step"
SHARDED_CHECKPOINT = "last.dcp"
_SHARDED_NEXT = SHARDED_CHECKPOINT + ".next"
_SHARDED_OLD = SHARDED_CHECKPOINT + ".old"
_SHARDED_STATE = "trainer_state.pt"  # rank 0's part, written last


def rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """The global random streams a resumed run must continue: the CPU's and, on a GPU, the device's."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Continue the random streams :func:`rng_state` saved."""
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(
    run_dir: Path, weights: dict[str, Tensor], state: dict[str, Any], command: str = "vitkit train"
) -> None:
    """Write ``last.safetensors`` + ``last_state.pt`` so that a crash at any point leaves a consistent pair
    (``command``: what resumes the run, for the message when writing fails)."""
    checkpoint_id = uuid.uuid4().hex
    pending = run_dir / _PENDING_STATE
    try:
        with atomic_path(pending) as tmp:
            torch.save({**state, _ID_KEY: checkpoint_id}, tmp)
        metadata = {_ID_KEY: checkpoint_id, _STEP_KEY: str(state[_STEP_KEY])}
        save_safetensors(weights, run_dir / LAST_WEIGHTS, metadata=metadata)
    except OSError as err:  # a full disk, a quota, a lost network drive: the previous pair is untouched
        raise OSError(
            err.errno,
            f"could not write a checkpoint in {run_dir} ({err.strerror or err}); the previous checkpoint there is "
            f"intact: free some space, then continue with `{command} --resume {run_dir}`",
        ) from err
    os.replace(pending, run_dir / LAST_STATE)


def _weights_id(path: Path) -> str | None:
    return safetensors_metadata(path).get(_ID_KEY)


def checkpoint_step(run_dir: Path) -> int | None:
    """The optimizer step of ``run_dir``'s last checkpoint (either kind), or None when it has none. Cheap: it
    reads a file header or the small training state, not the weights."""
    sharded = _complete_sharded_checkpoint(run_dir)
    if sharded is not None:
        return int(_load_state(sharded / _SHARDED_STATE)[_STEP_KEY])
    weights_path = run_dir / LAST_WEIGHTS
    if not weights_path.is_file():
        return None
    step = safetensors_metadata(weights_path).get(_STEP_KEY)
    return int(step) if step is not None else int(load_checkpoint(run_dir)[1][_STEP_KEY])


def _load_state(path: Path) -> dict[str, Any]:
    return load_pickle_weights_only(path, "vitkit training state")  # tensors and plain values only: no code runs


def load_checkpoint(run_dir: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(weights, state) of the last checkpoint; read only (every process of a distributed run may call it)."""
    weights_path = run_dir / LAST_WEIGHTS
    if not weights_path.is_file():
        raise FileNotFoundError(f"nothing to resume in {run_dir}: it has no {LAST_WEIGHTS} (no checkpoint was written)")
    weights = load_safetensors(weights_path)
    checkpoint_id = _weights_id(weights_path)
    for name in (_PENDING_STATE, LAST_STATE):
        path = run_dir / name
        if path.is_file():
            state = _load_state(path)
            if state.get(_ID_KEY) == checkpoint_id:
                return weights, state
    raise ValueError(
        f"{run_dir}: {LAST_STATE} does not belong to {LAST_WEIGHTS} (checkpoint id {checkpoint_id}); "
        "the files were changed by hand or copied from different runs"
    )


def _is_complete(folder: Path) -> bool:
    return (folder / _SHARDED_STATE).is_file()


def _complete_sharded_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete sharded checkpoint: a finished but not yet renamed ``.next``, the current one, or the
    previous one (moved aside while the next is renamed into place)."""
    for name in (_SHARDED_NEXT, SHARDED_CHECKPOINT, _SHARDED_OLD):
        if _is_complete(run_dir / name):
            return run_dir / name
    return None


def _commit_sharded(run_dir: Path) -> None:
    """Rename a complete ``last.dcp.next`` into place (rank 0 only); delete whatever it replaces."""
    current, pending, old = run_dir / SHARDED_CHECKPOINT, run_dir / _SHARDED_NEXT, run_dir / _SHARDED_OLD
    if current.exists():
        if old.exists():  # a crash after the last rename left it: current is complete
            shutil.rmtree(old)
        os.replace(current, old)
    os.replace(pending, current)
    shutil.rmtree(old, ignore_errors=True)


def _sharded_tensors(model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None) -> dict[str, Any]:
    """The state dicts that ``torch.distributed.checkpoint`` writes and reads in place, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    weights, optimizer_state = get_state_dict(model, optimizer)
    tensors = {"model": weights, "optimizer": optimizer_state}
    if ema is not None:
        tensors["ema"] = get_model_state_dict(ema)
    return tensors


def save_sharded_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None,
    state: dict[str, Any], is_main: bool,
) -> None:  # fmt: skip
    """Every process writes its shards of ``model``, ``optimizer`` and ``ema`` (FSDP2 or plain modules) to
    ``last.dcp``; rank 0 also writes ``state`` (the rest of the training state) and renames the folder into place."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    pending = run_dir / _SHARDED_NEXT
    if is_main:
        if _is_complete(pending):  # a crash before its rename: keep it, it is the newest
            _commit_sharded(run_dir)
        shutil.rmtree(pending, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()  # nobody writes into the folder before rank 0 has cleared it
    try:
        dcp.save(_sharded_tensors(model, optimizer, ema), checkpoint_id=pending, no_dist=not dist.is_initialized())
        if is_main:
            with atomic_path(pending / _SHARDED_STATE) as tmp:
                torch.save(state, tmp)
    except OSError as err:
        raise OSError(
            err.errno,
            f"could not write a sharded checkpoint in {run_dir} ({err.strerror or err}); the previous checkpoint "
            f"there is intact: free some space, then continue with `vitkit train --resume {run_dir}`",
        ) from err
    if is_main:
        _commit_sharded(run_dir)


def load_sharded_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None
) -> dict[str, Any]:
    """Fill ``model``, ``optimizer`` and ``ema`` from the last sharded checkpoint, resharded for this run's
    processes; returns the rest of the training state. Read only: every process calls it."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    folder = _complete_sharded_checkpoint(run_dir)
    if folder is None:
        raise FileNotFoundError(
            f"nothing to resume in {run_dir}: it has no complete {SHARDED_CHECKPOINT} (no sharded checkpoint was "
            "written; a run started without --shard-model resumes without it)"
        )
    tensors = _sharded_tensors(model, optimizer, ema)
    dcp.load(tensors, checkpoint_id=folder, no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optimizer"])
    if ema is not None:
        set_model_state_dict(ema, tensors["ema"])
    return _load_state(folder / _SHARDED_STATE)


def save_best(run_dir: Path, weights: dict[str, Tensor], epoch: int, val_acc: float, source: str) -> None:
    """``best.safetensors``: the weights (``source`` "model" or "ema") with the best validation accuracy so far."""
    metadata = {"epoch": str(epoch), "val_acc": repr(val_acc), "source": source}
    save_safetensors(weights, run_dir / BEST_WEIGHTS, metadata=metadata)


def find_init_weights(path: str | os.PathLike) -> tuple[Path, ViTConfig | None]:
    """The weights file to fine-tune from (a run/model folder or a .safetensors file) and the config.json beside it."""
    try:
        weights_path, config_path = find_weights(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--init-from {err}") from None
    return weights_path, ViTConfig.from_dict(read_json(config_path)) if config_path else None
