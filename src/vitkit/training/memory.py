"""Training memory: activations recomputed in the backward pass instead of kept from the forward pass.

Whole encoder blocks (``--grad-checkpointing``): :func:`recompute_blocks_in_backward`.

The MLP's GELU output is not kept for the backward pass, but recomputed from GELU's input.

A linear layer keeps its input for its weight's gradient. After GELU that input is a (B, N, mlp_dim) tensor, four
times the width, per block; GELU's own backward node already keeps GELU's input, of the same size. Kept as a recipe
instead (GELU's input and its ``approximate``), the output is recomputed, bit for bit, when the backward pass needs
it: one wide tensor less per block, for one GELU per block in the backward pass. Measured on this project's 2-core
CPU, ViT-S/16 at batch 32: the training step peaked at 1,778 MiB instead of 2,187, at the same speed. `vitkit train`
runs its CPU forward passes in it (:func:`vitkit.training.loop.training_forward`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass
class _GeluOutput:
    """How to recompute a saved GELU output: GELU of ``input`` as ``approximate``, viewed as ``shape``."""

    input: Tensor
    approximate: str
    shape: torch.Size


def _pack(saved: Tensor) -> Tensor | _GeluOutput:
    """A tensor saved for the backward pass, or the recipe for it when it is (a whole view of) a GELU's output."""
    output = saved if saved._base is None else saved._base
    node = output.grad_fn
    whole = saved.data_ptr() == output.data_ptr() and saved.numel() == output.numel() and saved.is_contiguous()
    if type(node).__name__ == "GeluBackward0" and whole and output.is_contiguous():
        return _GeluOutput(node._saved_self, node._saved_approximate, saved.shape)
    return saved


def _unpack(packed: Tensor | _GeluOutput) -> Tensor:
    if isinstance(packed, _GeluOutput):
        return F.gelu(packed.input, approximate=packed.approximate).view(packed.shape)
    return packed


def recompute_gelu_outputs() -> Any:
    """A context for forward passes: tensors saved in it that are GELU outputs are recomputed in the backward pass."""
    return torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)


def recompute_blocks_in_backward(model: nn.Module) -> None:
    """Activation checkpointing of every block of ``model.blocks`` (``torch.utils.checkpoint``, non-reentrant, the
    random state replayed): a block keeps only its input for the backward pass and runs its forward again there.

    Set on the block instances, not in the model class: its state dict, its files and every other use of it stay
    as they are. Apply it before FSDP2's ``fully_shard``, which gathers a block's weights for the recomputation.
    """
    for block in model.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
