"""Training memory: whole encoder blocks recomputed in the backward pass instead of kept (``--grad-checkpointing``)."""

from __future__ import annotations

import functools
from typing import cast

from torch import nn
from torch.utils.checkpoint import checkpoint


def recompute_blocks_in_backward(model: nn.Module) -> None:
    """Activation checkpointing of every block of ``model.blocks`` (``torch.utils.checkpoint``, non-reentrant, the
    random state replayed): a block keeps only its input for the backward pass and runs its forward again there.

    Set on the block instances, not in the model class: its state dict, its files and every other use of it stay
    as they are. Apply it before FSDP2's ``fully_shard``, which gathers a block's weights for the recomputation.
    """
    for block in cast(nn.ModuleList, model.blocks):  # a ViT's encoder blocks
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
