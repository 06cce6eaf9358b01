"""The model's steps that have no weights: cutting images into patches, the fixed sin-cos position vectors,
casting a block's input once for autocast, and choosing the blocks whose outputs to return.

Plain tensor functions, below both the model (``vit.py``, ``small_data.py``) and the weight fitting
(``weights.py``), so that each can use them without importing the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vitkit.model.config import Pair


def patchify(images: Tensor, patch_size: Pair) -> Tensor:
    """Step 1: cut (B, C, H, W) images into flattened patches (B, num_patches, P*P*C), row by row.

    The model does this and step 2 in one strided convolution; this function spells step 1 out.
    """
    b, c, h, w = images.shape
    ph, pw = patch_size
    patches = images.reshape(b, c, h // ph, ph, w // pw, pw)  # (B, C, gh, ph, gw, pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, ph, pw)
    return patches.reshape(b, (h // ph) * (w // pw), c * ph * pw)


def sincos_position_vectors(grid_size: Pair, dim: int, num_prefix_tokens: int) -> Tensor:
    """Step 3, fixed variant: 2-D sine-cosine position vectors (1, prefix + gh*gw, dim).

    Half the features encode the row, half the column, each as sines and cosines of geometric
    frequencies; prefix (CLS) positions get zeros.
    """
    rows, cols = torch.meshgrid(
        torch.arange(grid_size[0], dtype=torch.float64), torch.arange(grid_size[1], dtype=torch.float64), indexing="ij"
    )
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    angles_row = rows.flatten()[:, None] * freqs[None, :]
    angles_col = cols.flatten()[:, None] * freqs[None, :]
    table = torch.cat([angles_row.sin(), angles_row.cos(), angles_col.sin(), angles_col.cos()], dim=1)
    table = torch.cat([torch.zeros(num_prefix_tokens, dim, dtype=torch.float64), table])
    return table.float().unsqueeze(0)


def cast_once_for_autocast(x: Tensor) -> Tensor:
    """``x`` in autocast's dtype when autocast is on, else as it is.

    Each of the three q, k, v layers would otherwise cast its input on its own, and keep its own bf16 copy for
    the backward pass: two more (B, N, D) tensors a block than one fused qkv layer keeps, a sizeable share of a
    bf16 training step's memory on a GPU. Cast here, the three share one copy.
    """
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


def chosen_blocks(indices: int | Sequence[int] | None, depth: int) -> set[int]:
    """The block numbers ``forward_intermediates`` returns: None for every block, n for the last n blocks, or
    block numbers (negative ones count from the end), each checked against ``depth``."""
    if indices is None:
        return set(range(depth))
    if isinstance(indices, int):
        if not 0 <= indices <= depth:
            raise ValueError(f"indices={indices} asks for the last {indices} blocks; the model has {depth}")
        return set(range(depth - indices, depth))
    bad = [i for i in indices if not -depth <= i < depth]
    if bad:
        raise ValueError(f"block indices {bad} are out of range for {depth} blocks: use -{depth}..{depth - 1}")
    return {i % depth for i in indices}
