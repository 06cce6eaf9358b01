"""Fused q/k/v at inference: the three projection layers' weights stacked into one matrix.

The seed computes q, k and v with three distinct linear layers, and the model keeps them so (training,
checkpoints and conversions see three layers). At inference one (D -> 3D) matrix multiply reads the input
once and gives the CPU one large product instead of three small ones; the numbers are the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitkit.model.vit import MultiHeadSelfAttention, VisionTransformer


def stack_linears(layers: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the concatenation of ``layers``' outputs (weights and biases stacked)."""
    first = layers[0]
    has_bias = first.bias is not None
    fused = nn.Linear(
        first.in_features,
        sum(layer.out_features for layer in layers),
        bias=has_bias,
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([layer.weight for layer in layers]))
        if has_bias:
            fused.bias.copy_(torch.cat([layer.bias for layer in layers]))
    return fused


class FusedSelfAttention(nn.Module):
    """Multi-head self-attention with q, k and v from one stacked linear layer (inference only)."""

    def __init__(self, attention: MultiHeadSelfAttention) -> None:
        super().__init__()
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.qkv = stack_linears([attention.q, attention.k, attention.v])
        self.proj = attention.proj

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v per head, each (B, h, N, d), from one matrix multiply."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        return qkv[0], qkv[1], qkv[2]

    def attend(self, x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The attention output (B, N, D) and the keys (B, h, N, d); ``bias`` is added to the logits."""
        q, k, v = self.qkv_heads(x)
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # softmax(q k^T / sqrt(d) + bias) v
        b, _, n, _ = heads.shape
        return self.proj(heads.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)), k

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(x)[0]

    def attention_weights(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """softmax(q k^T / sqrt(d) + bias) per head: (B, h, N, N) in float32, each row sums to 1."""
        q, k, _ = self.qkv_heads(x)
        logits = (q @ k.transpose(-2, -1)).float() / math.sqrt(self.head_dim)
        if bias is not None:
            logits = logits + bias.float()
        return logits.softmax(dim=-1)


def fuse_qkv(model: VisionTransformer) -> VisionTransformer:
    """Replace every block's attention by a :class:`FusedSelfAttention` (in place); logits stay the same."""
    for block in model.blocks:
        if isinstance(block.attn, MultiHeadSelfAttention):
            block.attn = FusedSelfAttention(block.attn)
    return model
