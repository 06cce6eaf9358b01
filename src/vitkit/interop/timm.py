"""timm's ``VisionTransformer`` <-> vitkit.

timm names its weights as vitkit does (vitkit followed it), except that q, k and v are one fused ``attn.qkv``
layer; its preprocessing lives in the model's ``pretrained_cfg``. timm is imported only inside the functions.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor, nn

from vitkit.interop.common import from_peer, fuse_qkv, refuse_what_peer_lacks, split_qkv
from vitkit.model import VisionTransformer, ViTConfig
from vitkit.model.weights import check_state_dict

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

logger = logging.getLogger(__name__)

# Any ViT name works for create_model when every size is passed as a keyword; this one is the best known.
TIMM_EXPORT_NAME = "vit_base_patch16_224"
TIMM_LAYER_NORM_EPS = 1e-6


def timm_model_from_state_dict(state_dict: dict[str, Tensor], name: str) -> TimmViT:
    """timm's ``name`` architecture (no download) holding ``state_dict``, after a check of every key and shape."""
    import timm
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    state = dict(state_dict)
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes}
    if "pos_embed" in state and "patch_embed.proj.weight" in state:
        num_grid = state["pos_embed"].shape[1] - (1 if "cls_token" in state else 0)
        side = math.isqrt(num_grid)
        if side * side == num_grid:  # a square grid: the image size the weights were made for
            kwargs["img_size"] = side * state["patch_embed.proj.weight"].shape[-1]
    try:
        model = timm.create_model(name, **kwargs)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"timm has no model named {name!r}: {err}") from err
    if not isinstance(model, TimmViT):
        raise ValueError(f"timm's {name} is a {type(model).__name__}, not a VisionTransformer")
    check_state_dict(state, model.state_dict(), what=f"timm's {name}")
    model.load_state_dict(state)
    return model


def timm_hub_config(weights: Path, name: str | None) -> tuple[str, dict[str, Any]]:
    """The architecture name and preprocessing that timm's config.json beside a downloaded weights file gives
    (``name``, when given, wins); without either the architecture is unknown, which is an error."""
    config_file = weights.parent / "config.json"
    saved = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if not isinstance(saved, dict) or "architecture" not in saved:
        saved = {}
    name = name or saved.get("architecture")
    if name is None:
        raise ValueError(
            f"{weights}: name the timm architecture with --model (e.g. vit_base_patch16_224); "
            f"there is no timm config.json beside the file to read it from"
        )
    pretrained = saved.get("pretrained_cfg", {})
    fields = ("interpolation", "crop_pct", "crop_mode", "mean", "std")
    preprocessing = {field: pretrained[field] for field in fields if pretrained.get(field) is not None}
    if preprocessing.get("crop_mode") not in (None, "center", "squash"):
        del preprocessing["crop_mode"]
    return name, preprocessing


def _unsupported(model: TimmViT) -> list[str]:
    """The parts of a timm ViT that vitkit's model does not have (each would change the logits)."""
    from timm.models.vision_transformer import Block

    block = model.blocks[0]
    act = getattr(block.mlp, "act", None)
    checks = {
        "blocks other than timm's pre-norm Block": not all(type(b) is Block for b in model.blocks),
        "register tokens": model.num_reg_tokens > 0,
        "position vectors not added to the class token (no_embed_class)": model.no_embed_class,
        "no position vectors": model.pos_embed is None,
        "a LayerNorm before the blocks (norm_pre)": not isinstance(model.norm_pre, nn.Identity),
        f"global_pool={model.global_pool!r} (vitkit pools 'token' or 'avg')": model.global_pool not in ("token", "avg"),
        "LayerScale (init_values)": not isinstance(getattr(block, "ls1", nn.Identity()), nn.Identity),
        "q/k normalisation (qk_norm)": not isinstance(getattr(block.attn, "q_norm", nn.Identity()), nn.Identity),
        "an MLP other than Linear-GELU-Linear": not (isinstance(act, nn.GELU) and act.approximate == "none"),
        "a norm inside the MLP": not isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity),
        "a norm after the patch embedding": not isinstance(model.patch_embed.norm, nn.Identity),
    }
    return [what for what, present in checks.items() if present]


def convert_timm(model: TimmViT) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, vitkit state dict) of a timm ``VisionTransformer``: the same weights, q/k/v split exactly."""
    from timm.models.vision_transformer import Block
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    if not isinstance(model, TimmViT):
        raise ValueError(f"expected a timm VisionTransformer, got {type(model).__name__}")
    unsupported = _unsupported(model)
    if unsupported:
        raise ValueError(f"this timm model has parts vitkit's ViT does not: {', '.join(unsupported)}")
    block = cast(Block, model.blocks[0])  # _unsupported checked that every block is a Block
    # Block annotates its attention and MLP as plain modules; in a Block their layers are nn.Linear
    fc1, qkv = cast(nn.Linear, block.mlp.fc1), cast(nn.Linear, block.attn.qkv)
    pretrained = dict(getattr(model, "pretrained_cfg", None) or {})
    in_channels = model.patch_embed.proj.in_channels
    stats = {k: pretrained[k] for k in ("mean", "std") if len(pretrained.get(k, ())) == in_channels}
    crop_mode = pretrained.get("crop_mode", "center")
    if crop_mode not in ("center", "squash"):
        logger.warning("timm crop_mode %r is not supported; using a centre crop", crop_mode)
        crop_mode = "center"
    config = ViTConfig(
        image_size=tuple(model.patch_embed.img_size),
        patch_size=tuple(model.patch_embed.patch_size),
        in_channels=in_channels,
        num_classes=model.num_classes,
        hidden_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=block.attn.num_heads,
        mlp_dim=fc1.out_features,
        pool="cls" if model.global_pool == "token" else "mean",
        class_token=model.cls_token is not None,
        qkv_bias=qkv.bias is not None,
        layer_norm_eps=block.norm1.eps,
        fc_norm=isinstance(model.fc_norm, nn.LayerNorm),
        interpolation=pretrained.get("interpolation", "bicubic"),
        crop_pct=pretrained.get("crop_pct", 0.9),
        crop_mode=crop_mode,
        **stats,
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i in range(config.depth):
        for suffix in ("weight", "bias") if config.qkv_bias else ("weight",):
            state.update(split_qkv(state.pop(f"blocks.{i}.attn.qkv.{suffix}"), f"blocks.{i}.attn.", suffix))
    return config, state


def from_timm(model_or_state_dict: nn.Module | dict[str, Tensor], name: str | None = None) -> VisionTransformer:
    """A vitkit model with the logits of a timm ViT, given as a model or as a state dict of the timm ``name``.

    A state dict alone does not say the number of heads, so ``name`` (e.g. ``vit_base_patch16_224``) is needed.
    """
    return from_peer(model_or_state_dict, name, "timm", timm_model_from_state_dict, convert_timm)


def to_timm(model: VisionTransformer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(timm state dict, keyword arguments) such that ``timm.create_model(TIMM_EXPORT_NAME, **kwargs)`` takes it."""
    config = model.config
    if config.pre_logits_dim:
        raise ValueError("timm's VisionTransformer has no pre-logits layer; this model has one (pre_logits_dim)")
    if config.mlp_dim % config.hidden_dim:
        raise ValueError(f"timm sizes the MLP as a multiple of hidden_dim; mlp_dim {config.mlp_dim} is not one")
    refuse_what_peer_lacks(config, "timm's VisionTransformer", {})
    kwargs: dict[str, Any] = dict(
        img_size=config.image_size[0] if config.image_size[0] == config.image_size[1] else list(config.image_size),
        patch_size=config.patch_size[0] if config.patch_size[0] == config.patch_size[1] else list(config.patch_size),
        in_chans=config.in_channels,
        num_classes=config.num_classes,
        embed_dim=config.hidden_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_dim // config.hidden_dim,
        qkv_bias=config.qkv_bias,
        class_token=config.class_token,
        global_pool="token" if config.pool == "cls" else "avg",
        fc_norm=config.fc_norm,
    )
    if config.layer_norm_eps != TIMM_LAYER_NORM_EPS:
        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=config.layer_norm_eps)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i in range(config.depth):
        for suffix in ("weight", "bias") if config.qkv_bias else ("weight",):
            state[f"blocks.{i}.attn.qkv.{suffix}"] = fuse_qkv(state, f"blocks.{i}.attn.", suffix)
    return state, kwargs


def create_model_call(kwargs: dict[str, Any]) -> str:
    """The Python line that builds the timm model ``to_timm``'s state dict fits."""

    def code(value: Any) -> str:
        if isinstance(value, functools.partial):  # norm_layer: the repr would name the class, not the code
            return f"functools.partial(torch.nn.LayerNorm, eps={value.keywords['eps']!r})"
        return repr(value)

    args = ", ".join(f"{k}={code(v)}" for k, v in kwargs.items())
    return f"timm.create_model({TIMM_EXPORT_NAME!r}, pretrained=False, {args})"
