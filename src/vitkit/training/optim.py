"""AdamW and its learning-rate schedule: linear warm-up, then cosine decay, stepped once per optimizer step."""

from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from vitkit.model import VisionTransformer
from vitkit.training import finetune


def build_optimizer(
    model: VisionTransformer, lr: float, weight_decay: float, layer_decay: float = 1.0, head_lr_scale: float = 1.0
) -> torch.optim.AdamW:
    """AdamW on the model's own parameter groups, so norms, biases, position embeddings and CLS are not decayed,
    split by learning rate for layer-wise decay and the head's scale (:func:`vitkit.training.finetune.param_groups`);
    frozen parameters are left out."""
    groups = finetune.param_groups(model, lr, weight_decay, layer_decay, head_lr_scale)
    # fused: the whole update in one kernel (CPU and CUDA), where the foreach implementation torch picks by default
    # runs one kernel per operation; small models, whose update is a large part of the step, gain the most.
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=True)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Warm-up rises linearly to 1 over ``warmup_steps`` steps (the first step already gets 1/warmup, so no step is
    wasted at lr 0); then a cosine falls from 1 to ``min_ratio`` at the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float
) -> LambdaLR:
    """Warm-up + cosine as a LambdaLR; call ``scheduler.step()`` after every ``optimizer.step()``."""
    return LambdaLR(
        optimizer,
        functools.partial(lr_factor, total_steps=total_steps, warmup_steps=warmup_steps, min_ratio=min_ratio),
    )
