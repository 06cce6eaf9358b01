"""The training loop: the ViT/DeiT recipe, epochs of optimizer steps, checkpoints that resume exactly, DDP.

What makes a resumed run equal to an uninterrupted one, bit for bit on the CPU:
- the data order is a function of (seed, epoch) (``DistributedSampler``), and a resumed epoch skips the batches
  already done; augmentation is seeded per (seed, epoch, step) or per (seed, epoch, sample);
- everything else random (dropout, stochastic depth, MixUp/CutMix) draws from torch's global generator, whose state
  is saved with every checkpoint; the data loaders draw their worker seeds from a generator of their own;
- weights, optimizer, scheduler, EMA, the history and the running sums of the epoch are all in the checkpoint.

The host waits for the device once per optimizer step: to read that step's loss and gradient norm together (the
non-finite stop, the progress bar). Per-batch sums stay on the device until the epoch ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from vitkit.data import DataBundle, build_batch_mixer
from vitkit.evaluation import tally
from vitkit.model import VisionTransformer
from vitkit.training import cpu_kernels, distributed
from vitkit.training.checkpoint import (
    LAST_WEIGHTS,
    load_checkpoint,
    load_sharded_checkpoint,
    rng_state,
    save_best,
    save_checkpoint,
    save_sharded_checkpoint,
    set_rng_state,
)
from vitkit.training.config import TrainConfig
from vitkit.training.cpu_kernels import CpuKernels
from vitkit.training.distributed import DistContext
from vitkit.training.interrupts import (
    DataWorkerError,
    TrainingInterrupted,
    is_worker_death,
    release_dead_loader,
    stop_on_ctrl_c,
)
from vitkit.training.loaders import Loaders
from vitkit.training.memory import recompute_blocks_in_backward
from vitkit.training.metrics import MetricsLog
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


# The parameter lists AveragedModel hands its multi_avg_fn.
TensorList = tuple[Tensor, ...] | list[Tensor]


def ema_with_warmup(decay: float) -> Callable[[TensorList, TensorList, Tensor | int], None]:
    """EMA update for AveragedModel whose decay warms up as min(decay, (1 + n) / (10 + n)) after n updates
    (the num_updates rule of TensorFlow's ExponentialMovingAverage).

    A fixed decay of 0.99 would hold the EMA near the first weights for hundreds of steps, useless in short runs;
    with the warm-up it follows the weights closely at first and averages over ~1 / (1 - decay) steps later on.
    """

    @torch.no_grad()
    def update(ema_params: TensorList, params: TensorList, num_averaged: Tensor | int) -> None:
        n = int(num_averaged)
        torch._foreach_lerp_(ema_params, params, 1.0 - min(decay, (1 + n) / (10 + n)))

    return update


def use_bf16(amp: str, device: torch.device) -> bool:
    """bf16 autocast: 'auto' only on CUDA GPUs that support it (on the CPU it is rarely faster), 'bf16' anywhere."""
    if amp == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return amp == "bf16"


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device) -> Iterator[None]:
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


class Trainer:
    """One process's share of a training run over ``data`` and ``model`` (built by :func:`vitkit.training.train`)."""

    def __init__(
        self, config: TrainConfig, run_dir: Path, ctx: DistContext, device: torch.device, data: DataBundle,
        model: VisionTransformer,
    ) -> None:  # fmt: skip
        self.config, self.run_dir, self.ctx, self.device = config, run_dir, ctx, device
        self.data, self.model = data, model
        # The EMA copy first: FSDP2's modules cannot be deep-copied, and it must not share the blocks' recomputation.
        self.ema = (
            AveragedModel(model, multi_avg_fn=ema_with_warmup(config.ema_decay), use_buffers=True).eval()
            if config.ema_decay > 0
            else None
        )
        if config.grad_checkpointing:
            logger.info("gradient checkpointing: each encoder block's forward pass runs again in the backward pass")
            recompute_blocks_in_backward(model)
        self.sharded = config.shard_model and ctx.distributed
        self.parallel = distributed.parallelize(model, ctx, device, shard=config.shard_model)
        self.network = self.parallel  # what the training steps call: compiled with --compile
        if self.sharded:
            logger.info("model sharded between %d processes (FSDP2, one unit per encoder block)", ctx.world_size)
            if self.ema is not None:
                distributed.shard_blocks(self.ema.module, device)
        if config.compile:
            logger.info("compiling the model for training (torch.compile)")
            # Compiling a Module gives an OptimizedModule, itself a Module wrapping it.
            self.network = cast(nn.Module, torch.compile(self.parallel))
        if ctx.distributed:
            # Weights are rank 0's (all processes built them from one seed); dropout, drop-path and mixing differ.
            torch.manual_seed(config.seed + ctx.rank)
        self.bf16 = use_bf16(config.amp, device)
        self.mixer = (
            build_batch_mixer(config.mixup, config.cutmix, data.num_classes) if config.mixup or config.cutmix else None
        )
        self.loaders = Loaders(data, config.batch_size, config.accum_steps, config.workers, config.seed, ctx, device,
                               config.decode)  # fmt: skip
        self.steps_per_epoch = self.loaders.micro_batches // config.accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {len(data.train)} images, too few for one optimizer step of "
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
        min_ratio = config.min_lr / config.peak_lr
        self.parameters = list(model.parameters())
        self.optimizer = build_optimizer(
            model, config.peak_lr, config.weight_decay, config.layer_decay, config.head_lr_scale
        )
        self.scheduler = build_scheduler(self.optimizer, total_steps, warmup_steps, min_ratio)
        self.lr_schedule = [
            config.peak_lr * lr_factor(s, total_steps, warmup_steps, min_ratio) for s in range(total_steps)
        ]

        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps completed
        self.step_in_epoch = 0
        self.best_acc = -1.0
        self.history: list[dict[str, Any]] = []
        self.sums = self._zero_sums()
        self.seconds = 0.0  # time spent in this epoch's steps
        self.saved_step: int | None = None
        recorded_kernels = self._restore() if config.resume is not None else None
        self.cpu_kernels = self._decide_cpu_kernels(recorded_kernels)
        self.metrics = (
            MetricsLog(run_dir, lr_schedule=self.lr_schedule, completed_steps=self.step, tensorboard=config.tensorboard)
            if ctx.is_main
            else None
        )

    def _decide_cpu_kernels(self, recorded: dict[str, Any] | None) -> CpuKernels:
        """Rank 0's :func:`~vitkit.training.cpu_kernels.choose` for every process: oneDNN's timing differs between
        processes, and processes that multiplied in different libraries would not compute what one process does. A
        resumed run keeps the decision its checkpoint recorded (``recorded``) while its setting and device type are
        unchanged."""
        config, kernels = self.config, None
        if self.ctx.is_main:
            kernels = cpu_kernels.resumed(recorded, config.cpu_kernels, self.device) if recorded else None
            if kernels is None:
                kernels = cpu_kernels.choose(config.cpu_kernels, self.device, self.model, config.batch_size)
        return cast(CpuKernels, distributed.broadcast_object(kernels, self.ctx))

    def _zero_sums(self) -> Tensor:
        """The epoch's running (loss sum, correct, count) on the device: read once, when the epoch ends."""
        return torch.zeros(3, dtype=torch.float64, device=self.device)

    # --- the run --------------------------------------------------------------------------------
    def fit(
        self, on_epoch_end: EpochCallback | None = None, on_step_end: StepCallback | None = None
    ) -> tuple[list[dict[str, Any]], VisionTransformer]:
        """Train the remaining epochs, write the final model (the EMA when on); returns (history, final model)."""
        config = self.config
        if self.ctx.is_main:
            logger.info(
                "training %s parameters on %s (%d train / %d %s images, %s) for %d epochs of %d steps; "
                "device %s%s, %d process(es); run folder %s",
                f"{sum(p.numel() for p in self.model.parameters()):,}", self.data.source, len(self.data.train),
                len(self.data.val), self.data.val_name, "x".join(map(str, self.data.image_size)), config.epochs,
                self.steps_per_epoch, self.device, " bf16" if self.bf16 else "", self.ctx.world_size, self.run_dir,
            )  # fmt: skip
            logger.info("CPU kernels: %s", self.cpu_kernels.describe())
            if self.step:
                logger.info("resuming at epoch %d, step %d", self.epoch + 1, self.step)
        with stop_on_ctrl_c() as self.ctrl_c_pressed:
            for epoch in range(self.epoch, config.epochs):
                started = time.perf_counter()
                try:
                    self._train_epoch(epoch, on_step_end)
                    if self._step_limit_reached():
                        return self._stop_at_step_limit()
                    record = self._end_epoch(epoch, started)
                except (RuntimeError, ConnectionError, EOFError) as err:
                    if not is_worker_death(err):
                        raise
                    release_dead_loader(err)
                    raise DataWorkerError(
                        f"a data-loading worker process died during epoch {epoch + 1} ({err}); {self._kept()}: "
                        f"continue with `vitkit train --resume {self.run_dir}` (fewer --workers if memory ran short)"
                    ) from err
                if on_epoch_end is not None and self.ctx.is_main:
                    on_epoch_end(record)
        final = self._final_model()
        if self.metrics is not None:
            final.save_pretrained(self.run_dir)
            self.metrics.close()
            from vitkit.explain.report import RUN_PICTURES, write_run_pictures  # the pictures layer, loaded late

            write_run_pictures(final, self.data.val, self.run_dir / RUN_PICTURES)  # logs a failure, never raises
        return self.history, final

    def _train_epoch(self, epoch: int, on_step_end: StepCallback | None) -> None:
        config, loaders = self.config, self.loaders
        first = self.step_in_epoch * config.accum_steps  # micro-batches done before a resume
        total = self.steps_per_epoch * config.accum_steps
        network = self.network
        network.train()
        bar = tqdm(
            total=total * config.batch_size, initial=first * config.batch_size, unit="img", unit_scale=True,
            desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, dynamic_ncols=True,
            disable=None if config.progress and self.ctx.is_main else True,
        )  # fmt: skip
        started = time.perf_counter()
        step_loss = torch.zeros((), device=self.device)
        end = min(total, first + (config.steps - self.step) * config.accum_steps) if config.steps else None
        batches = iter(()) if self._step_limit_reached() else loaders.epoch(epoch, first, end)
        for micro, (images, labels) in enumerate(batches, start=first):
            last_micro = (micro + 1) % config.accum_steps == 0
            step_loss += self._forward_backward(network, images, labels, sync=last_micro)
            bar.update(config.batch_size)
            if not last_micro:
                continue
            loss, lr = self._optimizer_step(epoch, step_loss / config.accum_steps)
            step_loss = torch.zeros((), device=self.device)
            now = time.perf_counter()
            self.seconds += now - started
            started = now
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            if self.metrics is not None:
                self.metrics.log_step(self.step, loss, lr)
            if config.save_every and self.step % config.save_every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self._save_checkpoint()
            if on_step_end is not None:
                on_step_end(epoch, self.step, self.model)
            if distributed.any_process(self.ctrl_c_pressed(), self.ctx, self.device):
                self._stop_after_ctrl_c(epoch)
            if self._step_limit_reached():
                break
        bar.close()

    def _step_limit_reached(self) -> bool:
        return 0 < self.config.steps <= self.step

    def _stop_at_step_limit(self) -> tuple[list[dict[str, Any]], VisionTransformer]:
        """--steps N reached: the checkpoint of step N, and no end-of-run validation, final weights or pictures."""
        if self.saved_step != self.step:
            self._save_checkpoint()
        if self.metrics is not None:
            self.metrics.close()
        logger.info("stopped after %d optimizer step(s) (steps=%d): the checkpoint is in %s; continue with "
                    "`vitkit train --resume %s --steps 0`", self.step, self.config.steps, self.run_dir,
                    self.run_dir)  # fmt: skip
        return self.history, self._final_model()

    def _final_model(self) -> VisionTransformer:
        """The EMA when on, else the weights; a sharded model is gathered whole on rank 0 (one model.safetensors,
        loaded like any run's)."""
        final = self.ema.module if self.ema is not None else self.model
        if self.sharded:
            weights = distributed.full_weights(final)
            if self.ctx.is_main:
                final = VisionTransformer(final.config)
                final.load_state_dict(weights)
        return final

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

    def _forward_backward(self, network: nn.Module, images: Tensor, labels: Tensor, sync: bool) -> Tensor:
        """One micro-batch: loss (label smoothing, soft MixUp/CutMix targets) and gradients; returns the loss."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        targets = labels
        if self.mixer is not None:
            images, targets = self.mixer(images, labels)
        # Gradients are averaged between processes only on the last micro-batch of an optimizer step.
        with distributed.gradient_sync(self.parallel, sync):
            with self.cpu_kernels.forward(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = network(images)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing)
            (loss / self.config.accum_steps).backward()
        loss = loss.detach()
        hard_targets = targets.argmax(dim=1) if targets.ndim == 2 else targets
        correct = (logits.detach().argmax(dim=1) == hard_targets).sum()
        count = labels.shape[0]
        self.sums += torch.stack([loss.double() * count, correct.double(), torch.tensor(count, device=self.device)])
        return loss

    def _optimizer_step(self, epoch: int, loss: Tensor) -> tuple[float, float]:
        """Clip, step, schedule, update the EMA; returns (the step's mean loss, the learning rate it used).

        The loss and the gradient norm reach the host together, in the step's one wait for the device, and a
        non-finite value stops the run before the bad update is applied.
        """
        max_norm = self.config.clip_grad or math.inf  # inf: measure the norm (to catch NaN) without clipping
        grad_norm = distributed.full_tensor(torch.nn.utils.clip_grad_norm_(self.parameters, max_norm, foreach=True))
        loss_value, norm_value = torch.stack([loss.float(), grad_norm.float()]).tolist()
        self._stop_if_non_finite(epoch, loss_value, norm_value)
        lr = self.lr_schedule[self.step]  # the peak rate's; layer decay scales it per group
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        self.step_in_epoch += 1
        return loss_value, lr

    def _stop_if_non_finite(self, epoch: int, loss: float, grad_norm: float) -> None:
        """Raise NonFiniteLossError on every process at once (before the bad update is applied or saved)."""
        bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if not distributed.any_process(bad, self.ctx, self.device):
            return
        where = f"epoch {epoch + 1}, optimizer step {self.step + 1}"
        if not math.isfinite(loss):
            what = f"the loss became {loss}"
        elif not math.isfinite(grad_norm):
            what = f"the gradient norm became {grad_norm}"
        else:
            what = "the loss became non-finite in another process"
        raise NonFiniteLossError(
            f"training stopped: {what} at {where}; {self._kept()}. "
            "Try a lower --lr, a longer --warmup-epochs or --clip-grad, then --resume or start again",
            epoch=epoch + 1,
            step=self.step + 1,
        )

    def _end_epoch(self, epoch: int, started: float) -> dict[str, Any]:
        """Evaluate raw and EMA weights, keep the best weights, write the checkpoint, then report the epoch."""
        loss, correct, count = distributed.all_reduce_sum(self.sums.tolist(), self.ctx, self.device)
        val_loss, val_acc = self._evaluate(self.model)
        candidates: list[tuple[float, str, nn.Module]] = [(val_acc, "model", self.model)]
        ema_val_acc = None
        if self.ema is not None:
            ema_val_acc = self._evaluate(self.ema.module)[1]
            candidates.append((ema_val_acc, "ema", self.ema.module))
        record = {
            "epoch": epoch + 1, "step": self.step, "train_loss": loss / count, "train_acc": correct / count,
            "val_loss": val_loss, "val_acc": val_acc, "ema_val_acc": ema_val_acc, "lr": self.lr_schedule[self.step - 1],
            "images_per_s": count / max(self.seconds, 1e-9), "epoch_time_s": time.perf_counter() - started,
        }  # fmt: skip
        best_acc, source, module = max(candidates, key=lambda candidate: candidate[0])
        if best_acc > self.best_acc:
            self.best_acc = best_acc
            weights = distributed.full_weights(module)  # sharded: every process takes part, rank 0 gets them
            if self.ctx.is_main:
                save_best(self.run_dir, weights, epoch + 1, best_acc, source)
        self.history.append(record)
        self.epoch, self.step_in_epoch, self.sums, self.seconds = epoch + 1, 0, self._zero_sums(), 0.0
        self._save_checkpoint()  # first the checkpoint, then the report: a reported epoch is never lost
        if self.metrics is not None:
            self.metrics.log_epoch(self.history)
        return record

    def _evaluate(self, module: nn.Module) -> tuple[float, float]:
        """(loss, accuracy) on the validation set; each process takes its share, the sums are all-reduced."""
        with self.cpu_kernels.forward():
            sums = tally(module, self.loaders.val(), self.data.num_classes, self.device, k=1, bf16=self.bf16)
        loss, correct, count = distributed.all_reduce_sum(
            torch.stack([sums.loss, sums.correct.double(), sums.count.double()]).tolist(), self.ctx, self.device
        )
        return loss / count, correct / count

    # --- checkpoints ----------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        rng_states = distributed.gather_objects(rng_state(self.device), self.ctx)  # every process's random stream
        sums = distributed.gather_objects(self.sums.cpu(), self.ctx)  # and its share of the epoch's sums
        state = {
            "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch, "best_acc": self.best_acc, "history": self.history,
            "sums": sums, "seconds": self.seconds, "scheduler": self.scheduler.state_dict(),
            "rng": rng_states, "cpu_kernels": self.cpu_kernels.record(self.config.cpu_kernels, self.device),
        }  # fmt: skip
        if self.config.shard_model:  # every process writes its shards
            save_sharded_checkpoint(self.run_dir, self.model, self.optimizer, self.ema, state, self.ctx.is_main)
        elif self.ctx.is_main:
            state["optimizer"] = self.optimizer.state_dict()
            state["ema"] = self.ema.state_dict() if self.ema is not None else None
            save_checkpoint(self.run_dir, self.model.state_dict(), state)
        self.saved_step = self.step

    def _restored_sums(self, saved: Tensor | list[Tensor]) -> Tensor:
        """This process's running sums of the epoch: its own when the process count is unchanged, else rank 0 takes
        them all (they are only ever summed over the processes)."""
        shares = [saved] if isinstance(saved, Tensor) else saved  # one tensor: an older checkpoint, rank 0's alone
        if len(shares) == self.ctx.world_size:
            return shares[self.ctx.rank].to(self.device)
        return torch.stack(shares).sum(dim=0).to(self.device) if self.ctx.is_main else self._zero_sums()

    def _restore(self) -> dict[str, Any] | None:
        """Take the run's state back from its checkpoint; returns the CPU kernels decision it recorded (None in a
        checkpoint written before decisions were recorded)."""
        if self.config.shard_model:
            state = load_sharded_checkpoint(self.run_dir, self.model, self.optimizer, self.ema)
        else:
            weights, state = load_checkpoint(self.run_dir)
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"cannot resume {self.run_dir}: it was trained with {state['steps_per_epoch']} steps per epoch, the "
                f"data and batch size now give {self.steps_per_epoch} (did the data set change?)"
            )
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        self.best_acc, self.history, self.saved_step = state["best_acc"], state["history"], state["step"]
        self.sums, self.seconds = self._restored_sums(state["sums"]), state["seconds"]
        if len(state["rng"]) == self.ctx.world_size:
            set_rng_state(state["rng"][self.ctx.rank], self.device)
        else:
            logger.warning(
                "the checkpoint was written by %d process(es), this run has %d: the data order is kept, but dropout "
                "and mixing draw new random numbers", len(state["rng"]), self.ctx.world_size,
            )  # fmt: skip
            torch.manual_seed(self.config.seed + self.ctx.rank + self.step)
        return state.get("cpu_kernels")
