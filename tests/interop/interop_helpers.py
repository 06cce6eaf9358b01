"""Random weights everywhere (zero biases would hide a wrong mapping), logit comparisons, an original-ViT .npz
writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitkit import VisionTransformer

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


def write_original_npz(model: VisionTransformer, path: Path, with_positions: bool = True) -> None:
    """The google-research vision_transformer layout: Flax kernels (in, out), attention kernels per head."""
    s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    c = model.config
    heads, head_dim, d = c.num_heads, c.hidden_dim // c.num_heads, c.hidden_dim
    w = {
        "embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": s["patch_embed.proj.bias"],
        "Transformer/encoder_norm/scale": s["norm.weight"],
        "Transformer/encoder_norm/bias": s["norm.bias"],
    }
    if c.class_token:
        w["cls"] = s["cls_token"]
    if with_positions:
        w["Transformer/posembed_input/pos_embedding"] = s["pos_embed"]
    for i in range(c.depth):
        block, ours = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        attention = block + "MultiHeadDotProductAttention_1/"
        for norm, name in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            w[f"{block}{name}/scale"], w[f"{block}{name}/bias"] = s[ours + norm + ".weight"], s[ours + norm + ".bias"]
        for name, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            w[f"{attention}{theirs}/kernel"] = s[f"{ours}attn.{name}.weight"].T.reshape(d, heads, head_dim)
            w[f"{attention}{theirs}/bias"] = s[f"{ours}attn.{name}.bias"].reshape(heads, head_dim)
        w[attention + "out/kernel"] = s[ours + "attn.proj.weight"].T.reshape(heads, head_dim, d)
        w[attention + "out/bias"] = s[ours + "attn.proj.bias"]
        for fc, name in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            w[f"{block}MlpBlock_3/{name}/kernel"] = s[f"{ours}mlp.{fc}.weight"].T
            w[f"{block}MlpBlock_3/{name}/bias"] = s[f"{ours}mlp.{fc}.bias"]
    if c.pre_logits_dim:
        w["pre_logits/kernel"], w["pre_logits/bias"] = s["pre_logits.0.weight"].T, s["pre_logits.0.bias"]
    w["head/kernel"], w["head/bias"] = s["head.weight"].T, s["head.bias"]
    np.savez(path, **w)
