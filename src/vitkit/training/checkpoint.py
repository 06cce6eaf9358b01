"""Checkpoints that survive ``kill -9``: weights and training state written as one atomic commit.

``last.safetensors`` holds the model's weights, ``last_state.pt`` everything else a resumed run needs (optimizer,
scheduler, EMA, RNG states, epoch and step). Each file is written atomically, but two files cannot be replaced
in one operation, so the state is first written complete as ``last_state.pt.next``, then the weights replace
``last.safetensors``, then the state is renamed into place. Both carry the same checkpoint id, and loading picks
whichever state file matches the weights: a kill between the two renames still resumes exactly.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from vitkit.io import atomic_path, load_pickle_weights_only, load_safetensors, read_json, save_safetensors
from vitkit.model import ViTConfig
from vitkit.model.weights import LAST_WEIGHTS, find_weights

logger = logging.getLogger(__name__)

LAST_STATE = "last_state.pt"
BEST_WEIGHTS = "best.safetensors"
_PENDING_STATE = LAST_STATE + ".next"
_ID_KEY = "checkpoint_id"


def save_checkpoint(run_dir: Path, weights: dict[str, Tensor], state: dict[str, Any]) -> None:
    """Write ``last.safetensors`` + ``last_state.pt`` so that a crash at any point leaves a consistent pair."""
    checkpoint_id = uuid.uuid4().hex
    pending = run_dir / _PENDING_STATE
    try:
        with atomic_path(pending) as tmp:
            torch.save({**state, _ID_KEY: checkpoint_id}, tmp)
        save_safetensors(weights, run_dir / LAST_WEIGHTS, metadata={_ID_KEY: checkpoint_id})
    except OSError as err:  # a full disk, a quota, a lost network drive: the previous pair is untouched
        raise OSError(
            err.errno,
            f"could not write a checkpoint in {run_dir} ({err.strerror or err}); the previous checkpoint there is "
            f"intact: free some space, then continue with `vitkit train --resume {run_dir}`",
        ) from err
    os.replace(pending, run_dir / LAST_STATE)


def _weights_id(path: Path) -> str | None:
    with safe_open(str(path), framework="pt") as weights:
        return (weights.metadata() or {}).get(_ID_KEY)


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
