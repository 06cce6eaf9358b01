"""Under bf16 autocast a vitkit block keeps no more for its backward pass than timm's block with one fused qkv layer."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vitkit.model import get_config
from vitkit.model.vit import EncoderBlock

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def saved_bytes(module: nn.Module, x: Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of ``module(x)`` under CPU bf16 autocast."""
    kept: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        module(x).float().sum().backward()
    return sum(kept.values()) - x.untyped_storage().nbytes()  # the input is the caller's, not the block's


def test_block_keeps_no_more_for_backward_than_timms_fused_qkv_block() -> None:
    config = get_config("vit_tiny_patch16_224")
    ours = EncoderBlock(config, drop_path=0.0)
    theirs = timm_vit.Block(
        config.hidden_dim, config.num_heads, mlp_ratio=config.mlp_dim / config.hidden_dim, qkv_bias=True
    )
    x = torch.randn(8, 197, config.hidden_dim, requires_grad=True)
    activation = 8 * 197 * config.hidden_dim * 2  # one bf16 (B, N, D) tensor
    ours_bytes, theirs_bytes = saved_bytes(ours, x), saved_bytes(theirs, x)
    # Before the single cast each of q, k, v kept its own bf16 copy of the input: two tensors more than timm.
    assert ours_bytes <= theirs_bytes + activation // 2, (ours_bytes, theirs_bytes)
