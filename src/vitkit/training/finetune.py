"""Fine-tuning with few labels: which weights train, at which learning rate, and LoRA runs' files.

- Layer-wise learning-rate decay (BEiT, MAE, DeiT III fine-tuning): with ``layer_decay`` X and D blocks, block i
  (0-based) learns at ``lr * X^(D - i)``, the embeddings (patch projection, CLS token, position vectors) at
  ``lr * X^(D + 1)``, everything after the blocks (final norm, pooling, head) at ``lr``; the head also takes
  ``head_lr_scale``. The decay / no-decay split of :meth:`VisionTransformer.param_groups` is kept: each of its
  groups is split by learning rate.
- Freezing: ``freeze_blocks`` K gives the embeddings and the first K blocks no gradient; ``linear_probe`` trains the
  head alone; ``lora_rank`` adds adapters (:mod:`vitkit.model.lora`) and trains them and the head.
- A LoRA run also writes ``adapters.safetensors`` (the trained adapters and head) and ``lora.json`` (the settings and
  the base weights they adapt), and its ``model.safetensors`` holds the merged plain model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.io import load_safetensors, read_json, save_safetensors, write_json
from vitkit.model import VisionTransformer, ViTConfig
from vitkit.model.lora import add_lora, merge_lora
from vitkit.model.weights import CONFIG_FILE, WEIGHTS_FILE
from vitkit.training.checkpoint import find_init_weights
from vitkit.training.config import TrainConfig

logger = logging.getLogger(__name__)

ADAPTERS_FILE = "adapters.safetensors"
LORA_FILE = "lora.json"
EMBEDDING_NAMES = ("patch_embed.", "cls_token", "pos_embed")
HEAD_PREFIX = "head."


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for what follows the blocks (norm, pooling, head)."""
    if name.startswith(EMBEDDING_NAMES):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def lr_scale(name: str, depth: int, layer_decay: float, head_lr_scale: float) -> float:
    """The multiplier of the peak learning rate that parameter ``name`` learns at."""
    scale = layer_decay ** (depth + 1 - layer_id(name, depth))
    return scale * head_lr_scale if name.startswith(HEAD_PREFIX) else scale


def param_groups(
    model: VisionTransformer, lr: float, weight_decay: float, layer_decay: float = 1.0, head_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """The model's decay / no-decay groups, each split by learning rate (``lr`` x :func:`lr_scale`).

    With neither layer decay nor a head scale these are the model's two groups as they are.
    """
    names = {id(param): name for name, param in model.named_parameters()}
    groups = []
    for group in model.param_groups(weight_decay):
        by_scale: dict[float, list[nn.Parameter]] = {}
        for param in group["params"]:
            scale = lr_scale(names[id(param)], model.config.depth, layer_decay, head_lr_scale)
            by_scale.setdefault(scale, []).append(param)
        groups += [{**group, "params": params, "lr": lr * scale} for scale, params in by_scale.items()]
    return groups


def prepare_model(model: VisionTransformer, config: TrainConfig) -> None:
    """Freeze weights and add adapters as ``config`` asks (in place), and log what trains."""
    if config.linear_probe:
        model.requires_grad_(False)
        model.head.requires_grad_(True)
    elif config.freeze_blocks:
        depth = model.config.depth
        if config.freeze_blocks > depth:
            raise ValueError(f"freeze_blocks={config.freeze_blocks} is invalid: expected at most the depth ({depth})")
        for name, param in model.named_parameters():
            if layer_id(name, depth) <= config.freeze_blocks:
                param.requires_grad_(False)
    elif config.lora_rank:
        model.requires_grad_(False)
        targets = config.lora_targets.split(",")
        wrapped = add_lora(model, config.lora_rank, config.lora_alpha, targets)
        model.head.requires_grad_(True)
        logger.info("LoRA: rank %d adapters on %d layers (%s)", config.lora_rank, wrapped, ", ".join(targets))
    else:
        return
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("training %s of %s parameters (%.2f %%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that trained (adapters and head) by name: all that a LoRA run adds to its base."""
    return {name: param.detach() for name, param in model.named_parameters() if param.requires_grad}


def save_lora_run(
    model: VisionTransformer, run_dir: Path, config: TrainConfig, base_weights: Path | None, write: bool = True
) -> VisionTransformer:
    """The merged model of a finished LoRA run; with ``write`` (the main process) also the adapters, ``lora.json``
    and the merged ``model.safetensors``, so that evaluate, predict and serve load the run as any other."""
    merged = merge_lora(model)
    if write:
        save_safetensors(trainable_state_dict(model), run_dir / ADAPTERS_FILE)
        settings = {
            "rank": config.lora_rank, "alpha": config.lora_alpha if config.lora_alpha is not None else config.lora_rank,
            "targets": config.lora_targets.split(","),
            "base_weights": str(Path(base_weights).resolve()) if base_weights is not None else None,
        }  # fmt: skip
        write_json(settings, run_dir / LORA_FILE)
        merged.save_pretrained(run_dir)
    return merged


def load_lora_model(run_dir: str | os.PathLike) -> VisionTransformer:
    """The adapted model of a LoRA run, rebuilt from its base weights and ``adapters.safetensors`` (not merged)."""
    run_dir = Path(run_dir)
    if not (run_dir / LORA_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a LoRA run (it has no {LORA_FILE}, which `vitkit train --lora-rank` writes when the run "
            f"finishes): its {WEIGHTS_FILE} is already a plain model"
        )
    settings = read_json(run_dir / LORA_FILE)
    model = VisionTransformer(ViTConfig.from_dict(read_json(run_dir / CONFIG_FILE)))  # the run's architecture
    try:
        base_path, base_config = find_init_weights(settings["base_weights"])
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"the base weights of the LoRA run {run_dir} ({settings['base_weights']}, named in its {LORA_FILE}) are "
            f"gone ({err}); its {WEIGHTS_FILE} already holds the merged model"
        ) from None
    model.load_weights(
        load_safetensors(base_path), source_grid=base_config.grid_size if base_config else None, strict_head=False
    )
    add_lora(model, settings["rank"], settings["alpha"], settings["targets"])
    adapters = load_safetensors(run_dir / ADAPTERS_FILE)
    unknown = sorted(set(adapters) - {name for name, _ in model.named_parameters()})
    if unknown:
        raise ValueError(f"{run_dir / ADAPTERS_FILE} holds weights the model does not have: {unknown[:5]}")
    model.load_state_dict(adapters, strict=False)
    return model.eval()
