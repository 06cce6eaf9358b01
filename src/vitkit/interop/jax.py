"""The original ViT / AugReg ``.npz`` checkpoints (google-research vision_transformer, big_vision) -> vitkit.

Flax stores a Dense kernel as (in, out), the patch embedding as (h, w, in, out) and attention per head:
query/key/value kernels (D, heads, head_dim), the output kernel (heads, head_dim, D). Everything the model needs
is in the file's shapes; numpy reads it, JAX is not needed. The evaluation preprocessing of that code base is a
plain bilinear resize to the model's size and pixels scaled to [-1, 1] (mean and std 0.5).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vitkit.interop.common import build_model
from vitkit.model import VisionTransformer, ViTConfig, get_config

_PREFIXES = ("opt/target/", "params/")
BLOCK = "Transformer/encoderblock_{}/"
ATTENTION = "MultiHeadDotProductAttention_1/"


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (no pickled objects), with a training-state prefix such as ``opt/target/``
    removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .npz file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz checkpoint (truncated, or not one): {err}") from err
    for prefix in _PREFIXES:
        if arrays and all(key.startswith(prefix) for key in arrays):
            arrays = {key.removeprefix(prefix): value for key, value in arrays.items()}
    if "embedding/kernel" not in arrays:
        keys = sorted(arrays)[:8]
        raise ValueError(f"{path} has no 'embedding/kernel': not an original ViT checkpoint (keys: {keys})")
    return arrays


def big_vision_sincos(grid_size: tuple[int, int], dim: int, num_prefix_tokens: int) -> Tensor:
    """big_vision's ``posemb_sincos_2d``: x (column) sines and cosines first, then y, with frequencies
    1 / 10000 ** (i / (dim/4 - 1)); a class token gets no position (zeros). It differs from vitkit's own table,
    so it is rebuilt as the source had it, not replaced: (1, prefix + gh*gw, dim)."""
    rows, cols = torch.meshgrid(
        torch.arange(grid_size[0], dtype=torch.float64), torch.arange(grid_size[1], dtype=torch.float64), indexing="ij"
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4 - 1))
    x, y = cols.flatten()[:, None] * omega, rows.flatten()[:, None] * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    return torch.cat([torch.zeros(num_prefix_tokens, dim, dtype=torch.float64), table]).float().unsqueeze(0)


def jax_config(w: dict[str, np.ndarray], name: str | None = None) -> ViTConfig:
    """The architecture an original ViT checkpoint holds, read from its shapes (``name`` gives the image size, and
    the architecture the file must then match)."""
    patch_h, patch_w, in_channels, hidden = w["embedding/kernel"].shape
    depth = sum(1 for key in w if key.startswith("Transformer/encoderblock_") and key.endswith("LayerNorm_0/scale"))
    class_token = "cls" in w
    from_file = dict(
        num_classes=w["head/kernel"].shape[1] if "head/kernel" in w else 0,
        pre_logits_dim=w["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in w else 0,
        class_token=class_token,
        pool="cls" if class_token else "mean",
        qkv_bias=BLOCK.format(0) + ATTENTION + "query/bias" in w,
        pos_embed="learned" if "Transformer/posembed_input/pos_embedding" in w else "sincos",
        interpolation="bilinear",
        crop_mode="squash",
        crop_pct=1.0,
        mean=(0.5,) * in_channels,
        std=(0.5,) * in_channels,
    )
    if name is not None:
        return get_config(name, **from_file)
    if from_file["pos_embed"] == "sincos":
        raise ValueError("this checkpoint has fixed sin-cos positions, so the image size is not in it: pass name=")
    num_grid = w["Transformer/posembed_input/pos_embedding"].shape[1] - (1 if class_token else 0)
    side = math.isqrt(num_grid)
    if side * side != num_grid:
        raise ValueError(f"the {num_grid} position vectors are not a square grid: pass name= to give the image size")
    return ViTConfig(
        image_size=(side * patch_h, side * patch_w),
        patch_size=(patch_h, patch_w),
        in_channels=in_channels,
        hidden_dim=hidden,
        depth=depth,
        num_heads=w[BLOCK.format(0) + ATTENTION + "query/kernel"].shape[1],
        mlp_dim=w[BLOCK.format(0) + "MlpBlock_3/Dense_0/kernel"].shape[1],
        **from_file,
    )


def convert_jax(w: dict[str, np.ndarray], name: str | None = None) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, vitkit state dict) of an original ViT checkpoint's arrays; keys it does not know are an error."""
    config = jax_config(w, name)
    unused = set(w)

    def take(key: str) -> Tensor:
        if key not in w:
            raise ValueError(f"the checkpoint has no {key!r}, which a {config.depth}-block ViT needs")
        unused.discard(key)
        return torch.from_numpy(np.asarray(w[key], dtype=np.float32).copy())

    def dense(prefix: str, ours: str) -> dict[str, Tensor]:  # Flax (in, out) -> PyTorch (out, in)
        return {f"{ours}.weight": take(f"{prefix}/kernel").flatten(0, -2).T, f"{ours}.bias": take(f"{prefix}/bias")}

    def layer_norm(prefix: str, ours: str) -> dict[str, Tensor]:
        return {f"{ours}.weight": take(f"{prefix}/scale"), f"{ours}.bias": take(f"{prefix}/bias")}

    state = {
        "patch_embed.proj.weight": take("embedding/kernel").permute(3, 2, 0, 1),  # (h, w, in, out) -> (out, in, h, w)
        "patch_embed.proj.bias": take("embedding/bias"),
        **layer_norm("Transformer/encoder_norm", "norm"),
    }
    if config.class_token:
        state["cls_token"] = take("cls")
    if config.pos_embed == "learned":
        state["pos_embed"] = take("Transformer/posembed_input/pos_embedding")
    else:
        state["pos_embed"] = big_vision_sincos(config.grid_size, config.hidden_dim, config.num_prefix_tokens)
    for i in range(config.depth):
        block, ours = BLOCK.format(i), f"blocks.{i}."
        state.update(layer_norm(block + "LayerNorm_0", ours + "norm1"))
        for theirs, name in (("query", "q"), ("key", "k"), ("value", "v")):
            state[f"{ours}attn.{name}.weight"] = take(f"{block}{ATTENTION}{theirs}/kernel").flatten(1).T  # (D, h*d)ᵀ
            if config.qkv_bias:
                state[f"{ours}attn.{name}.bias"] = take(f"{block}{ATTENTION}{theirs}/bias").flatten()
        state[ours + "attn.proj.weight"] = take(f"{block}{ATTENTION}out/kernel").flatten(0, 1).T  # (h*d, D)ᵀ
        state[ours + "attn.proj.bias"] = take(f"{block}{ATTENTION}out/bias")
        state.update(layer_norm(block + "LayerNorm_2", ours + "norm2"))
        state.update(dense(block + "MlpBlock_3/Dense_0", ours + "mlp.fc1"))
        state.update(dense(block + "MlpBlock_3/Dense_1", ours + "mlp.fc2"))
    if config.pre_logits_dim:
        state.update(dense("pre_logits", "pre_logits.0"))
    if config.num_classes:
        state.update(dense("head", "head"))
    if unused:
        raise ValueError(f"the checkpoint has parts vitkit's ViT does not: {sorted(unused)}")
    return config, state


def load_jax_npz(path: str | os.PathLike, name: str | None = None) -> VisionTransformer:
    """A vitkit model from an original ViT / AugReg ``.npz`` file, with the logits of the JAX model.

    ``name`` (a vitkit model name such as ``vit_base_patch16_384``) is needed only where the file does not say the
    image size: a non-square grid, or fixed sin-cos positions.
    """
    return build_model(*convert_jax(read_npz(path), name))
