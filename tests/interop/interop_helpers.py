"""Random weights everywhere (zero biases would hide a wrong mapping) and logit comparisons."""

from __future__ import annotations

import torch
from torch import nn

TOLERANCE = 1e-5  # fp32 logits


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn at random: biases, norms and tokens too, so that a mix-up of any two shows."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator) * 0.05
        is_norm_scale = param.ndim == 1 and any(part in name for part in ("norm", "ln", "layernorm"))
        param.copy_(1 + noise if is_norm_scale and name.endswith("weight") else noise)
    return model.eval()


@torch.no_grad()
def max_logit_difference(a: nn.Module, b: nn.Module, images: torch.Tensor) -> float:
    """Largest absolute difference of the two models' logits; each output is read as a tensor of logits."""

    def logits(model: nn.Module) -> torch.Tensor:
        out = model.eval()(images)
        return out.logits if hasattr(out, "logits") else out

    return (logits(a) - logits(b)).abs().max().item()


def random_images(batch: int, height: int, width: int, channels: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))
