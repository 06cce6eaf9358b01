"""One object that carries every architectural choice of a Vision Transformer.

Weights from any library can be described by a :class:`ViTConfig`; it is what ``config.json``
holds next to ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Pair = tuple[int, int]

POS_EMBED_CHOICES = ("learned", "sincos")
POOL_CHOICES = ("cls", "mean", "seq")
PATCH_EMBED_CHOICES = ("linear", "shifted")
# The linear layers of an encoder block that LoRA adapters can wrap (vitkit.model.lora): attention, then MLP.
LORA_TARGETS = ("q", "k", "v", "proj", "fc1", "fc2")
INTERPOLATION_CHOICES = ("nearest", "bilinear", "bicubic")
CROP_MODE_CHOICES = ("center", "squash")


def to_pair(value: int | Sequence[int], name: str) -> Pair:
    """Accept an int or an (height, width) pair, as the seed's square images and real rectangular ones need."""
    if isinstance(value, int):
        pair: tuple = (value, value)
    else:
        pair = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of them, got {value!r}")
    return pair


def _is_number(value: Any) -> bool:
    """A real, finite number (bools are not numbers here: ``dropout=True`` is a mistake)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: Any, name: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
        raise ValueError(f"{name} must be a list of numbers, one per channel, got {value!r}")
    return tuple(float(v) for v in value)


def _divisible_sizes_near(size: int, patch: int) -> str:
    lower = max(patch, size // patch * patch)
    return f"{lower} or {lower + patch}" if lower != size else str(lower)


@dataclass
class ViTConfig:
    """Sizes and choices of a ViT; validated on creation so a bad value fails before any tensor exists."""

    image_size: Pair = (224, 224)
    patch_size: Pair = (16, 16)
    in_channels: int = 3
    num_classes: int = 1000
    hidden_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pos_embed: str = "learned"
    pool: str = "cls"  # the CLS token, the "mean" of the patch tokens, or "seq": their learned weighted mean
    class_token: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    # timm's fc_norm: the final LayerNorm is applied to the pooled token instead of to every token.
    fc_norm: bool = False
    # The original ViT's pre-logits layer (Linear to this width, then tanh) before the head; 0 means none.
    pre_logits_dim: int = 0
    # Options for small data sets, all off by default (see vit.py's modules; pool="seq" is one too):
    # "shifted": shifted patch tokenization (Lee, Lee & Song, 2021), the patches of the image and of its four
    # diagonal half-patch shifts, layer-normalised, then projected; "linear": the ViT paper's patch projection.
    patch_embed: str = "linear"
    # Locality self-attention (Lee, Lee & Song, 2021): a learned temperature per head, no token attends to itself.
    locality_attention: bool = False
    # 3x3 convolutions (stride 1, so the patch grid is unchanged) before the patches are cut; 0 means none.
    conv_stem: int = 0
    # What the weights expect around them: label names and evaluation preprocessing (see data.eval_transform):
    # resize with `interpolation`, then take an `image_size` crop that covers `crop_pct` of the resized image.
    # crop_mode "center": the shorter side is resized (aspect kept) to fit image_size / crop_pct, then centre-crop;
    # "squash": both sides are resized to image_size / crop_pct (aspect not kept), then centre-crop.
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        self.image_size = to_pair(self.image_size, "image_size")
        self.patch_size = to_pair(self.patch_size, "patch_size")
        for axis, size, patch in zip(("height", "width"), self.image_size, self.patch_size):
            if size % patch:
                larger = ", the patch is larger than the image" if patch > size else ""
                raise ValueError(
                    f"image {axis} {size} is not divisible by patch {axis} {patch} (image_size {self.image_size}, "
                    f"patch_size {self.patch_size}{larger}): "
                    f"use an image {axis} that is a multiple of {patch}, such as {_divisible_sizes_near(size, patch)}"
                )
        for name in ("in_channels", "hidden_dim", "depth", "num_heads", "mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0 means no head), got {self.num_classes!r}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}: "
                f"each head gets hidden_dim / num_heads features"
            )
        if self.pos_embed not in POS_EMBED_CHOICES:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_CHOICES}, got {self.pos_embed!r}")
        if self.pos_embed == "sincos" and self.hidden_dim % 4:
            raise ValueError(
                f"pos_embed='sincos' needs hidden_dim divisible by 4 (row and column sines and cosines), "
                f"got {self.hidden_dim}"
            )
        if self.pool not in POOL_CHOICES:
            raise ValueError(f"pool must be one of {POOL_CHOICES}, got {self.pool!r}")
        for name in ("class_token", "qkv_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.pool == "cls" and not self.class_token:
            raise ValueError("pool='cls' needs class_token=True: there is no CLS token to classify from")
        if self.patch_embed not in PATCH_EMBED_CHOICES:
            raise ValueError(f"patch_embed must be one of {PATCH_EMBED_CHOICES}, got {self.patch_embed!r}")
        if self.patch_embed == "shifted" and min(self.patch_size) < 2:
            raise ValueError(
                f"patch_embed='shifted' shifts the image by half a patch, and patch_size {self.patch_size} has no "
                f"half: use patches of at least 2x2"
            )
        if not isinstance(self.locality_attention, bool):
            raise ValueError(f"locality_attention must be true or false, got {self.locality_attention!r}")
        if self.locality_attention and self.num_prefix_tokens + self.num_patches < 2:
            raise ValueError(
                "locality_attention masks each token's attention to itself, so it needs at least 2 tokens; "
                f"this model has 1 (grid {self.grid_size}, no class token)"
            )
        if not isinstance(self.conv_stem, int) or isinstance(self.conv_stem, bool) or self.conv_stem < 0:
            raise ValueError(
                f"conv_stem must be an int >= 0 (3x3 convolutions before the patches; 0: none), got {self.conv_stem!r}"
            )
        for name in ("dropout", "attention_dropout", "drop_path"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.pre_logits_dim, int) or isinstance(self.pre_logits_dim, bool) or self.pre_logits_dim < 0:
            raise ValueError(f"pre_logits_dim must be an int >= 0 (0: no pre-logits), got {self.pre_logits_dim!r}")
        if not isinstance(self.fc_norm, bool):
            raise ValueError(f"fc_norm must be true or false, got {self.fc_norm!r}")
        if self.interpolation not in INTERPOLATION_CHOICES:
            raise ValueError(f"interpolation must be one of {INTERPOLATION_CHOICES}, got {self.interpolation!r}")
        if self.crop_mode not in CROP_MODE_CHOICES:
            raise ValueError(f"crop_mode must be one of {CROP_MODE_CHOICES}, got {self.crop_mode!r}")
        if not _is_number(self.crop_pct) or not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(
                f"crop_pct must be a number in (0, 1] (1 means no margin is cropped away), got {self.crop_pct!r}"
            )
        if not _is_number(self.layer_norm_eps) or self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")
        if self.class_names is not None:
            if not isinstance(self.class_names, (list, tuple)):
                raise ValueError(f"class_names must be a list of names, one per class, got {self.class_names!r}")
            self.class_names = [str(name) for name in self.class_names]
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = _numbers(value, name)
                if len(value) != self.in_channels:
                    raise ValueError(
                        f"{name} has {len(value)} values but in_channels is {self.in_channels}: one per channel"
                    )
                setattr(self, name, value)
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def grid_size(self) -> Pair:
        """Patches along (height, width)."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_parameters(self) -> int:
        """Trainable parameters of the model this config builds, counted from the sizes alone (no torch), so that
        `vitkit models` lists them without loading torch. A sin-cos position table is a buffer, not a parameter."""

        def linear(n_in: int, n_out: int, bias: bool = True) -> int:
            return n_in * n_out + (n_out if bias else 0)

        d, norm = self.hidden_dim, 2 * self.hidden_dim  # a LayerNorm: weight and bias
        width = self.conv_stem_width
        stem_in = [self.in_channels] + [width] * (self.conv_stem - 1) if self.conv_stem else []
        stem = sum(linear(9 * channels, width, bias=False) + 2 * width for channels in stem_in)  # conv, GroupNorm
        patch = (width if self.conv_stem else self.in_channels) * self.patch_size[0] * self.patch_size[1]
        if self.patch_embed == "shifted":
            patch_embed = 2 * 5 * patch + linear(5 * patch, d)  # LayerNorm over the five views' patches, projection
        else:
            patch_embed = linear(patch, d)
        cls_token = d if self.class_token else 0
        positions = d * (self.num_prefix_tokens + self.num_patches) if self.pos_embed == "learned" else 0
        attention = 3 * linear(d, d, self.qkv_bias) + linear(d, d) + (self.num_heads if self.locality_attention else 0)
        block = 2 * norm + attention + linear(d, self.mlp_dim) + linear(self.mlp_dim, d)
        seq_pool = linear(d, 1) if self.pool == "seq" else 0
        pre_logits = linear(d, self.pre_logits_dim) if self.pre_logits_dim else 0
        head = linear(self.pre_logits_dim or d, self.num_classes) if self.num_classes else 0
        return stem + patch_embed + cls_token + positions + self.depth * block + norm + seq_pool + pre_logits + head

    @property
    def conv_stem_width(self) -> int:
        """Channels of the convolutional stem's layers: half the token width."""
        return max(self.hidden_dim // 2, 1)

    @property
    def labels(self) -> list[str]:
        """The class names, or "0".."N-1" for a model built without any (e.g. create_model)."""
        return list(self.class_names) if self.class_names else [str(i) for i in range(self.num_classes)]

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the CLS token, when there is one."""
        return 1 if self.class_token else 0

    def replace(self, **changes: Any) -> ViTConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (pairs as lists)."""
        data = dataclasses.asdict(self)
        for name in ("image_size", "patch_size", "mean", "std"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, so a wrong file is caught early.

        Keys added since a file was written take their defaults, which are the behaviour it was written with.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a ViT config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k != "model_type"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ViT config keys {unknown}; expected some of {sorted(known)}")
        for name in ("image_size", "patch_size"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)
