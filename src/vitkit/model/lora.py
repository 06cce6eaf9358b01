"""LoRA: low-rank adapters on a ViT's linear layers (Hu et al. 2021), and merging them back into plain layers.

A wrapped layer computes ``base(x) + B (A x) * alpha / rank`` with ``base`` frozen, ``A`` (rank x in) initialised
as peft does (Kaiming-uniform) and ``B`` (out x rank) at zero, so the adapted model starts equal to the base. The
targets are named by the blocks' own layers: ``q``, ``k``, ``v`` and ``proj`` of the attention, ``fc1`` and ``fc2``
of the MLP; the three separate q, k, v layers let an adapter sit on the query alone, which a fused qkv cannot.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitkit.model.config import LORA_TARGETS
from vitkit.model.vit import VisionTransformer

ATTENTION_TARGETS = ("q", "k", "v", "proj")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``B A`` scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's initialisation of A

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> Tensor:
        """The update the adapter adds to the base weight: ``B A * alpha / rank`` (out x in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain linear layer computing what this adapted one computes."""
        layer = copy.deepcopy(self.base)
        layer.weight += self.delta_weight()
        return layer.requires_grad_(True)


def _parent(block: nn.Module, target: str) -> nn.Module:
    return block.get_submodule("attn" if target in ATTENTION_TARGETS else "mlp")


def add_lora(
    model: VisionTransformer, rank: int, alpha: float | None = None, targets: Sequence[str] = ("q", "v")
) -> int:
    """Wrap the ``targets`` layers of every block in :class:`LoRALinear` (in place); returns how many were wrapped.

    ``alpha`` defaults to ``rank`` (a scaling of 1). Only the wrapped layers' weights are frozen here; which other
    weights train is the caller's choice.
    """
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be names from {list(LORA_TARGETS)}, got {list(targets)}")
    wrapped = 0
    for block in model.blocks:
        for target in targets:
            parent = _parent(block, target)
            layer = getattr(parent, target)
            if isinstance(layer, LoRALinear):
                raise ValueError(f"layer {target!r} already has a LoRA adapter")
            setattr(parent, target, LoRALinear(layer, rank, alpha if alpha is not None else rank))
            wrapped += 1
    return wrapped


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's adapted layers by module name (``blocks.0.attn.q`` ...)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def merge_lora(model: VisionTransformer) -> VisionTransformer:
    """A copy of ``model`` with every adapter merged into its base layer: a plain model with the same logits."""
    merged = copy.deepcopy(model)
    for name, layer in lora_layers(merged).items():
        parent_name, _, attribute = name.rpartition(".")
        setattr(merged.get_submodule(parent_name), attribute, layer.merged())
    return merged.requires_grad_(True)
