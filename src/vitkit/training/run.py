"""Run folders: what a run trains (data, model), creating or resuming its folder, its result, and `load_run`.

A run folder holds ``train_config.json`` (the resolved settings), ``config.json`` (the model's), the checkpoint
pair (``last.safetensors`` + ``last_state.pt``; a sharded run's folder ``last.dcp``), ``best.safetensors``, the
metrics and, once finished, ``model.safetensors``. :func:`train` trains one process's share of a run; starting
several processes (``vitkit train --nproc N``) is the command line's job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.data import DataBundle, build_data
from vitkit.io import load_safetensors, write_json
from vitkit.model import VisionTransformer, ViTConfig, get_config
from vitkit.model.weights import CONFIG_FILE, WEIGHTS_FILE
from vitkit.training import distributed, finetune, folder_recipe
from vitkit.training.checkpoint import checkpoint_step, find_init_weights
from vitkit.training.config import (
    AUTO_RESUME,
    DEFAULT_MODEL,
    RESUMABLE_CHANGES,
    TRAIN_CONFIG_FILE,
    VIT_SETTINGS,
    TrainConfig,
    default_lr,
    load_train_config,
)
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


def build_run_data(
    config: TrainConfig, channels: int | None = None, preprocessing: ViTConfig | None = None
) -> DataBundle:
    """The data a run trains and validates on: the same call rebuilds a run's held-out split from its config.

    ``preprocessing`` (a model's config) sets the normalisation and evaluation resize instead of the data's own:
    fine-tuning passes its source's, and rebuilding a finished run's split passes the run's model's.
    """
    return build_data(
        config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        seed=config.seed,
        download=config.download,
        aug=config.augmentation(),
        channels=channels,
        cache="off" if config.decode == "gpu" else config.cache,  # the device decodes the files every epoch
        workers=config.workers,
        skip_bad_files=config.skip_bad_files,
        preprocessing=preprocessing,
    )


def build_model(config: TrainConfig, data: DataBundle, init_config: ViTConfig | None = None) -> VisionTransformer:
    """The architecture of ``config.model`` (else of the fine-tuning source, else vit_digits_stem) with the run's
    ``vit`` overrides, fitted to the data (size, channels, classes, normalisation)."""
    base = init_config if config.model is None and init_config is not None else get_config(config.model_name)
    if config.image_size is None:  # the data's size: it must still cut into whole patches
        patch = config.vit.get("patch_size", base.patch_size)
        if any(side % p for side, p in zip(data.image_size, patch)):
            near = "x".join(str(max(p, side // p * p)) for side, p in zip(data.image_size, patch))
            origin = "the median shorter side of its images" if data.source == "folder" else "its images' size"
            larger = (
                ", the patch is larger than the image" if any(p > s for s, p in zip(data.image_size, patch)) else ""
            )
            raise ValueError(
                f"the {data.source} data's image size {data.image_size[0]}x{data.image_size[1]} ({origin}) is not a "
                f"multiple of patch_size {patch[0]}x{patch[1]}{larger}: pass --image-size {near}, or name a model "
                "with a fixed size (--model)"
            )
    return VisionTransformer(
        base.replace(
            **config.vit, image_size=data.image_size, in_channels=data.in_channels, num_classes=data.num_classes,
            class_names=data.class_names, mean=data.mean, std=data.std,
        )
    )  # fmt: skip


# --- the run folder -------------------------------------------------------------------------------


# ViTConfig fields that say how a model's images are prepared rather than what the model computes.
PREPROCESSING_SETTINGS = ("interpolation", "crop_pct", "crop_mode")


def _from_source(config: TrainConfig, init_from: str, new_run: bool) -> TrainConfig:
    """Fine-tuning: the source's architecture (unless --model names one), its preprocessing (unless told not to keep
    it) and, for a new run, its image size (unless --image-size), all recorded so that train_config.json says what
    is trained."""
    _, source = find_init_weights(init_from)
    if source is None:  # bare weights: the architecture is --model's, the rest the data's
        return config
    taken = (PREPROCESSING_SETTINGS if config.keep_preprocessing else ()) + (
        tuple(name for name in VIT_SETTINGS if name not in PREPROCESSING_SETTINGS) if config.model is None else ()
    )
    config = config.replace(vit={**{k: v for k, v in source.to_dict().items() if k in taken}, **config.vit})
    if not new_run:
        return config
    kept = (
        f"; its preprocessing: {source.interpolation} resize, crop_pct {source.crop_pct:g}, mean "
        f"{_rounded(source.mean)}, std {_rounded(source.std)} (--no-keep-preprocessing: the data's)"
    )
    logger.info(
        "fine-tuning from %s: %s, lr %g (%s), %g warm-up epochs%s", config.init_from,
        "its architecture" if config.model is None else f"architecture {config.model}", config.lr,
        "default; --lr to change" if config.lr == default_lr(config.init_from) else "--lr", config.warmup_epochs,
        kept if config.keep_preprocessing else "",
    )  # fmt: skip
    if config.image_size is not None:
        return config
    logger.info("image size %dx%d: that of %s (--image-size to change)", *source.image_size, config.init_from)
    return config.replace(image_size=source.image_size)


def _rounded(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else [round(v, 4) for v in values]


def resolve_settings(config: TrainConfig, new_run: bool = True) -> TrainConfig:
    """What a run trains, decided before any data is read and recorded in train_config.json: the model (its name,
    or the fine-tuning source's architecture), the augmentation (the data set's default with the run's overrides)
    and, for a new run, the image size (the model's unless --image-size; the default model takes the data's).

    Resolving a resolved config changes nothing, so every process of a run, and its resumption, agree.
    """
    if config.init_from is not None:
        config = _from_source(config, config.init_from, new_run)
    elif config.model is None:
        config = config.replace(model=config.model_name)  # train_config.json names the model actually trained
    if new_run and config.image_size is None and config.model is not None and config.model != DEFAULT_MODEL:
        size = get_config(config.model).image_size
        logger.info("image size %dx%d: that of %s (--image-size to change)", *size, config.model)
        config = config.replace(image_size=size)
    return config.replace(augment=config.augmentation().to_dict())


def prepare_config(config: TrainConfig) -> TrainConfig:
    """The settings with the run folder, model, image size and augmentation resolved, as ``train_config.json``
    records them: a new run on an image folder takes the settings it was not given from the folder's recipe
    (:mod:`vitkit.training.folder_recipe`); a resumed run takes its recipe and image size from there (folders
    written before the size was recorded keep the data's).

    The command line calls it before starting several processes, so that all of them use one folder.
    """
    resume_dir = None if config.resume == AUTO_RESUME else config.resume  # auto: see start_or_resume
    if resume_dir is not None:
        saved = load_train_config(resume_dir)
        if config.recipe is None and saved.recipe is not None:  # the resumed run keeps its folder's recipe
            config = folder_recipe.with_recipe(config, saved.recipe, folder_recipe.settings_given(config))
        if config.image_size is None:
            config = config.replace(image_size=saved.image_size)
        config = resolve_settings(config, new_run=False)
    else:
        config, facts = folder_recipe.apply_recipe(config, folder_recipe.settings_given(config))
        if facts is not None:
            logger.info("recipe for %s (%s): %s (auto_recipe=False: the fixed defaults)", config.data_dir,
                        facts.describe(), folder_recipe.describe_recipe(config.recipe or {}, facts))  # fmt: skip
        config = resolve_settings(config)
    if resume_dir is not None:
        run_dir = Path(resume_dir)
    elif config.out is not None:
        run_dir = Path(config.out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / (config.name or f"{config.dataset}-{config.model or 'finetuned'}-{stamp}")
    return config.replace(out=str(run_dir), name=config.name or run_dir.name)


def check_run_dir(config: TrainConfig) -> None:
    """A new run needs an unused folder; a resumed one the settings it was started with (bar RESUMABLE_CHANGES)."""
    run_dir = config.run_dir
    if config.resume is None:
        if checkpoint_step(run_dir) is not None or (run_dir / WEIGHTS_FILE).exists():
            raise ValueError(
                f"run folder {run_dir} already holds a run: continue it with --resume {run_dir}, "
                "or choose another --out / --name"
            )
        return
    saved = resolve_settings(load_train_config(run_dir), new_run=False).to_dict()  # as prepare_config resolves
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
    with distributed.run_processes(config.device, config.batch_size) as (ctx, device):
        config, resume_step = start_or_resume(config, ctx)
        run_dir = config.run_dir
        new_run = config.resume is None
        with determinism(config.deterministic, device), distributed.only_main_logs(ctx):
            with _removed_on_failure(run_dir if new_run and ctx.is_main else None):
                trainer = _set_up(config, run_dir, ctx, device)
            if trainer.step != resume_step:
                raise ValueError(
                    f"process {ctx.rank} resumed {run_dir} at step {trainer.step}, but process 0 found the checkpoint "
                    f"of step {resume_step} there: every node must see the same run folder (shared storage)"
                )
            history, final = trainer.fit(on_epoch_end, on_step_end)
            if config.lora_rank:
                base_weights = find_init_weights(config.init_from)[0] if config.init_from else None
                final = finetune.save_lora_run(final, run_dir, config, base_weights, write=ctx.is_main)
        return TrainResult(run_dir, history, final)


def start_or_resume(config: TrainConfig, ctx: distributed.DistContext) -> tuple[TrainConfig, int]:
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
        run_dir = config.run_dir
        if config.resume == AUTO_RESUME:
            has_checkpoint = checkpoint_step(run_dir) is not None
            config = prepare_config(config.replace(resume=str(run_dir) if has_checkpoint else None))
        step = checkpoint_step(run_dir) if config.resume is not None else None
        if step is not None:
            logger.info("resuming %s from its checkpoint of step %d", run_dir, step)
            resume_step = step
        elif config.resume is not None:
            logger.warning(
                "%s has no checkpoint (the run stopped before its first one): starting it from the beginning with its "
                "saved settings", run_dir,
            )  # fmt: skip
            config = config.replace(resume=None)
        check_run_dir(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(config.to_dict(), run_dir / TRAIN_CONFIG_FILE)  # first: --resume works from the first moment
    settings, resume_step = distributed.broadcast_object((config.to_dict(), resume_step), ctx)
    return TrainConfig.from_dict(settings), resume_step


def _set_up(config: TrainConfig, run_dir: Path, ctx: distributed.DistContext, device: torch.device) -> Trainer:
    """Everything before the first step: the data, the model (and the weights it starts from), the trainer."""
    init_weights, init_config = find_init_weights(config.init_from) if config.init_from else (None, None)
    torch.manual_seed(config.seed)
    keep = init_config if init_config is not None and config.keep_preprocessing else None
    with distributed.main_first(ctx):  # the others then read the folder index the main process wrote
        data = build_run_data(config, channels=init_config.in_channels if init_config else None, preprocessing=keep)
    if config.image_size is None:
        logger.info(
            "image size %dx%d: the data's (for an image folder, the median shorter side of its images), which the "
            "default model %s takes; --image-size or --model to change", *data.image_size, DEFAULT_MODEL,
        )  # fmt: skip
    model = build_model(config, data, init_config).to(device)
    if init_weights is not None and config.resume is None:
        source_grid = init_config.grid_size if init_config else None
        model.load_weights(load_safetensors(init_weights), source_grid=source_grid, strict_head=False)
    finetune.prepare_model(model, config)
    trainer = Trainer(config, run_dir, ctx, device, data, model)
    _warn_unused_images(len(data.train), trainer.steps_per_epoch, config, ctx.world_size)
    if ctx.is_main:
        model.save_config(run_dir)
    return trainer


UNUSED_SHARE_WARNED = 0.05  # the whole batches of an epoch leaving out more than this share of the images: warn


def _warn_unused_images(images: int, steps: int, config: TrainConfig, processes: int) -> None:
    """Each epoch trains on whole batches only (so that any number of processes computes the same steps): say when
    that leaves out a noticeable share of a small training set, and which batch size would not."""
    per_step = config.batch_size * config.accum_steps
    unused = images - steps * per_step
    if unused <= UNUSED_SHARE_WARNED * images:
        return
    candidates = [size for size in range(config.batch_size, 0, -1) if size % processes == 0]
    best = min(candidates, key=lambda size: images % (size * config.accum_steps))  # the largest of the best
    logger.warning(
        "%d training images in whole batches of %d: %d step(s) per epoch leave %d images (%.0f%%) out of each "
        "epoch (different ones each epoch); --batch-size %d uses %s",
        images, per_step, steps, unused, 100 * unused / images, best,
        "all of them" if images % (best * config.accum_steps) == 0 else
        f"all but {images % (best * config.accum_steps)}",
    )  # fmt: skip


@contextlib.contextmanager
def _removed_on_failure(run_dir: Path | None) -> Iterator[None]:
    """A new run that fails before its first step leaves no run folder behind (nothing in it could be resumed)."""
    try:
        yield
    except BaseException:
        if run_dir is not None:
            for name in (TRAIN_CONFIG_FILE, CONFIG_FILE):
                (run_dir / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a folder that holds anything else stays
                run_dir.rmdir()
        raise


def load_run(run_dir: str | os.PathLike) -> tuple[VisionTransformer, TrainConfig]:
    """A finished run's model and training config (the weights file chosen by ``model.weights.find_weights``)."""
    return VisionTransformer.from_pretrained(run_dir), load_train_config(run_dir)
