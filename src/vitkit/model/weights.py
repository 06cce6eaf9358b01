"""Fitting weights to a model, and the files a model lives in.

A state dict from a saved run, from another image size or from another library (see ``vitkit.interop``) is
checked key by key and shape by shape against the model it fills: position vectors are resized to the model's
patch grid, and a head for other classes can be left fresh. The model class itself only declares the weights.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitkit.io import load_state_dict_file, read_json, save_safetensors, write_json
from vitkit.model.config import Pair, ViTConfig, to_pair
from vitkit.model.functional import sincos_position_vectors

if TYPE_CHECKING:
    from vitkit.model.vit import VisionTransformer

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"  # a training run's latest checkpoint (vitkit.training.checkpoint)
HEAD_KEYS = ("head.weight", "head.bias")


def interpolate_position_vectors(pos_embed: Tensor, old_grid: Pair, new_grid: Pair, num_prefix_tokens: int) -> Tensor:
    """Position vectors (1, prefix + gh*gw, D) resampled to another patch grid (bicubic, antialiased), the CLS
    position kept as is. No shortcut for an equal grid, so an exported graph can take the grid from its input."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()  # (1, D, gh, gw)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    grid = grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)  # (1, gh' * gw', D)
    return torch.cat([prefix, grid], dim=1)


def resize_position_vectors(pos_embed: Tensor, old_grid: Pair, new_grid: Pair, num_prefix_tokens: int) -> Tensor:
    """Resample position vectors to another patch grid (bicubic), keeping the CLS position as is."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    return interpolate_position_vectors(pos_embed, old_grid, new_grid, num_prefix_tokens)


def fit_position_vectors(table: Tensor, source_grid: Pair, config: ViTConfig) -> Tensor:
    """Position vectors for ``config``'s grid from a ``table`` made for ``source_grid``.

    Learned vectors are resampled. A fixed sin-cos table that is vitkit's own is recomputed exactly for the new
    grid; one from another source (timm and big_vision lay out and scale their sines differently) is resampled
    like learned vectors rather than silently replaced by vitkit's.
    """
    if tuple(source_grid) == config.grid_size:
        return table
    if config.pos_embed == "sincos":
        own = sincos_position_vectors(source_grid, config.hidden_dim, config.num_prefix_tokens)
        if own.shape == table.shape and torch.allclose(own, table.float(), atol=1e-6):
            return sincos_position_vectors(config.grid_size, config.hidden_dim, config.num_prefix_tokens)
        logger.warning("resampling a sin-cos table that is not vitkit's own from grid %s", source_grid)
    logger.info("resizing position vectors from grid %s to %s", source_grid, config.grid_size)
    return resize_position_vectors(table, source_grid, config.grid_size, config.num_prefix_tokens)


def _source_grid(num_positions: int, source_grid: Pair | None) -> Pair:
    if source_grid is None:
        side = math.isqrt(num_positions)
        if side * side != num_positions:
            raise ValueError(
                f"cannot infer the patch grid of position vectors with {num_positions} patches; pass source_grid"
            )
        return (side, side)
    if source_grid[0] * source_grid[1] != num_positions:
        raise ValueError(f"source_grid {source_grid} does not match {num_positions} position vectors")
    return source_grid


def set_image_size(
    model: VisionTransformer, image_size: int | Pair, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Use ``model`` at another image size, its position vectors fitted to the new grid.

    Learned vectors are resized in place: the parameter stays the same object, so an optimizer built before the
    resize trains the resized vectors rather than a stale copy of the old ones. Its running state for them (AdamW's
    moments) was made for the old grid: pass ``optimizer`` to drop that state, so that they start afresh on the
    new grid. Kept, it makes the optimizer's next step fail on the mismatched sizes instead of training silently.
    """
    old_grid = model.config.grid_size
    model.config = model.config.replace(image_size=to_pair(image_size, "image_size"))
    if model.config.grid_size == old_grid:
        return
    table = fit_position_vectors(model.pos_embed.data, old_grid, model.config)
    if not isinstance(model.pos_embed, nn.Parameter):
        model.pos_embed = table.to(model.pos_embed.device)
        return
    param = model.pos_embed
    param.data = table
    param.grad = None  # a gradient for the old grid cannot be added to
    if optimizer is not None and optimizer.state.pop(param, None):
        logger.info("the optimizer's state of the position vectors restarts on the %s grid", model.config.grid_size)


def check_state_dict(
    state: dict[str, Tensor],
    expected: dict[str, Tensor],
    ignore_missing: tuple[str, ...] = (),
    what: str = "this model",
) -> None:
    """Raise a ValueError listing every missing, unexpected and mismatched key (with shapes), if there is any."""
    missing = sorted(k for k in set(expected) - set(state) if k not in ignore_missing)
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: weights {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in sorted(state.items())
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{what}: {items}" for what, items in
            (("missing keys", missing), ("unexpected keys", unexpected), ("mismatched shapes", mismatched)) if items
        ]  # fmt: skip
        raise ValueError(f"weights do not fit {what}: " + "; ".join(problems))


def load_weights(
    model: VisionTransformer,
    state_dict: dict[str, Tensor],
    source_grid: Pair | None = None,
    strict_head: bool = True,
    assign: bool = False,
) -> None:
    """Load ``state_dict`` into ``model``, fitting position vectors made for ``source_grid`` to the model's grid.

    ``source_grid`` defaults to a square grid inferred from the weights. With ``strict_head=False`` a head whose
    shape differs (or is absent) is left as initialised: fine-tuning on other classes. ``assign=True`` makes the
    tensors of ``state_dict`` the model's own (for a model built on the meta device, whose every key is given).
    """
    state, own = dict(state_dict), model.state_dict()
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        grid = _source_grid(state["pos_embed"].shape[1] - model.config.num_prefix_tokens, source_grid)
        state["pos_embed"] = fit_position_vectors(state["pos_embed"], grid, model.config)
    if not strict_head:
        for key in HEAD_KEYS:
            if key in state and (key not in own or state[key].shape != own[key].shape):
                logger.warning("not loading %s of shape %s: the model's head differs", key, tuple(state[key].shape))
                del state[key]
    # A fixed sin-cos table may be absent (files written before it was saved): the model's own is then used.
    optional = ("pos_embed",) if model.config.pos_embed == "sincos" else ()
    check_state_dict(state, own, optional + (() if strict_head else HEAD_KEYS))
    model.load_state_dict(state, strict=False, assign=assign)


def find_weights(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """Which weights file to load for ``path``, and the config.json beside it: the one rule every loader follows.

    A file is itself; a folder gives its model.safetensors. A run that did not finish has only its checkpoint
    (last.safetensors): that is an error saying how to finish the run or to load the checkpoint by its path,
    never a silent half-trained model.
    """
    path = Path(path)
    expected = f"a vitkit model or run folder ({CONFIG_FILE} + {WEIGHTS_FILE}) or a .safetensors file"
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            hint = ""
            if (path / LAST_WEIGHTS).is_file():
                hint = (
                    f"; the run did not finish: continue it with `vitkit train --resume {path}`, or load its last "
                    f"checkpoint as {path / LAST_WEIGHTS}"
                )
            raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE}; expected {expected}{hint}")
    elif path.is_file():
        weights = path
    else:
        raise FileNotFoundError(f"{path}: no such folder or file; expected {expected}")
    config = weights.parent / CONFIG_FILE
    return weights, config if config.is_file() else None


def save_config(model: VisionTransformer, directory: str | os.PathLike) -> Path:
    """Write only ``config.json``: enough for a run folder to say what it trains before any weights exist."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json({"model_type": "vitkit", **model.config.to_dict()}, directory / CONFIG_FILE)
    return directory


def save_pretrained(model: VisionTransformer, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (as transformers does)."""
    directory = save_config(model, directory)
    save_safetensors(model.state_dict(), directory / WEIGHTS_FILE)
    return directory


def from_pretrained(
    model_class: type[VisionTransformer], path: str | os.PathLike, **overrides: Any
) -> VisionTransformer:
    """Rebuild a ``model_class`` model from a folder (or a weights file with ``config.json`` beside it).

    Weights are read with safetensors, or for ``.pt``/``.pth``/``.bin`` with ``torch.load(weights_only=True)``:
    loading never runs code from the file.

    ``overrides`` change config fields: another ``image_size`` resizes the position vectors, another
    ``num_classes`` gives a fresh head; dropouts and the like simply apply.
    """
    weights_file, config_file = find_weights(path)
    if config_file is None:
        raise FileNotFoundError(f"{weights_file.parent} has no {CONFIG_FILE} beside {weights_file.name}")
    saved = ViTConfig.from_dict(read_json(config_file))
    new_classes = "num_classes" in overrides and overrides["num_classes"] != saved.num_classes
    if new_classes and "class_names" not in overrides:
        overrides["class_names"] = None
    model = model_class(saved.replace(**overrides))
    state_dict = load_state_dict_file(weights_file)
    try:
        load_weights(model, state_dict, source_grid=saved.grid_size, strict_head=not new_classes)
    except ValueError as err:
        raise ValueError(f"{weights_file} does not fit the model {config_file} describes: {err}") from err
    if new_classes:
        logger.warning("new head for %d classes (the weights had %d)", model.num_classes, saved.num_classes)
    return model
