"""`vitkit pretrain`: a masked-autoencoder run on an image folder's pixels, written as a run folder.

The data, the encoder's architecture, the optimizer and its schedule come from the same :class:`TrainConfig` and
helpers as ``vitkit train`` (labels are not used); the folder holds ``train_config.json``, ``pretrain.json`` (the
MAE settings and one record per epoch) and, once finished, the encoder as ``config.json`` + ``model.safetensors``,
so that ``vitkit train --init-from RUN_DIR`` fine-tunes it (with a new head). Single process; an interrupted run
starts again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.io import write_json
from vitkit.model import VisionTransformer
from vitkit.pretrain.mae import MASK_RATIO, MaskedAutoencoder
from vitkit.training import distributed
from vitkit.training.config import TRAIN_CONFIG_FILE, TrainConfig
from vitkit.training.loaders import Loaders
from vitkit.training.loop import determinism
from vitkit.training.optim import build_scheduler
from vitkit.training.run import build_model, build_run_data, check_run_dir, prepare_config

logger = logging.getLogger(__name__)

PRETRAIN_FILE = "pretrain.json"
# Settings of a classification run that a masked autoencoder has no use for: changing one is an error, not ignored.
CLASSIFICATION_ONLY = ("label_smoothing", "mixup", "cutmix", "init_from", "resume", "layer_decay", "freeze_blocks",
                       "linear_probe", "head_lr_scale", "lora_rank")  # fmt: skip


@dataclass
class MAESettings:
    """The masked autoencoder's own settings (the encoder's are the run's ``model`` and ``vit``)."""

    mask_ratio: float = MASK_RATIO
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4


@dataclass
class PretrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    encoder: VisionTransformer


def _param_groups(mae: MaskedAutoencoder, weight_decay: float) -> list[dict[str, Any]]:
    """The encoder's own decay / no-decay groups; the decoder's matrices decay, its vectors and mask token do not."""
    groups = mae.encoder.param_groups(weight_decay)
    for name, param in mae.named_parameters():
        if not name.startswith("encoder."):
            groups[param.ndim <= 1 or name == "mask_token"]["params"].append(param)
    return groups


def pretrain(
    config: TrainConfig,
    settings: MAESettings | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> PretrainResult:
    """Pre-train the encoder ``config`` describes as a masked autoencoder on ``config``'s training images."""
    settings = settings or MAESettings()
    defaults = TrainConfig()
    changed = [name for name in CLASSIFICATION_ONLY if getattr(config, name) != getattr(defaults, name)]
    if changed:
        raise ValueError(f"pretraining takes no {', '.join(changed)}: these settings are for classification runs")
    config = prepare_config(config.replace(auto_recipe=False))  # the folder's recipe is for classification runs
    run_dir = config.run_dir
    check_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config.to_dict(), run_dir / TRAIN_CONFIG_FILE)
    ctx = distributed.DistContext()
    device = distributed.pick_device(config.device, ctx)
    history: list[dict[str, Any]] = []
    with determinism(config.deterministic, device):
        torch.manual_seed(config.seed)
        data = build_run_data(config)
        encoder = build_model(config, data)
        mae = MaskedAutoencoder(encoder, **dataclasses.asdict(settings)).to(device)
        loaders = Loaders(data, config.batch_size, config.accum_steps, config.workers, config.seed, ctx, device)
        steps_per_epoch = loaders.micro_batches // config.accum_steps
        if steps_per_epoch == 0:
            raise ValueError(
                f"{len(data.train)} training images are too few for one step of batch_size {config.batch_size}"
            )
        total = config.epochs * steps_per_epoch
        optimizer = torch.optim.AdamW(_param_groups(mae, config.weight_decay), lr=config.peak_lr, betas=(0.9, 0.95))
        warmup = min(round(config.warmup_epochs * steps_per_epoch), total // 2)
        scheduler = build_scheduler(optimizer, total, warmup, config.min_lr / config.peak_lr)
        logger.info("pre-training a masked autoencoder (mask ratio %g) on %d images of %s for %d epochs; run folder %s",
                    settings.mask_ratio, len(data.train), data.source, config.epochs, run_dir)  # fmt: skip
        for epoch in range(config.epochs):
            started, losses = time.perf_counter(), []
            mae.train()
            for micro, (images, _) in enumerate(loaders.epoch(epoch, 0)):
                loss = mae(images.to(device))[0]
                (loss / config.accum_steps).backward()
                losses.append(loss.detach())
                if (micro + 1) % config.accum_steps:
                    continue
                norm = torch.nn.utils.clip_grad_norm_(mae.parameters(), config.clip_grad or math.inf)
                if not math.isfinite(norm.item()):
                    raise ValueError(
                        f"pre-training stopped: the gradient norm became {norm.item()} in epoch {epoch + 1}"
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            val_loss = _validation_loss(mae, loaders, config.seed)
            train_loss = torch.stack(losses).mean().item()
            elapsed = time.perf_counter() - started
            record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "epoch_time_s": elapsed}
            history.append(record)
            write_json({"mae": dataclasses.asdict(settings), "history": history}, run_dir / PRETRAIN_FILE)
            if on_epoch_end is not None:
                on_epoch_end(record)
    encoder.save_pretrained(run_dir)
    return PretrainResult(run_dir, history, encoder)


@torch.no_grad()
def _validation_loss(mae: MaskedAutoencoder, loaders: Loaders, seed: int) -> float:
    """The reconstruction loss on the held-out images, under masks drawn from ``seed``: comparable across epochs."""
    mae.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for images, _ in loaders.val():
        noise = torch.rand(images.shape[0], mae.encoder.config.num_patches, generator=generator).to(images.device)
        total += mae(images.to(noise.device), noise)[0].item() * images.shape[0]
        count += images.shape[0]
    return total / max(count, 1)
