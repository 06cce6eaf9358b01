"""`vitkit pretrain`: a masked-autoencoder run on an image folder's pixels, written as a run folder.

The data, the encoder's architecture, the optimizer and its schedule come from the same :class:`TrainConfig` and
helpers as ``vitkit train`` (labels are not used), and the run folder follows the same conventions:
``train_config.json``; ``pretrain.json`` (the MAE settings and one record per epoch); the checkpoint pair
(``last.safetensors`` + ``last_state.pt``, written atomically after every epoch, every ``save_every`` steps, at
``steps`` and on Ctrl-C) from which ``--resume`` continues bit for bit on the CPU; ``metrics.jsonl`` / ``.csv`` and the
loss and learning-rate plots; and, once finished, the encoder as ``config.json`` + ``model.safetensors``, so that
``vitkit train --init-from RUN_DIR`` fine-tunes it (with a new head), and ``reconstructions.png``: a few held-out
images, masked and reconstructed. Under torchrun (``vitkit pretrain --nproc N``) each process trains its share of
every batch with DistributedDataParallel, and rank 0 writes the files; the masks, like the batches, depend only on
(seed, epoch, micro-batch), so N processes compute the steps of one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.data import DataBundle
from vitkit.data.batch_augment import step_generator
from vitkit.io import read_json, write_json
from vitkit.model import VisionTransformer
from vitkit.pretrain.mae import MASK_RATIO, MaskedAutoencoder
from vitkit.training import distributed
from vitkit.training.checkpoint import checkpoint_step, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vitkit.training.config import AUTO_RESUME, PRETRAIN_FILE, TRAIN_CONFIG_FILE, TrainConfig
from vitkit.training.interrupts import TrainingInterrupted, stop_on_ctrl_c
from vitkit.training.loaders import Loaders
from vitkit.training.loop import determinism
from vitkit.training.metrics import MetricsLog
from vitkit.training.optim import build_scheduler, lr_factor
from vitkit.training.run import build_model, build_run_data, check_run_dir, prepare_config

logger = logging.getLogger(__name__)

RECONSTRUCTIONS_FILE = "reconstructions.png"
RESUME_COMMAND = "vitkit pretrain"
# Settings of a classification run that a masked autoencoder has no use for: changing one is an error, not ignored.
CLASSIFICATION_ONLY = ("label_smoothing", "mixup", "cutmix", "init_from", "layer_decay", "freeze_blocks",
                       "linear_probe", "head_lr_scale", "lora_rank")  # fmt: skip
# Settings of `vitkit train` that pre-training does not implement: refused rather than silently ignored.
NOT_IN_PRETRAINING = ("shard_model", "compile", "grad_checkpointing", "amp", "decode", "ema_decay")
MASK_STREAM = 1  # the masks' random numbers: a stream of (seed, epoch, micro-batch) apart from the augmentation's


@dataclass
class MAESettings:
    """The masked autoencoder's own settings (the encoder's are the run's ``model`` and ``vit``)."""

    mask_ratio: float = MASK_RATIO
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True  # the target: each patch's pixels normalised by their own mean and spread, or raw


@dataclass
class PretrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    encoder: VisionTransformer


def saved_settings(run_dir: str | Path) -> MAESettings:
    """The MAE settings a pre-training run folder was started with."""
    return MAESettings(**read_json(Path(run_dir) / PRETRAIN_FILE)["mae"])


def _param_groups(mae: MaskedAutoencoder, weight_decay: float) -> list[dict[str, Any]]:
    """The encoder's own decay / no-decay groups; the decoder's matrices decay, its vectors and mask token do not."""
    groups = mae.encoder.param_groups(weight_decay)
    for name, param in mae.named_parameters():
        if not name.startswith("encoder."):
            groups[param.ndim <= 1 or name == "mask_token"]["params"].append(param)
    return groups


def _start_or_resume(config: TrainConfig, settings: MAESettings) -> tuple[TrainConfig, bool]:
    """The resolved settings and the prepared run folder; whether a checkpoint there is to be resumed."""
    if config.resume is None and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        config = config.replace(resume=AUTO_RESUME)  # torchrun may restart the processes: they continue
    config = prepare_config(config)
    if config.resume == AUTO_RESUME:  # the run folder's checkpoint if it has one, else a new run
        has_checkpoint = checkpoint_step(config.run_dir) is not None
        config = prepare_config(config.replace(resume=str(config.run_dir) if has_checkpoint else None))
    run_dir = config.run_dir
    resuming = config.resume is not None and checkpoint_step(run_dir) is not None
    if config.resume is not None:
        saved = saved_settings(run_dir)
        if saved != settings:
            raise ValueError(
                f"cannot resume {run_dir} with other MAE settings ({dataclasses.asdict(saved)} -> "
                f"{dataclasses.asdict(settings)}): the continued run would differ from the interrupted one"
            )
        if not resuming:
            logger.warning("%s has no checkpoint (the run stopped before its first one): starting it from the "
                           "beginning with its saved settings", run_dir)  # fmt: skip
            config = config.replace(resume=None)
    check_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config.to_dict(), run_dir / TRAIN_CONFIG_FILE)
    if not resuming:
        write_json({"mae": dataclasses.asdict(settings), "history": []}, run_dir / PRETRAIN_FILE)
    return config, resuming


def pretrain(
    config: TrainConfig,
    settings: MAESettings | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> PretrainResult:
    """Pre-train the encoder ``config`` describes as a masked autoencoder on ``config``'s training images; with
    ``config.resume`` continue that run folder's last checkpoint (``settings`` must be the run's)."""
    settings = settings or MAESettings()
    defaults = TrainConfig()
    changed = [name for name in CLASSIFICATION_ONLY if getattr(config, name) != getattr(defaults, name)]
    if changed:
        raise ValueError(f"pretraining takes no {', '.join(changed)}: these settings are for classification runs")
    missing = [name for name in NOT_IN_PRETRAINING if getattr(config, name) != getattr(defaults, name)]
    if missing:
        raise ValueError(f"pretraining does not implement {', '.join(missing)}: leave them at their defaults")
    with distributed.run_processes(config.device, config.batch_size) as (ctx, device):
        resuming = False
        if ctx.is_main:  # decided once: every process starts from the same checkpoint (or none), in one folder
            # The folder's recipe is for classification runs: pretraining keeps the fixed defaults.
            config, resuming = _start_or_resume(config.replace(auto_recipe=False), settings)
        settings_dict, resuming = distributed.broadcast_object((config.to_dict(), resuming), ctx)
        config = TrainConfig.from_dict(settings_dict)
        with determinism(config.deterministic, device), distributed.only_main_logs(ctx):
            torch.manual_seed(config.seed)
            with distributed.main_first(ctx):  # the others then read the folder index the main process wrote
                data = build_run_data(config)
            encoder = build_model(config, data)
            mae = MaskedAutoencoder(encoder, **dataclasses.asdict(settings))
            run = _PretrainRun(config, settings, data, mae, device, ctx)
            if resuming:
                run.restore()
            return run.fit(on_epoch_end)


class _PretrainRun:
    """One pre-training run's state: the model, optimizer, schedule, progress and the epoch's running losses."""

    def __init__(
        self, config: TrainConfig, settings: MAESettings, data: DataBundle, mae: MaskedAutoencoder,
        device: torch.device, ctx: distributed.DistContext,
    ) -> None:  # fmt: skip
        self.config, self.settings, self.data, self.device, self.ctx = config, settings, data, device, ctx
        self.run_dir = config.run_dir
        self.mae = mae.to(device)
        encoder = mae.encoder
        for unused in (encoder.fc_norm, encoder.pre_logits, encoder.seq_pool, encoder.head):
            if unused is not None:  # what follows the encoder's tokens: no gradient here, none for DDP to wait for
                unused.requires_grad_(False)
        self.network = distributed.parallelize(self.mae, ctx, device, shard=False)  # what the steps run
        if ctx.distributed:
            # Weights are rank 0's (all processes built them from one seed); stochastic depth differs.
            torch.manual_seed(config.seed + ctx.rank)
        self.loaders = Loaders(data, config.batch_size, config.accum_steps, config.workers, config.seed, ctx,
                               device)  # fmt: skip
        self.steps_per_epoch = self.loaders.micro_batches // config.accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(data.train)} training images are too few for one step of batch_size {config.batch_size}"
            )
        total = config.epochs * self.steps_per_epoch
        warmup = min(round(config.warmup_epochs * self.steps_per_epoch), total // 2)
        min_ratio = config.min_lr / config.peak_lr
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.mae, config.weight_decay), lr=config.peak_lr, betas=(0.9, 0.95)
        )
        self.scheduler = build_scheduler(self.optimizer, total, warmup, min_ratio)
        self.lr_schedule = [config.peak_lr * lr_factor(s, total, warmup, min_ratio) for s in range(total)]
        self.epoch = self.step = self.step_in_epoch = 0  # completed
        self.history: list[dict[str, Any]] = []
        self.losses: list[torch.Tensor] = []  # this epoch's, one per micro-batch
        self.seconds = 0.0  # time spent in this epoch's steps
        self.saved_step: int | None = None

    def fit(self, on_epoch_end: Callable[[dict[str, Any]], None] | None) -> PretrainResult:
        config, encoder = self.config, self.mae.encoder
        logger.info("pre-training a masked autoencoder (mask ratio %g) on %d images of %s for %d epochs of %d steps; "
                    "run folder %s", self.settings.mask_ratio, len(self.data.train), self.data.source, config.epochs,
                    self.steps_per_epoch, self.run_dir)  # fmt: skip
        if self.step:
            logger.info("resuming at epoch %d, step %d", self.epoch + 1, self.step)
        metrics = (
            MetricsLog(self.run_dir, lr_schedule=self.lr_schedule, completed_steps=self.step,
                       tensorboard=config.tensorboard, train_loss_label="train (hidden patches)")
            if self.ctx.is_main else None
        )  # fmt: skip
        with stop_on_ctrl_c() as ctrl_c_pressed:
            for epoch in range(self.epoch, config.epochs):
                self._train_epoch(epoch, ctrl_c_pressed)
                if 0 < config.steps <= self.step:
                    if self.saved_step != self.step:
                        self._save_checkpoint()
                    if metrics is not None:
                        metrics.close()
                    logger.info("stopped after %d optimizer step(s) (steps=%d): continue with `%s --resume %s "
                                "--steps 0`", self.step, config.steps, RESUME_COMMAND, self.run_dir)  # fmt: skip
                    return PretrainResult(self.run_dir, self.history, encoder)
                record = self._end_epoch(epoch)
                if metrics is not None:
                    metrics.log_epoch(self.history)
                if on_epoch_end is not None and self.ctx.is_main:
                    on_epoch_end(record)
        if metrics is not None:
            metrics.close()
            encoder.save_pretrained(self.run_dir)
            from vitkit.explain.report import write_reconstructions  # the pictures layer, loaded late

            write_reconstructions(self.mae, self.data.val, self.run_dir / RECONSTRUCTIONS_FILE, seed=config.seed)
        return PretrainResult(self.run_dir, self.history, encoder)

    def _mask_noise(self, epoch: int, micro: int) -> torch.Tensor:
        """The masking noise of this process's images of micro-batch ``micro``: the whole batch's rows, drawn from
        (seed, epoch, micro-batch), then this process's (DistributedSampler deals the images out in turn)."""
        rows = torch.rand(self.config.batch_size, self.mae.encoder.config.num_patches,
                          generator=step_generator(self.config.seed, epoch, micro, MASK_STREAM))  # fmt: skip
        return rows[self.ctx.rank :: self.ctx.world_size].to(self.device)

    def _train_epoch(self, epoch: int, ctrl_c_pressed: Callable[[], bool]) -> None:
        config, mae = self.config, self.mae
        mae.train()
        first = self.step_in_epoch * config.accum_steps  # micro-batches done before a resume
        started = time.perf_counter()
        batches = iter(()) if 0 < config.steps <= self.step else self.loaders.epoch(epoch, first)
        for micro, (images, _) in enumerate(batches, start=first):
            last_micro = (micro + 1) % config.accum_steps == 0
            with distributed.gradient_sync(self.network, enabled=last_micro):
                loss = self.network(images.to(self.device), self._mask_noise(epoch, micro))[0]
                (loss / config.accum_steps).backward()
            self.losses.append(loss.detach())
            if not last_micro:
                continue
            norm = torch.nn.utils.clip_grad_norm_(mae.parameters(), config.clip_grad or math.inf)
            if not math.isfinite(norm.item()):
                raise ValueError(
                    f"pre-training stopped: the gradient norm became {norm.item()} in epoch {epoch + 1}; {self._kept()}"
                )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            self.step_in_epoch += 1
            now = time.perf_counter()
            self.seconds, started = self.seconds + now - started, now
            if config.save_every and self.step % config.save_every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self._save_checkpoint()
            if distributed.any_process(ctrl_c_pressed(), self.ctx, self.device):
                if self.saved_step != self.step:
                    self._save_checkpoint()
                raise TrainingInterrupted(
                    f"interrupted by Ctrl-C after step {self.step} (epoch {epoch + 1}); the checkpoint is saved in "
                    f"{self.run_dir}: continue with `{RESUME_COMMAND} --resume {self.run_dir}`"
                )
            if 0 < config.steps <= self.step:
                break

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's record (validation loss under fixed masks), then the checkpoint and pretrain.json."""
        count = len(self.losses) * self.config.batch_size // self.ctx.world_size
        loss_sum, losses = distributed.all_reduce_sum(
            [torch.stack(self.losses).sum().item(), float(len(self.losses))], self.ctx, self.device
        )
        record = {
            "epoch": epoch + 1, "step": self.step, "train_loss": loss_sum / losses,
            "val_loss": self._validation_loss(),
            "lr": self.lr_schedule[self.step - 1],
            "images_per_s": count / max(self.seconds, 1e-9), "epoch_time_s": self.seconds,
        }  # fmt: skip
        self.history.append(record)
        self.epoch, self.step_in_epoch, self.losses, self.seconds = epoch + 1, 0, [], 0.0
        self._save_checkpoint()  # first the checkpoint, then the report: a reported epoch is never lost
        if self.ctx.is_main:
            report = {"mae": dataclasses.asdict(self.settings), "history": self.history}
            write_json(report, self.run_dir / PRETRAIN_FILE)
        return record

    def _kept(self) -> str:
        if self.saved_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint (step {self.saved_step}) in {self.run_dir} is kept"

    def _save_checkpoint(self) -> None:
        """Rank 0 writes the checkpoint, with every process's random state and running losses."""
        losses = torch.stack(self.losses).cpu() if self.losses else torch.zeros(0)
        losses_by_rank = distributed.gather_objects(losses, self.ctx)
        rng_by_rank = distributed.gather_objects(rng_state(self.device), self.ctx)
        if self.ctx.is_main:
            state = {
                "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
                "steps_per_epoch": self.steps_per_epoch, "history": self.history, "seconds": self.seconds,
                "losses": losses_by_rank, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_by_rank,
            }  # fmt: skip
            save_checkpoint(self.run_dir, self.mae.state_dict(), state, command=RESUME_COMMAND)
        self.saved_step = self.step

    def restore(self) -> None:
        """Continue from the run folder's last checkpoint."""
        weights, state = load_checkpoint(self.run_dir)
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"cannot resume {self.run_dir}: it was trained with {state['steps_per_epoch']} steps per epoch, the "
                f"data and batch size now give {self.steps_per_epoch} (did the data set change?)"
            )
        self.mae.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        self.history, self.seconds, self.saved_step = state["history"], state["seconds"], state["step"]
        ctx, losses, rng = self.ctx, state["losses"], state["rng"]
        if len(rng) == ctx.world_size:  # each process continues its own stream and running losses
            set_rng_state(rng[ctx.rank], self.device)
            mine = losses[ctx.rank]
        else:  # another process count: rank 0 takes all the losses (their mean is the same); new random streams
            logger.warning("%s was pre-trained with %d processes, now %d: the random streams of stochastic depth "
                           "start anew", self.run_dir, len(rng), ctx.world_size)  # fmt: skip
            torch.manual_seed(self.config.seed + ctx.rank + self.step)
            mine = torch.cat(losses) if ctx.is_main else torch.zeros(0)
        self.losses = [loss.to(self.device) for loss in mine]

    @torch.no_grad()
    def _validation_loss(self) -> float:
        """The reconstruction loss on the held-out images under masks drawn from the seed, one row per image (the
        same for every epoch and any process count)."""
        mae, ctx = self.mae, self.ctx
        mae.eval()
        generator = torch.Generator().manual_seed(self.config.seed)
        noise = torch.rand(len(self.data.val), mae.encoder.config.num_patches, generator=generator)
        mine = noise[ctx.rank :: ctx.world_size].to(self.device)  # the images of this process's share
        total, count = 0.0, 0
        for images, _ in self.loaders.val():
            if len(images):  # a share one image short ends with an empty batch
                batch_noise = mine[count : count + len(images)]
                total += mae(images.to(self.device), batch_noise)[0].item() * len(images)
                count += len(images)
        loss_sum, image_count = distributed.all_reduce_sum([total, float(count)], ctx, self.device)
        return loss_sum / max(image_count, 1.0)
