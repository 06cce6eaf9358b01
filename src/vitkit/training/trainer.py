"""The training loop: the ViT/DeiT recipe, checkpoints that resume exactly, metrics, and DDP.

What makes a resumed run equal to an uninterrupted one, bit for bit on the CPU:
- the data order is a function of (seed, epoch) (``DistributedSampler``), and a resumed epoch skips the batches
  already done; augmentation is seeded per (seed, epoch, sample) by ``SeededTransformDataset``;
- everything else random (dropout, stochastic depth, MixUp/CutMix) draws from torch's global generator, whose state
  is saved with every checkpoint; the data loaders draw their worker seeds from a generator of their own;
- weights, optimizer, scheduler, EMA and the running sums of the epoch's metrics are all in the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from vitkit.data import DataBundle, build_batch_mixer, build_data, default_augment
from vitkit.io import load_safetensors, write_json
from vitkit.model import VisionTransformer, ViTConfig, get_config
from vitkit.model.weights import WEIGHTS_FILE
from vitkit.training import distributed
from vitkit.training.checkpoint import (
    LAST_STATE,
    LAST_WEIGHTS,
    find_init_weights,
    load_checkpoint,
    save_best,
    save_checkpoint,
)
from vitkit.training.config import (
    DEFAULT_MODEL,
    RESUMABLE_CHANGES,
    TRAIN_CONFIG_FILE,
    TrainConfig,
    check_batch_split,
    load_train_config,
)
from vitkit.training.distributed import DistContext
from vitkit.training.interrupts import DataWorkerError, TrainingInterrupted, is_worker_death, stop_on_ctrl_c
from vitkit.training.loaders import build_loaders
from vitkit.training.metrics import MetricsLog, read_metrics
from vitkit.training.optim import build_optimizer, build_scheduler, lr_factor

logger = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any]], None]
StepCallback = Callable[[int, int, nn.Module], None]


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or infinite: training stopped, the last good checkpoint was kept."""

    def __init__(self, message: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


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


@dataclass
class _EpochSums:
    """Running sums of the current epoch, saved in checkpoints so a resumed epoch reports the same numbers."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0


def ema_with_warmup(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """EMA update for AveragedModel whose decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (as timm).

    A fixed decay of 0.99 would hold the EMA near the first weights for hundreds of steps, useless in short runs;
    with the warm-up it follows the weights closely at first and averages over ~1 / (1 - decay) steps later on.
    """

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        torch._foreach_lerp_(ema_params, params, 1.0 - min(decay, (1 + n) / (10 + n)))

    return update


# --- pieces a run is built from -------------------------------------------------------------------


def build_run_data(config: TrainConfig, channels: int | None = None) -> DataBundle:
    """The data a run trains and validates on: the same call rebuilds a run's held-out split from its config."""
    return build_data(
        config.dataset,
        data_dir=config.data_dir,
        image_size=config.image_size,
        val_fraction=config.val_fraction,
        seed=config.seed,
        download=config.download,
        aug=default_augment(config.dataset, **config.augment_overrides()),
        channels=channels,
        skip_bad_files=config.skip_bad_files,
    )


def build_model(config: TrainConfig, data: DataBundle, init_config: ViTConfig | None = None) -> VisionTransformer:
    """The architecture of ``config.model`` (else of the fine-tuning source, else vit_digits), fitted to the data."""
    if config.model is not None:
        base = get_config(config.model)
    else:
        base = init_config if init_config is not None else get_config(DEFAULT_MODEL)
    changes: dict[str, Any] = dict(
        image_size=data.image_size, in_channels=data.in_channels, num_classes=data.num_classes,
        class_names=data.class_names, mean=data.mean, std=data.std,
    )  # fmt: skip
    for name in ("patch_size", "hidden_dim", "depth", "num_heads", "mlp_dim", "drop_path", "dropout"):
        if getattr(config, name) is not None:
            changes[name] = getattr(config, name)
    return VisionTransformer(base.replace(**changes))


def resolve_run_dir(config: TrainConfig) -> Path:
    """--resume's folder, else --out, else runs/NAME (NAME defaults to dataset-model-date-time)."""
    if config.resume is not None:
        return Path(config.resume)
    if config.out is not None:
        return Path(config.out)
    name = config.name or f"{config.dataset}-{config.model or 'finetuned'}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path("runs") / name


def _check_run_dir(config: TrainConfig, run_dir: Path) -> None:
    if config.resume is None:
        if (run_dir / LAST_STATE).exists() or (run_dir / WEIGHTS_FILE).exists():
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


def _use_bf16(amp: str, device: torch.device) -> bool:
    """bf16 autocast: 'auto' only on CUDA GPUs that support it (on the CPU it is rarely faster), 'bf16' anywhere."""
    if amp == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return amp == "bf16"


@contextlib.contextmanager
def _determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the run's duration (warn, not fail, where an op has none); restored afterwards."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


# --- the trainer ----------------------------------------------------------------------------------


class Trainer:
    """One process's share of a training run; ``fit`` runs it. Build it through :func:`train`."""

    def __init__(self, config: TrainConfig, run_dir: Path, ctx: DistContext, device: torch.device) -> None:
        self.config, self.run_dir, self.ctx, self.device = config, run_dir, ctx, device
        resuming = config.resume is not None
        init_weights, init_config = find_init_weights(config.init_from) if config.init_from else (None, None)

        torch.manual_seed(config.seed)
        self.data = build_run_data(config, channels=init_config.in_channels if init_config else None)
        self.model = build_model(config, self.data, init_config).to(device)
        if init_weights is not None and not resuming:
            logger.info("fine-tuning from %s", init_weights)
            source_grid = init_config.grid_size if init_config else None
            self.model.load_weights(load_safetensors(init_weights), source_grid=source_grid, strict_head=False)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None)
            if ctx.distributed
            else None
        )
        if ctx.distributed:
            # Weights are rank 0's (DDP broadcast them); dropout, drop-path and mixing differ per process.
            torch.manual_seed(config.seed + ctx.rank)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=ema_with_warmup(config.ema_decay), use_buffers=True).eval()
            if config.ema_decay > 0
            else None
        )
        self.bf16 = _use_bf16(config.amp, device)
        self.mixer = (
            build_batch_mixer(config.mixup, config.cutmix, self.data.num_classes)
            if config.mixup or config.cutmix
            else None
        )

        self.loaders = build_loaders(
            self.data, config.batch_size, config.workers, config.seed, ctx, device.type == "cuda"
        )
        micro_batches = self.loaders.sampler.num_samples // self.loaders.per_process_batch
        self.steps_per_epoch = micro_batches // config.accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {len(self.data.train)} images, too few for one optimizer step of "
                f"batch_size {config.batch_size} x accum_steps {config.accum_steps}: "
                "lower --batch-size or --accum-steps"
            )
        total_steps = config.epochs * self.steps_per_epoch
        warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        if warmup_steps > total_steps // 2:
            logger.info(
                "warm-up shortened to half the run (%d steps) so that the cosine still anneals", total_steps // 2
            )
            warmup_steps = total_steps // 2
        min_ratio = config.min_lr / config.lr
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, total_steps, warmup_steps, min_ratio)
        self.lr_schedule = [config.lr * lr_factor(s, total_steps, warmup_steps, min_ratio) for s in range(total_steps)]

        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps completed
        self.step_in_epoch = 0
        self.best_acc = -1.0
        self.sums = _EpochSums()
        self.saved_step: int | None = None
        if resuming:
            self._restore()
        self.metrics = (
            MetricsLog(run_dir, lr_schedule=self.lr_schedule, completed_epochs=self.epoch, completed_steps=self.step,
                       tensorboard=config.tensorboard)
            if ctx.is_main
            else None
        )  # fmt: skip
        self.history: list[dict[str, Any]] = self.metrics.history if self.metrics else []

    # --- the run --------------------------------------------------------------------------------
    def fit(self, on_epoch_end: EpochCallback | None = None, on_step_end: StepCallback | None = None) -> TrainResult:
        """Train the remaining epochs, then write the final model (the EMA when on) as model.safetensors."""
        config = self.config
        if self.ctx.is_main:
            write_json(config.to_dict(), self.run_dir / TRAIN_CONFIG_FILE)
            self.model.save_config(self.run_dir)
            logger.info(
                "training %s parameters on %s (%d train / %d %s images, %s) for %d epochs of %d steps; "
                "device %s%s, %d process(es); run folder %s",
                f"{sum(p.numel() for p in self.model.parameters()):,}", self.data.source, len(self.data.train),
                len(self.data.val), self.data.val_name, "x".join(map(str, self.data.image_size)), config.epochs,
                self.steps_per_epoch, self.device, " bf16" if self.bf16 else "", self.ctx.world_size, self.run_dir,
            )  # fmt: skip
            if self.step:
                logger.info("resuming at epoch %d, step %d", self.epoch + 1, self.step)
        with stop_on_ctrl_c() as self.ctrl_c_pressed:
            for epoch in range(self.epoch, config.epochs):
                started = time.perf_counter()
                try:
                    self._train_epoch(epoch, on_step_end)
                    record = self._end_epoch(epoch, started)
                except (RuntimeError, ConnectionError, EOFError) as err:
                    if not is_worker_death(err):
                        raise
                    raise DataWorkerError(
                        f"a data-loading worker process died during epoch {epoch + 1} ({err}); {self._kept()}: "
                        f"continue with `vitkit train --resume {self.run_dir}` (fewer --workers if memory ran short)"
                    ) from err
                if on_epoch_end is not None and self.ctx.is_main:
                    on_epoch_end(record)
        final = self.ema.module if self.ema is not None else self.model
        if self.ctx.is_main:
            final.save_pretrained(self.run_dir)
            self.metrics.close()
        return TrainResult(self.run_dir, self.history, final)

    def _train_epoch(self, epoch: int, on_step_end: StepCallback | None) -> None:
        config, loaders = self.config, self.loaders
        self.data.train.set_epoch(epoch)
        loaders.sampler.set_epoch(epoch)
        first = self.step_in_epoch * config.accum_steps  # micro-batches done before a resume
        loaders.sampler.start = first * loaders.per_process_batch
        loaders.generator.manual_seed(config.seed + epoch)
        total = self.steps_per_epoch * config.accum_steps
        network = self.ddp or self.model
        network.train()
        bar = tqdm(
            total=total * config.batch_size, initial=first * config.batch_size, unit="img", unit_scale=True,
            desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, dynamic_ncols=True,
            disable=None if config.progress and self.ctx.is_main else True,
        )  # fmt: skip
        started = time.perf_counter()
        batches = iter(loaders.train)
        for micro in range(first, total):
            images, labels = next(batches)
            last_micro = (micro + 1) % config.accum_steps == 0
            loss = self._forward_backward(network, images, labels, sync=last_micro, epoch=epoch)
            bar.update(config.batch_size)
            if not last_micro:
                continue
            lr = self._optimizer_step(epoch)
            now = time.perf_counter()
            self.sums.seconds += now - started
            started = now
            bar.set_postfix(loss=f"{self.sums.loss / self.sums.count:.4f}", lr=f"{lr:.2e}", refresh=False)
            if self.metrics is not None:
                self.metrics.log_step(self.step, loss, lr)
            if config.save_every and self.step % config.save_every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self._save_checkpoint()
            if on_step_end is not None:
                on_step_end(epoch, self.step, self.model)
            if distributed.any_process(self.ctrl_c_pressed(), self.ctx, self.device):
                self._stop_after_ctrl_c(epoch)
        bar.close()

    def _stop_after_ctrl_c(self, epoch: int) -> None:
        """Ctrl-C: a checkpoint of the step just finished (every process stops at the same step), then stop."""
        if self.saved_step != self.step:
            self._save_checkpoint()
        raise TrainingInterrupted(
            f"interrupted by Ctrl-C after step {self.step} (epoch {epoch + 1}); the checkpoint is saved in "
            f"{self.run_dir}: continue with `vitkit train --resume {self.run_dir}`"
        )

    def _kept(self) -> str:
        """What a stopped run still has: its last good checkpoint, if any."""
        if self.saved_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint ({LAST_WEIGHTS}, step {self.saved_step}) in {self.run_dir} is kept"

    def _forward_backward(
        self, network: nn.Module, images: torch.Tensor, labels: torch.Tensor, sync: bool, epoch: int
    ) -> float:
        """One micro-batch: loss (label smoothing, soft MixUp/CutMix targets) and gradients; returns the loss."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        targets = labels
        if self.mixer is not None:
            images, targets = self.mixer(images, labels)
        # Gradients are all-reduced between processes only on the last micro-batch of an optimizer step.
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()
        with no_sync:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = network(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing)
            value = loss.item()
            self._stop_if_non_finite("loss", value, epoch)
            (loss / self.config.accum_steps).backward()
        hard_targets = targets.argmax(dim=1) if targets.ndim == 2 else targets
        self.sums.loss += value * labels.shape[0]
        self.sums.correct += (logits.argmax(dim=1) == hard_targets).sum().item()
        self.sums.count += labels.shape[0]
        return value

    def _optimizer_step(self, epoch: int) -> float:
        """Clip, step, schedule, update the EMA; returns the learning rate the step used."""
        max_norm = self.config.clip_grad or math.inf  # inf: measure the norm (to catch NaN) without clipping
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self._stop_if_non_finite("gradient norm", grad_norm.item(), epoch)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        self.step_in_epoch += 1
        return lr

    def _stop_if_non_finite(self, what: str, value: float, epoch: int) -> None:
        """Raise NonFiniteLossError on every process at once (before the bad update is applied or saved)."""
        if not distributed.any_process(not math.isfinite(value), self.ctx, self.device):
            return
        where = f"epoch {epoch + 1}, optimizer step {self.step + 1}"
        shown = value if not math.isfinite(value) else "non-finite in another process"
        raise NonFiniteLossError(
            f"training stopped: the {what} became {shown} at {where}; {self._kept()}. "
            "Try a lower --lr, a longer --warmup-epochs or --clip-grad, then --resume or start again",
            epoch=epoch + 1,
            step=self.step + 1,
        )

    def _end_epoch(self, epoch: int, started: float) -> dict[str, Any]:
        """Evaluate raw and EMA weights, log, keep the best weights, write the end-of-epoch checkpoint."""
        loss, correct, count = distributed.all_reduce_sum(
            [self.sums.loss, self.sums.correct, self.sums.count], self.ctx, self.device
        )
        val_loss, val_acc = self._evaluate(self.model)
        ema_val_acc = self._evaluate(self.ema.module)[1] if self.ema is not None else None
        record = {
            "epoch": epoch + 1, "step": self.step, "train_loss": loss / count, "train_acc": correct / count,
            "val_loss": val_loss, "val_acc": val_acc, "ema_val_acc": ema_val_acc, "lr": self.lr_schedule[self.step - 1],
            "images_per_s": count / max(self.sums.seconds, 1e-9), "epoch_time_s": time.perf_counter() - started,
        }  # fmt: skip
        candidates = [(val_acc, "model", self.model)]
        if self.ema is not None:
            candidates.append((ema_val_acc, "ema", self.ema.module))
        best_acc, source, module = max(candidates, key=lambda candidate: candidate[0])
        if best_acc > self.best_acc:
            self.best_acc = best_acc
            if self.ctx.is_main:
                save_best(self.run_dir, module.state_dict(), epoch + 1, best_acc, source)
        if self.metrics is not None:
            self.metrics.log_epoch(record)
        else:
            self.history.append(record)
        self.epoch, self.step_in_epoch, self.sums = epoch + 1, 0, _EpochSums()
        self._save_checkpoint()
        return record

    @torch.no_grad()
    def _evaluate(self, module: nn.Module) -> tuple[float, float]:
        """(loss, accuracy) on the validation set; each process takes its share, the sums are all-reduced."""
        module.eval()
        loss = correct = count = 0.0
        for images, labels in self.loaders.val:
            images, labels = images.to(self.device), labels.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = module(images)
            loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += (logits.argmax(dim=1) == labels).sum().item()
            count += labels.shape[0]
        loss, correct, count = distributed.all_reduce_sum([loss, correct, count], self.ctx, self.device)
        return loss / count, correct / count

    # --- checkpoints ----------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def _save_checkpoint(self) -> None:
        rng_states = distributed.gather_objects(self._rng_state(), self.ctx)  # every process's random stream
        if not self.ctx.is_main:
            return
        state = {
            "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch, "best_acc": self.best_acc, "sums": asdict(self.sums),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "rng": rng_states,
        }  # fmt: skip
        save_checkpoint(self.run_dir, self.model.state_dict(), state)
        self.saved_step = self.step

    def _restore(self) -> None:
        weights, state = load_checkpoint(self.run_dir)
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"cannot resume {self.run_dir}: it was trained with {state['steps_per_epoch']} steps per epoch, the "
                f"data and batch size now give {self.steps_per_epoch} (did the data set change?)"
            )
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        self.best_acc, self.sums, self.saved_step = state["best_acc"], _EpochSums(**state["sums"]), state["step"]
        if len(state["rng"]) == self.ctx.world_size:
            rng = state["rng"][self.ctx.rank]
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        else:
            logger.warning(
                "the checkpoint was written by %d process(es), this run has %d: the data order is kept, but dropout "
                "and mixing draw new random numbers", len(state["rng"]), self.ctx.world_size,
            )  # fmt: skip
            torch.manual_seed(self.config.seed + self.ctx.rank + self.step)


# --- entry points ---------------------------------------------------------------------------------


def train(
    config: TrainConfig, *, on_epoch_end: EpochCallback | None = None, on_step_end: StepCallback | None = None
) -> TrainResult:
    """Train a model as ``config`` says and return the run's result.

    Under torchrun (WORLD_SIZE > 1) this process trains its share with DDP; with ``config.nproc > 1`` outside
    torchrun, torchrun is started with that many processes and this call waits for them. ``on_epoch_end(record)``
    is called on rank 0 after each epoch (the CLI prints a line); ``on_step_end(epoch, step, model)`` after each
    optimizer step and its checkpoint, on every process.
    """
    ctx = distributed.context_from_env()
    if config.model is None and config.init_from is None:
        config = config.replace(model=DEFAULT_MODEL)  # train_config.json names the model actually trained
    run_dir = resolve_run_dir(config)
    config = config.replace(out=str(run_dir), name=config.name or run_dir.name)
    if ctx.is_main:
        _check_run_dir(config, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    if config.nproc > 1 and not ctx.distributed:
        return _launch(config, run_dir)
    check_batch_split(config.batch_size, ctx.world_size)  # torchrun started by hand may have any world size
    device = distributed.pick_device(config.device, ctx)
    owns_group = distributed.init_process_group(ctx, device)
    finished = False
    try:
        with _determinism(config.deterministic, device), distributed.only_main_logs(ctx):
            result = Trainer(config, run_dir, ctx, device).fit(on_epoch_end, on_step_end)
        finished = True
        return result
    finally:
        if owns_group:
            distributed.destroy_process_group(barrier=finished)


def _launch(config: TrainConfig, run_dir: Path) -> TrainResult:
    """Run the training in ``config.nproc`` processes through torchrun; read the result from the run folder."""
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / TRAIN_CONFIG_FILE
        write_json(config.to_dict(), config_file)
        distributed.launch(config.nproc, config_file)
    model, _ = load_run(run_dir)
    return TrainResult(run_dir, read_metrics(run_dir), model)


def load_run(run_dir: str | os.PathLike) -> tuple[VisionTransformer, TrainConfig]:
    """A run's model and training config; an unfinished run gives its last checkpoint's weights."""
    run_dir = Path(run_dir)
    config = load_train_config(run_dir)
    if not (run_dir / WEIGHTS_FILE).is_file() and (run_dir / LAST_WEIGHTS).is_file():
        logger.warning("%s has no %s (the run did not finish): using %s", run_dir, WEIGHTS_FILE, LAST_WEIGHTS)
        return VisionTransformer.from_pretrained(run_dir / LAST_WEIGHTS), config
    return VisionTransformer.from_pretrained(run_dir), config


def format_epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch for the CLI: loss, accuracies, learning rate, throughput."""
    ema = f"  ema val acc {100 * record['ema_val_acc']:6.2f}%" if record.get("ema_val_acc") is not None else ""
    return (
        f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  loss {record['train_loss']:.4f}  "
        f"train acc {100 * record['train_acc']:6.2f}%  val acc {100 * record['val_acc']:6.2f}%{ema}  "
        f"lr {record['lr']:.2e}  {record['images_per_s']:,.0f} img/s  {record['epoch_time_s']:.1f}s"
    )
