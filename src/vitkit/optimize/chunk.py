"""The MLP in chunks of rows at inference, so that its wide activation is reused memory, not fresh pages.

The MLP's first layer widens each token to ``mlp_dim`` (4x the width): at ViT-B/16, batch 16, that is a
16 x 197 x 3,072 float32 output of 39 MB. glibc's malloc serves blocks above its mmap threshold (32 MiB at most)
with fresh pages from the system, one page fault per 4 KiB, on every call; smaller blocks reuse freed memory.
The MLP treats each token on its own, so running it on chunks of rows gives the same float32 numbers (int8
quantizes each chunk's activations with the chunk's own scale) while every chunk's activation stays below the
threshold, and no call pays the page faults of fresh memory.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vitkit.model.vit import MLP, VisionTransformer

MAX_CHUNK_BYTES = 16 * 2**20  # half glibc's largest mmap threshold: well inside reused memory


class ChunkedMLP(MLP):
    """The block's MLP (same layers, same names), run on chunks of rows of at most ``max_bytes`` of hidden
    activation each, joined again."""

    def __init__(self, mlp: MLP, max_bytes: int = MAX_CHUNK_BYTES) -> None:
        nn.Module.__init__(self)
        self.fc1, self.act, self.fc2, self.dropout = mlp.fc1, mlp.act, mlp.fc2, mlp.dropout
        self.hidden_dim, self.max_bytes = mlp.fc1.out_features, max_bytes

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1]
        chunk_rows = max(1, self.max_bytes // (self.hidden_dim * x.element_size()))
        if rows <= chunk_rows:
            return MLP.forward(self, x)
        chunks = x.reshape(rows, x.shape[-1]).split(chunk_rows)
        return torch.cat([MLP.forward(self, chunk) for chunk in chunks]).reshape(*x.shape[:-1], -1)


def chunk_mlps(model: VisionTransformer, max_bytes: int = MAX_CHUNK_BYTES) -> VisionTransformer:
    """Make each block's MLP a :class:`ChunkedMLP` (in place, before quantization); float32 logits stay the same."""
    for block in model.blocks:
        if isinstance(block.mlp, MLP):
            block.mlp = ChunkedMLP(block.mlp, max_bytes)
    return model
