"""transformers' ``ViTForImageClassification`` <-> vitkit.

transformers keeps q, k and v separate, as vitkit does, so its weights are only renamed (the names changed in
transformers 5; both spellings are read). Its LayerNorm epsilon is 1e-12 and its ``ViTImageProcessor`` resizes
the whole image to the model's size (no crop), bilinear, with mean and std 0.5.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

from torch import Tensor, nn

from vitkit.data.transforms import resize_size
from vitkit.interop.common import build_model, refuse_what_peer_lacks, rename
from vitkit.model import VisionTransformer, ViTConfig

# Inside each encoder layer: vitkit name -> transformers 5 name, and the same for transformers 4.
_LAYER_NAMES = {
    5: {
        "norm1": "layernorm_before", "attn.q": "attention.q_proj", "attn.k": "attention.k_proj",
        "attn.v": "attention.v_proj", "attn.proj": "attention.o_proj", "norm2": "layernorm_after",
        "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    },
    4: {
        "norm1": "layernorm_before", "attn.q": "attention.attention.query", "attn.k": "attention.attention.key",
        "attn.v": "attention.attention.value", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
    },
}  # fmt: skip
_LAYER_PREFIX = {5: "vit.layers.", 4: "vit.encoder.layer."}
PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}
PREPROCESSOR_FILE = "preprocessor_config.json"


def _names(config: ViTConfig, keys: set[str]) -> dict[str, str]:
    """vitkit key -> transformers key, in the spelling that ``keys`` (a transformers state dict's) uses."""
    version = 5 if any(k.startswith(_LAYER_PREFIX[5]) for k in keys) else 4
    names = {
        "cls_token": "vit.embeddings.cls_token",
        "pos_embed": "vit.embeddings.position_embeddings",
        "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
        "norm.weight": "vit.layernorm.weight",
        "norm.bias": "vit.layernorm.bias",
    }
    if config.num_classes:
        names.update({"head.weight": "classifier.weight", "head.bias": "classifier.bias"})
    for i in range(config.depth):
        for ours, theirs in _LAYER_NAMES[version].items():
            no_bias = ours in ("attn.q", "attn.k", "attn.v") and not config.qkv_bias
            for suffix in ("weight",) if no_bias else ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{suffix}"] = f"{_LAYER_PREFIX[version]}{i}.{theirs}.{suffix}"
    return names


def _preprocessing(folder: Path | None) -> dict[str, Any]:
    """ViTConfig preprocessing fields from a folder's preprocessor_config.json (ViTImageProcessor's defaults)."""
    file = folder / PREPROCESSOR_FILE if folder else None
    saved = json.loads(file.read_text()) if file and file.is_file() else {}
    resample = {code: name for name, code in PIL_RESAMPLE.items()}.get(saved.get("resample", 2), "bilinear")
    fields: dict[str, Any] = dict(
        interpolation=resample,
        mean=tuple(saved.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(saved.get("image_std", (0.5, 0.5, 0.5))),
        crop_mode="squash",
        crop_pct=1.0,
    )
    if saved.get("do_center_crop") and "shortest_edge" in saved.get("size", {}):  # BitImageProcessor's layout
        crop = saved["crop_size"]
        fields.update(crop_mode="center", crop_pct=max(crop["height"], crop["width"]) / saved["size"]["shortest_edge"])
    return fields


def convert_transformers(
    model: nn.Module, preprocessing: dict[str, Any] | None = None
) -> tuple[ViTConfig, dict[str, Tensor]]:
    """(ViTConfig, vitkit state dict) of a ``ViTForImageClassification``: the same weights, renamed."""
    from transformers import ViTForImageClassification

    if not isinstance(model, ViTForImageClassification):
        raise ValueError(f"expected a transformers ViTForImageClassification, got {type(model).__name__}")
    peer = model.config
    if peer.hidden_act != "gelu":
        raise ValueError(f"vitkit's MLP uses exact GELU; this model uses hidden_act={peer.hidden_act!r}")
    # the config's __post_init__ turns id2label's keys into ints (they are strings in config.json)
    id2label = cast(dict[int, str], peer.id2label or {})
    labels = [id2label[i] for i in range(len(id2label))]
    default_labels = [f"LABEL_{i}" for i in range(len(id2label))]
    fields = _preprocessing(None) if preprocessing is None else preprocessing
    in_channels = peer.num_channels
    if len(fields["mean"]) != in_channels:
        fields = {**fields, "mean": None, "std": None}
    config = ViTConfig(
        image_size=peer.image_size,
        patch_size=peer.patch_size,
        in_channels=in_channels,
        num_classes=peer.num_labels if isinstance(model.classifier, nn.Linear) else 0,
        hidden_dim=peer.hidden_size,
        depth=peer.num_hidden_layers,
        num_heads=peer.num_attention_heads,
        mlp_dim=peer.intermediate_size,
        qkv_bias=peer.qkv_bias,
        layer_norm_eps=peer.layer_norm_eps,
        class_names=labels if labels and labels != default_labels else None,
        **fields,
    )
    source = model.state_dict()
    source.pop("vit.embeddings.mask_token", None)  # only used for masked-image pre-training
    return config, rename(source, _names(config, set(source)), "transformers ViT")


def from_transformers(model_or_dir: nn.Module | str | os.PathLike) -> VisionTransformer:
    """A vitkit model with the logits of a ``ViTForImageClassification``: a model, a saved folder or a hub id.

    A folder is read locally (with its preprocessor_config.json); only a hub id makes transformers download.
    """
    from transformers import ViTForImageClassification

    preprocessing = None
    if isinstance(model_or_dir, (str, os.PathLike)):
        folder = Path(model_or_dir)
        if folder.is_dir():
            preprocessing = _preprocessing(folder)
        model_or_dir = ViTForImageClassification.from_pretrained(str(model_or_dir))
    return build_model(*convert_transformers(model_or_dir, preprocessing))


def to_transformers(model: VisionTransformer, directory: str | os.PathLike) -> Path:
    """Write a folder that ``ViTForImageClassification.from_pretrained`` loads with this model's logits, and an
    image-processor config with its preprocessing (``AutoImageProcessor.from_pretrained`` reads it)."""
    import transformers

    config = model.config
    problems = {
        "mean pooling or no class token": config.pool == "mean" or not config.class_token,
        "fc_norm": config.fc_norm,
        "a pre-logits layer": bool(config.pre_logits_dim),
    }
    refuse_what_peer_lacks(config, "transformers' ViTForImageClassification", problems)
    labels = config.labels
    peer_config = transformers.ViTConfig(
        image_size=list(config.image_size),
        patch_size=list(config.patch_size),
        num_channels=config.in_channels,
        hidden_size=config.hidden_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim,
        hidden_act="gelu",
        layer_norm_eps=config.layer_norm_eps,
        qkv_bias=config.qkv_bias,
        id2label=dict(enumerate(labels)),  # num_labels is its length
        label2id={name: i for i, name in enumerate(labels)},
    )
    peer = transformers.ViTForImageClassification(peer_config)
    names = _names(config, set(peer.state_dict()))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    peer.load_state_dict(rename(state, {theirs: ours for ours, theirs in names.items()}, "vitkit model"))
    directory = Path(directory)
    peer.save_pretrained(directory)
    _image_processor(config).save_pretrained(directory)
    return directory


def _image_processor(config: ViTConfig) -> Any:
    """transformers' image processor doing ``eval_transform(config)``: ViT's plain resize, or resize-shorter-side and
    centre crop (BitImageProcessor's)."""
    import transformers

    height, width = config.image_size
    common: dict[str, Any] = dict(resample=PIL_RESAMPLE[config.interpolation], do_normalize=config.mean is not None)
    if config.mean is not None:
        common.update(image_mean=list(config.mean), image_std=list(config.std))
    if config.crop_mode == "squash" and config.crop_pct == 1.0:
        return transformers.ViTImageProcessor(size={"height": height, "width": width}, **common)
    if config.crop_mode == "squash":
        raise ValueError("transformers has no image processor that squashes and then crops; use crop_mode 'center'")
    return transformers.BitImageProcessor(
        size={"shortest_edge": resize_size(max(height, width), config.crop_pct)},
        do_center_crop=True,
        crop_size={"height": height, "width": width},
        do_convert_rgb=config.in_channels == 3,
        **common,
    )
