"""torchvision's ``VisionTransformer`` (vit_b_16 and friends) <-> vitkit.

torchvision fuses q/k/v into ``nn.MultiheadAttention``'s ``in_proj``, calls its optional pre-logits layer
``heads.pre_logits`` (Linear -> tanh, as the original ViT) and evaluates at resize 256 / crop 224, bilinear.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vitkit.interop.common import from_peer, fuse_qkv, refuse_what_peer_lacks, rename, split_qkv
from vitkit.model import VisionTransformer, ViTConfig
from vitkit.model.weights import check_state_dict

if TYPE_CHECKING:
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_CROP_PCT = 224 / 256  # ImageClassification(resize_size=256, crop_size=224)


def _names(config: ViTConfig) -> dict[str, str]:
    """vitkit key -> torchvision key for everything but the fused q/k/v."""
    names = {
        "cls_token": "class_token",
        "pos_embed": "encoder.pos_embedding",
        "patch_embed.proj.weight": "conv_proj.weight",
        "patch_embed.proj.bias": "conv_proj.bias",
        "norm.weight": "encoder.ln.weight",
        "norm.bias": "encoder.ln.bias",
    }
    for i in range(config.depth):
        layer = f"encoder.layers.encoder_layer_{i}."
        for ours, theirs in (
            ("norm1", "ln_1"), ("attn.proj", "self_attention.out_proj"), ("norm2", "ln_2"),
            ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.3"),
        ):  # fmt: skip
            for suffix in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{suffix}"] = f"{layer}{theirs}.{suffix}"
    if config.pre_logits_dim:
        names.update({"pre_logits.0.weight": "heads.pre_logits.weight", "pre_logits.0.bias": "heads.pre_logits.bias"})
    if config.num_classes:
        names.update({"head.weight": "heads.head.weight", "head.bias": "heads.head.bias"})
    return names


def torchvision_model_from_state_dict(state_dict: dict[str, Tensor], name: str) -> TorchvisionViT:
    """torchvision's ``name`` architecture (e.g. vit_b_16, no download) holding ``state_dict``, every key checked."""
    from torchvision.models import get_model, list_models

    if name not in list_models():
        raise ValueError(f"torchvision has no model named {name!r}; its ViTs are vit_b_16, vit_b_32, vit_l_16, ...")
    kwargs: dict[str, Any] = {"weights": None}
    if "heads.head.weight" in state_dict:
        kwargs["num_classes"] = state_dict["heads.head.weight"].shape[0]
    if "encoder.pos_embedding" in state_dict and "conv_proj.weight" in state_dict:
        side = math.isqrt(state_dict["encoder.pos_embedding"].shape[1] - 1)
        kwargs["image_size"] = side * state_dict["conv_proj.weight"].shape[-1]
    with torch.device("meta"):  # no time spent on a random initialisation that the weights replace
        model = get_model(name, **kwargs)
    check_state_dict(dict(state_dict), model.state_dict(), what=f"torchvision's {name}")
    model.load_state_dict(state_dict, assign=True)
    return model


def convert_torchvision(model: TorchvisionViT) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, vitkit state dict) of a torchvision ``VisionTransformer``, q/k/v split exactly."""
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    if not isinstance(model, TorchvisionViT):
        raise ValueError(f"expected a torchvision VisionTransformer, got {type(model).__name__}")
    if not isinstance(model.conv_proj, nn.Conv2d):
        raise ValueError("torchvision ViTs with a convolutional stem (conv_stem_configs) are not supported")
    config = ViTConfig(
        image_size=model.image_size,
        patch_size=model.patch_size,
        num_classes=model.num_classes,
        hidden_dim=model.hidden_dim,
        depth=len(model.encoder.layers),
        num_heads=model.encoder.layers[0].num_heads,
        mlp_dim=model.mlp_dim,
        layer_norm_eps=model.encoder.ln.eps,
        pre_logits_dim=model.representation_size or 0,
        interpolation="bilinear",
        crop_pct=TORCHVISION_CROP_PCT,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    source = model.state_dict()
    fused = {}
    for i in range(config.depth):
        attention = f"encoder.layers.encoder_layer_{i}.self_attention."
        for suffix in ("weight", "bias"):
            fused.update(split_qkv(source[f"{attention}in_proj_{suffix}"], f"blocks.{i}.attn.", suffix))
    names = _names(config)
    unfused = {k: v for k, v in source.items() if "in_proj_" not in k}
    return config, {**rename(unfused, names, "torchvision ViT"), **fused}


def from_torchvision(model_or_state_dict: nn.Module | dict[str, Tensor], name: str | None = None) -> VisionTransformer:
    """A vitkit model with the logits of a torchvision ViT, given as a model or as a state dict of ``name``."""
    return from_peer(model_or_state_dict, name, "torchvision", torchvision_model_from_state_dict, convert_torchvision)


def to_torchvision(model: VisionTransformer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, keyword arguments) for ``torchvision.models.vision_transformer.VisionTransformer(**kwargs)``."""
    config = model.config
    problems = {
        "a non-square image or patch": len({*config.image_size}) > 1 or len({*config.patch_size}) > 1,
        "no class token or mean pooling": config.pool == "mean" or not config.class_token,
        "fc_norm": config.fc_norm,
        "no q/k/v bias": not config.qkv_bias,
        "other than 3 input channels": config.in_channels != 3,
        "no classification head": not config.num_classes,
    }
    refuse_what_peer_lacks(config, "torchvision's VisionTransformer", problems)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fused = {}
    for i in range(config.depth):
        attention = f"encoder.layers.encoder_layer_{i}.self_attention."
        for suffix in ("weight", "bias"):
            fused[f"{attention}in_proj_{suffix}"] = fuse_qkv(state, f"blocks.{i}.attn.", suffix)
    inverse = {theirs: ours for ours, theirs in _names(config).items()}
    kwargs = dict(
        image_size=config.image_size[0],
        patch_size=config.patch_size[0],
        num_layers=config.depth,
        num_heads=config.num_heads,
        hidden_dim=config.hidden_dim,
        mlp_dim=config.mlp_dim,
        num_classes=config.num_classes,
        representation_size=config.pre_logits_dim or None,
        norm_layer=functools.partial(nn.LayerNorm, eps=config.layer_norm_eps),
    )
    return {**rename(state, inverse, "vitkit model"), **fused}, kwargs
