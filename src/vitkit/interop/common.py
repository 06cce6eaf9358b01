"""What the converters share: reading a downloaded weights file, renaming keys, fused q/k/v, building the model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vitkit.io import PICKLE_SUFFIXES, load_pickle_weights_only, load_safetensors
from vitkit.model import VisionTransformer, ViTConfig
from vitkit.model.weights import load_weights

# Checkpoints written by training scripts often wrap the weights in one of these keys.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``.pth``/``.bin`` file read with ``weights_only=True``.

    Nothing in the file is executed; a training checkpoint that wraps its weights (``{"state_dict": ...}``,
    ``{"model": ...}``) is unwrapped, and a ``module.`` prefix left by DataParallel is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    if path.suffix.lower() == ".safetensors":
        return load_safetensors(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: expected a .safetensors or {'/'.join(PICKLE_SUFFIXES)} weights file")
    try:
        data = load_pickle_weights_only(path, "PyTorch weights file")
    except OSError as err:  # a truncated zip archive fails in the reader, before unpickling
        raise ValueError(f"{path} is not a readable PyTorch weights file (truncated, or not one): {err}") from err
    for key in _WRAPPER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if data and all(k.startswith("module.") for k in data):
        data = {k.removeprefix("module."): v for k, v in data.items()}
    return data


def split_qkv(fused: Tensor, prefix: str, suffix: str) -> dict[str, Tensor]:
    """A fused q/k/v tensor (rows: all of q, then k, then v) split exactly into ``{prefix}q.{suffix}``, k and v."""
    return {f"{prefix}{name}.{suffix}": part.clone() for name, part in zip("qkv", fused.chunk(3, dim=0))}


def fuse_qkv(state: dict[str, Tensor], prefix: str, suffix: str) -> Tensor:
    """Take ``{prefix}q.{suffix}``, k and v out of ``state`` and return them fused as ``split_qkv`` reads them."""
    return torch.cat([state.pop(f"{prefix}{name}.{suffix}") for name in "qkv"], dim=0)


def rename(state: dict[str, Tensor], names: dict[str, str], what: str) -> dict[str, Tensor]:
    """``{new: state[old]}`` for the ``{new: old}`` table ``names``; keys the table does not know are an error."""
    unknown = sorted(set(state) - set(names.values()))
    missing = sorted(old for old in names.values() if old not in state)
    if unknown or missing:
        raise ValueError(f"{what}: unexpected keys {unknown}, missing keys {missing}")
    return {new: state[old].detach().clone() for new, old in names.items()}


def refuse_what_peer_lacks(config: ViTConfig, peer: str, problems: dict[str, bool]) -> None:
    """Raise a ValueError naming every part of a model that the ``peer`` model cannot hold: the ``problems`` present
    and vitkit's options for small data sets, which no peer library's ViT has."""
    problems = {
        **problems,
        "shifted patch tokenization (patch_embed='shifted')": config.patch_embed == "shifted",
        "locality self-attention (locality_attention)": config.locality_attention,
        "a convolutional stem (conv_stem)": bool(config.conv_stem),
        "sequence pooling (pool='seq')": config.pool == "seq",
    }
    unsupported = [what for what, present in problems.items() if present]
    if unsupported:
        raise ValueError(f"{peer} cannot hold this model: {', '.join(unsupported)}")


def build_model(config: ViTConfig, state: dict[str, Tensor]) -> VisionTransformer:
    """A vitkit model holding ``state`` exactly (every key checked), in eval mode."""
    with torch.device("meta"):  # no time spent on a random initialisation that the weights replace
        model = VisionTransformer(config)
    load_weights(model, {k: v.contiguous() for k, v in state.items()}, assign=True)
    return model.eval()


def from_peer(
    model_or_state_dict: Any,
    name: str | None,
    library: str,
    model_by_name: Callable[[dict[str, Tensor], str], Any],
    convert: Callable[[Any], tuple[ViTConfig, dict[str, Tensor]]],
) -> VisionTransformer:
    """A vitkit model from a peer model, or from a state dict whose architecture ``name`` builds the peer model
    (no download) that checks it; a state dict alone does not say the number of heads."""
    if isinstance(model_or_state_dict, dict):
        if name is None:
            raise ValueError(f"a {library} state dict needs name= (--model for vitkit convert), its architecture")
        model_or_state_dict = model_by_name(model_or_state_dict, name)
    return build_model(*convert(model_or_state_dict))
