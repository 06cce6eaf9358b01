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
    return fused.requires_grad_(first.weight.requires_grad)


class FusedSelfAttention(nn.Module):
    """Multi-head self-attention with q, k and v from one stacked linear layer (inference only)."""

    def __init__(self, attention: MultiHeadSelfAttention) -> None:
        super().__init__()
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.qkv = stack_linears([attention.q, attention.k, attention.v])
        self.locality = attention.locality  # locality self-attention's temperatures, when the model has them
        self.proj = attention.proj

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v per head, each (B, h, N, d), from one matrix multiply."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        return qkv[0], qkv[1], qkv[2]

    def attend(
        self, x: Tensor, bias: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The attention output (B, N, D), the keys (B, h, N, d) and, when asked, the probabilities (B, h, N, N).

        ``bias`` is added to the logits: softmax(q k^T / sqrt(d) + bias) v (with locality self-attention, its
        temperatures rescale q and its mask is added too).
        """
        q, k, v = self.qkv_heads(x)
        if self.locality is not None:
            q, mask = self.locality(q)
            bias = mask if bias is None else bias + mask
        attention = None
        if return_attention:
            logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            attention = (logits if bias is None else logits + bias).softmax(dim=-1)
            heads = attention @ v
        else:
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        b, _, n, _ = heads.shape
        out = self.proj(heads.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        return out, k, attention

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """As the model's attention: (B, N, D), and the float32 probabilities with ``return_attention``."""
        out, _, attention = self.attend(x, return_attention=return_attention)
        return out if attention is None else (out, attention.float())


def fuse_qkv(model: VisionTransformer) -> VisionTransformer:
    """Replace every block's attention by a :class:`FusedSelfAttention` (in place); logits stay the same."""
    for block in model.blocks:
        if isinstance(block.attn, MultiHeadSelfAttention):
            block.attn = FusedSelfAttention(block.attn)
    return model
