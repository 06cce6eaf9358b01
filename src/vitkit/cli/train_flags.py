"""The flags of `vitkit train`, generated from the settings' dataclasses, and the config they resolve to.

One flag per :class:`~vitkit.training.config.TrainConfig` field and one per ``vit`` (ViTConfig) / ``augment``
(AugmentConfig) setting (``--pos-embed``, ``--no-class-token``, ``--hflip`` ...). Flags are registered with
``argparse.SUPPRESS`` defaults, so an untyped flag leaves no attribute behind and cannot mask a file value.
No torch is imported: `vitkit --help` builds these flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from vitkit.data.augment_config import AUTO_AUGMENTS, INTERPOLATION_NAMES, AugmentConfig
from vitkit.model.config import Pair, ViTConfig, to_pair
from vitkit.training.config import (
    AUGMENT_SETTINGS,
    AUTO_RESUME,
    NESTED,
    TRAIN_CONFIG_FILE,
    VIT_CHOICES,
    VIT_SETTINGS,
    TrainConfig,
    default_settings,
    load_train_config,
    merge_settings,
    read_config_file,
)

# Help of the generated flags (a setting missing here still gets a flag, with a generic help).
VIT_HELP = {
    "patch_size": "patch size, N or HxW",
    "hidden_dim": "token width",
    "depth": "number of encoder blocks",
    "num_heads": "attention heads per block",
    "mlp_dim": "hidden width of the blocks' MLP",
    "pos_embed": "position vectors: learned, or fixed 2-D sine-cosine",
    "pool": "classify from the CLS token, the mean of the patch tokens, or their learned weighted mean (seq: "
    "sequence pooling, Hassani et al. 2021)",
    "class_token": "prepend a CLS token (--no-class-token needs --pool mean or seq)",
    "dropout": "dropout rate",
    "attention_dropout": "dropout rate of the attention weights",
    "drop_path": "stochastic depth rate of the last block (rises linearly with depth); recipe default 0.1",
    "qkv_bias": "biases on the query, key and value projections",
    "layer_norm_eps": "LayerNorm epsilon",
    "patch_embed": "patch embedding: the ViT paper's linear projection, or shifted patch tokenization (Lee, Lee and "
    "Song 2021: each patch also sees half a patch of its neighbours)",
    "locality_attention": "locality self-attention (Lee, Lee and Song 2021): learned temperature per head, no "
    "attention of a token to itself",
    "conv_stem": "3x3 convolutions (GroupNorm, ReLU) before the patches are cut; 0: none",
}
AUGMENT_HELP = {
    "crop_scale_min": "smallest area fraction of the random resized crop; 1 turns it off",
    "hflip": "probability of a horizontal flip",
    "affine_degrees": "random rotation in [-D, D] degrees",
    "affine_translate": "random shift up to this fraction of the image size",
    "affine_scale": "random zoom in [1 - S, 1 + S]",
    "affine_interpolation": "resampling of the random affine",
    "auto_augment": "automatic augmentation policy",
    "randaugment_magnitude": "RandAugment magnitude (0-30)",
    "random_erasing": "probability of random erasing",
}


def parse_size(text: str) -> Pair:
    """argparse type for sizes: ``28`` or ``28x32`` (height x width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        return to_pair(tuple(int(part) for part in parts) if len(parts) > 1 else int(parts[0]), "size")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 28 or 28x32, got {text!r}") from None


def add_flag(
    parser: argparse._ActionsContainer, name: str, dest: str, hint: Any, help_text: str, **options: Any
) -> None:
    """One flag for a setting of type ``hint``: booleans get --x / --no-x, sizes N or HxW."""
    flag = "--" + name.replace("_", "-")
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kind = next(k for k in kinds if k is not type(None))
    if kind is bool:
        parser.add_argument(
            flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
        )
        return
    parse = parse_size if typing.get_origin(kind) is tuple else kind
    if parse not in (parse_size, int, float, str):
        return  # a setting no flag can spell (a list): config files only
    if "choices" not in options and "metavar" not in options:
        options["metavar"] = {parse_size: "SIZE", int: "N", float: "X", str: "TEXT"}[parse]
    parser.add_argument(flag, dest=dest, type=parse, default=argparse.SUPPRESS, help=help_text, **options)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``--config``, one flag per :class:`TrainConfig` field and one per ``vit`` / ``augment`` setting."""
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="TOML, YAML or JSON file of settings (field names as keys); flags given here override it",
    )  # fmt: skip
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in NESTED:
            continue
        options = dict(f.metadata)
        help_text = options.pop("help")
        if f.default is not None:
            help_text += f" (default: {f.default})"
        add_flag(parser, f.name, f.name, hints[f.name], help_text, **options)
    vit_hints = typing.get_type_hints(ViTConfig)
    group = parser.add_argument_group("model (overrides of the model's ViTConfig; default: the model's)")
    for name in VIT_SETTINGS:
        help_text = VIT_HELP.get(name, f"ViTConfig.{name}")
        choices = {"choices": VIT_CHOICES[name]} if name in VIT_CHOICES else {}
        add_flag(group, name, f"vit.{name}", vit_hints[name], help_text, **choices)
    augment_hints = typing.get_type_hints(AugmentConfig)
    group = parser.add_argument_group("augmentation (default: the data set's, see vitkit.data.default_augment)")
    for name in AUGMENT_SETTINGS:
        augment_choices = {"auto_augment": AUTO_AUGMENTS, "affine_interpolation": INTERPOLATION_NAMES}.get(name)
        options = {"choices": augment_choices} if augment_choices else {}
        add_flag(group, name, f"augment.{name}", augment_hints[name], AUGMENT_HELP.get(name, name), **options)


def _typed_and_file(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings typed on the command line and those of the ``--config`` file, both in nested form."""
    typed: dict[str, Any] = {name: {} for name in NESTED}
    for dest, value in vars(args).items():
        table, _, key = dest.rpartition(".")
        if table in NESTED:
            typed[table][key] = value
        elif dest in {f.name for f in dataclasses.fields(TrainConfig)}:
            typed[dest] = value
    config_file = getattr(args, "config", None)
    return typed, read_config_file(config_file) if config_file else {}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved config: defaults < resumed run's config < ``--config`` file < flags typed on the command line."""
    typed, from_file = _typed_and_file(args)
    resume = typed.get("resume", from_file.get("resume"))
    run_dir = typed.get("out", from_file.get("out")) if resume == AUTO_RESUME else resume
    values = default_settings()
    if run_dir is not None and (resume != AUTO_RESUME or (Path(run_dir) / TRAIN_CONFIG_FILE).is_file()):
        values = load_train_config(run_dir).to_dict()
    values = merge_settings(merge_settings(values, from_file), typed)
    if resume:
        values["resume"] = resume
    return TrainConfig(**values)


def given_settings(args: argparse.Namespace) -> set[str]:
    """The settings the user chose, typed as flags or written in the ``--config`` file (flat names): the ones a
    recipe chosen from the data leaves alone."""
    return {
        name
        for values in _typed_and_file(args)
        for key, value in values.items()
        for name in (value if key in NESTED else (key,))
    }
