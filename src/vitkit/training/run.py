"""Run folders: what a run trains (data, model), creating or resuming its folder, its result, and `load_run`.

A run folder holds ``train_config.json`` (the resolved settings), ``config.json`` (the model's), the checkpoint
pair (``last.safetensors`` + ``last_state.pt``; a sharded run's folder ``last.dcp``), ``best.safetensors``, the
metrics and, once finished, ``model.safetensors``. :func:`train` trains one process's share of a run; starting several processes
(``vitkit train --nproc N``) is the command line's job.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.data import DataBundle, build_data
from vitkit.io import load_safetensors, write_json
from vitkit.model import VisionTransformer, ViTConfig, get_config
from vitkit.model.weights import WEIGHTS_FILE
from vitkit.training import distributed
from vitkit.training.checkpoint import checkpoint_step, find_init_weights
from vitkit.training.config import (
    AUTO_RESUME,
    RESUMABLE_CHANGES,
    TRAIN_CONFIG_FILE,
    TrainConfig,
    check_batch_split,
    load_train_config,
)
from vitkit.training.distributed import DistContext
from vitkit.training.loop import EpochCallback, StepCallback, Trainer, determinism

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run leaves: its folder, one record per epoch, and the final model (EMA weights if on)."""

    run_dir: Path
    history: list[dict[str, Any]]
    model: VisionTransformer

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's record (empty if no epoch ran)."""
        return self.history[-1] if self.history else {}

    @property
    def best_val_acc(self) -> float | None:
        """Best validation accuracy of the raw or EMA weights over all epochs."""
        accs = [r[key] for r in self.history for key in ("val_acc", "ema_val_acc") if r.get(key) is not None]
        return max(accs, default=None)


# --- what a run trains ----------------------------------------------------------------------------


def build_run_data(config: TrainConfig, channels: int | None = None) -> DataBundle:
    """The data a run trains and validates on: the same call rebuilds a run's held-out split from its config."""
    return build_data(
        config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        seed=config.seed,
        download=config.download,
        aug=config.augmentation(),
        channels=channels,
        cache=config.cache,
        workers=config.workers,
        skip_bad_files=config.skip_bad_files,
    )


def build_model(config: TrainConfig, data: DataBundle, init_config: ViTConfig | None = None) -> VisionTransformer:
    """The architecture of ``config.model`` (else of the fine-tuning source, else vit_digits_stem) with the run's
    ``vit`` overrides, fitted to the data (size, channels, classes, normalisation)."""
    base = init_config if config.model is None and init_config is not None else get_config(config.model_name)
    return VisionTransformer(
        base.replace(
            **config.vit, image_size=data.image_size, in_channels=data.in_channels, num_classes=data.num_classes,
            class_names=data.class_names, mean=data.mean, std=data.std,
        )
    )  # fmt: skip


# --- the run folder -------------------------------------------------------------------------------


def prepare_config(config: TrainConfig) -> TrainConfig:
    """The settings with the run folder and model resolved, as ``train_config.json`` records them.

    The command line calls it before starting several processes, so that all of them use one folder.
    """
    if config.model is None and config.init_from is None:
        config = config.replace(model=config.model_name)  # train_config.json names the model actually trained
    if config.resume is not None and config.resume != AUTO_RESUME:
        run_dir = Path(config.resume)
    elif config.out is not None:
        run_dir = Path(config.out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / (config.name or f"{config.dataset}-{config.model or 'finetuned'}-{stamp}")
    return config.replace(out=str(run_dir), name=config.name or run_dir.name)


def check_run_dir(config: TrainConfig) -> None:
    """A new run needs an unused folder; a resumed one the settings it was started with (bar RESUMABLE_CHANGES)."""
    run_dir = Path(config.out)
    if config.resume is None:
        if checkpoint_step(run_dir) is not None or (run_dir / WEIGHTS_FILE).exists():
            raise ValueError(
                f"run folder {run_dir} already holds a run: continue it with --resume {run_dir}, "
                "or choose another --out / --name"
            )
        return
    saved = load_train_config(run_dir).to_dict()
    now = config.to_dict()
    changed = [
        f"{key} {saved[key]!r} -> {now[key]!r}"
        for key in now
        if key not in RESUMABLE_CHANGES and saved[key] != now[key]
    ]
    if changed:
        raise ValueError(
            f"cannot resume {run_dir} with changed settings ({'; '.join(changed)}): the continued run would differ "
            f"from the interrupted one. Only {sorted(RESUMABLE_CHANGES)} may change on resume"
        )


def train(
    config: TrainConfig, *, on_epoch_end: EpochCallback | None = None, on_step_end: StepCallback | None = None
) -> TrainResult:
    """Train a model as ``config`` says and return the run's result.

    Under torchrun (WORLD_SIZE > 1) this process trains its share with DDP. ``on_epoch_end(record)`` is called on
    rank 0 after each epoch, once its checkpoint is written (the CLI prints a line); ``on_step_end(epoch, step,
    model)`` after each optimizer step and its checkpoint, on every process.
    """
    ctx = distributed.context_from_env()
    check_batch_split(config.batch_size, ctx.world_size)
    device = distributed.pick_device(config.device, ctx)
    owns_group = distributed.init_process_group(ctx, device)
    finished = False
    try:
        config, resume_step = start_or_resume(config, ctx)
        run_dir = Path(config.out)
        with determinism(config.deterministic, device), distributed.only_main_logs(ctx):
            init_weights, init_config = find_init_weights(config.init_from) if config.init_from else (None, None)
            torch.manual_seed(config.seed)
            data = build_run_data(config, channels=init_config.in_channels if init_config else None)
            model = build_model(config, data, init_config).to(device)
            if init_weights is not None and config.resume is None:
                logger.info("fine-tuning from %s", init_weights)
                source_grid = init_config.grid_size if init_config else None
                model.load_weights(load_safetensors(init_weights), source_grid=source_grid, strict_head=False)
            trainer = Trainer(config, run_dir, ctx, device, data, model)
            if trainer.step != resume_step:
                raise ValueError(
                    f"process {ctx.rank} resumed {run_dir} at step {trainer.step}, but process 0 found the checkpoint "
                    f"of step {resume_step} there: every node must see the same run folder (shared storage)"
                )
            if ctx.is_main:
                model.save_config(run_dir)
            history, final = trainer.fit(on_epoch_end, on_step_end)
        finished = True
        return TrainResult(run_dir, history, final)
    finally:
        if owns_group:
            distributed.destroy_process_group(barrier=finished)


def start_or_resume(config: TrainConfig, ctx: DistContext) -> tuple[TrainConfig, int]:
    """Rank 0 resolves the run folder and whether to resume (``--resume auto``: when the folder has a checkpoint;
    the default under torchrun's ``--max-restarts``), prepares the folder, and every process takes its settings;
    returns them and the step training starts from.

    Decided once and broadcast, so that all processes start from the same checkpoint (or none) even if a restarted
    worker group finds a checkpoint being written, and use one run folder even when it is named by the time.
    """
    resume_step = 0
    if ctx.is_main:
        if config.resume is None and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
            config = config.replace(resume=AUTO_RESUME)  # torchrun may restart this worker group: it continues
        config = prepare_config(config)
        run_dir = Path(config.out)
        step = checkpoint_step(run_dir) if config.resume is not None else None
        if step is not None:
            logger.info("resuming %s from its checkpoint of step %d", run_dir, step)
            config, resume_step = config.replace(resume=str(run_dir)), step
        elif config.resume is not None:
            if config.resume != AUTO_RESUME:
                logger.warning(
                    "%s has no checkpoint (the run stopped before its first one): starting it from the beginning "
                    "with its saved settings", run_dir,
                )  # fmt: skip
            config = config.replace(resume=None)
        check_run_dir(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(config.to_dict(), run_dir / TRAIN_CONFIG_FILE)  # first: --resume works from the first moment
    settings, resume_step = distributed.broadcast_object((config.to_dict(), resume_step), ctx)
    return TrainConfig.from_dict(settings), resume_step


def load_run(run_dir: str | os.PathLike) -> tuple[VisionTransformer, TrainConfig]:
    """A finished run's model and training config (the weights file chosen by ``model.weights.find_weights``)."""
    return VisionTransformer.from_pretrained(run_dir), load_train_config(run_dir)

