"""A hand-written multi-head self-attention, the independent reference of the model tests."""

from __future__ import annotations

import math

import torch

from vitkit.model.vit import MultiHeadSelfAttention


def reference_attention(attn: MultiHeadSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d)) V for each head separately, heads concatenated, then the final projection;
    returns (output, probabilities (B, heads, N, N))."""
    heads, probabilities = [], []
    d = attn.head_dim
    for h in range(attn.num_heads):
        rows = slice(h * d, (h + 1) * d)
        q = x @ attn.q.weight[rows].T + attn.q.bias[rows]
        k = x @ attn.k.weight[rows].T + attn.k.bias[rows]
        v = x @ attn.v.weight[rows].T + attn.v.bias[rows]
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        probabilities.append(p)
        heads.append(p @ v)
    concatenated = torch.cat(heads, dim=-1)
    return concatenated @ attn.proj.weight.T + attn.proj.bias, torch.stack(probabilities, dim=1)
