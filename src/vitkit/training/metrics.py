"""What a run reports: metrics.jsonl and metrics.csv, PNG plots, TensorBoard events (written by rank 0 only)."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitkit.io import atomic_path

if TYPE_CHECKING:  # matplotlib loads when the first plot is drawn, not when training starts
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
FIELDS = (
    "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "lr", "images_per_s",
    "epoch_time_s",
)  # fmt: skip
_MAX_PLOT_POINTS = 2000
# Drawing the PNGs with matplotlib takes long next to a short epoch: they are drawn in a background thread (off the
# training loop's path), at most once per this many seconds, and brought up to date when the log closes.
PLOT_INTERVAL_S = 10.0


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (empty when there is none yet)."""
    path = run_dir / METRICS_JSONL
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricsLog:
    """Rewrites the metric files and plots from the run's history (kept in its checkpoints) after every epoch.

    Rewriting (atomically) rather than appending means a resumed run simply drops the epochs it redoes.
    The plots follow in a background thread at most every PLOT_INTERVAL_S seconds and are brought up to date by
    ``close``.
    """

    def __init__(
        self, run_dir: Path, *, lr_schedule: Sequence[float], completed_steps: int, tensorboard: bool,
        train_loss_label: str = "train (with label smoothing / mixing)",
    ) -> None:  # fmt: skip
        self.run_dir = run_dir
        self.train_loss_label = train_loss_label
        self.lr_schedule = lr_schedule
        self.history: list[dict[str, Any]] = []
        self.writer = _summary_writer(run_dir / "tensorboard", completed_steps) if tensorboard else None
        self._plotter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitkit-plots")
        self._drawing: Future | None = None
        self._plotted_at: float | None = None
        self._plotted_epochs = 0

    def log_step(self, step: int, loss: float, lr: float) -> None:
        """Per-step scalars for TensorBoard (the files and plots are per epoch)."""
        if self.writer is not None:
            self.writer.add_scalar("train/loss_step", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        """Report the epochs of ``history``, its last one new."""
        self.history = list(history)
        record = history[-1]
        with atomic_path(self.run_dir / METRICS_JSONL) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history), encoding="utf-8")
        with atomic_path(self.run_dir / METRICS_CSV) as tmp:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.history)
            tmp.write_text(buffer.getvalue(), encoding="utf-8")
        due = self._plotted_at is None or time.monotonic() - self._plotted_at >= PLOT_INTERVAL_S
        if due and (self._drawing is None or self._drawing.done()):
            self._plotted_at, self._plotted_epochs = time.monotonic(), len(self.history)
            self._drawing = self._plotter.submit(self._plot, self.history)
        if self.writer is not None:
            for key in FIELDS[2:]:
                if record.get(key) is not None and key != "lr":
                    self.writer.add_scalar(f"epoch/{key}", record[key], record["step"])
            self.writer.flush()

    def close(self) -> None:
        """Wait for the plots, drawing the last epochs if the background thread has not."""
        if self._drawing is not None:
            self._drawing.result()  # an error in drawing surfaces here
        self._plotter.shutdown()
        if self._plotted_epochs < len(self.history):
            self._plot(self.history)
        if self.writer is not None:
            self.writer.close()

    def _plot(self, history: list[dict[str, Any]]) -> None:
        steps_done = history[-1]["step"]

        def series(ax: Any, key: str, label: str, scale: float = 1.0) -> None:
            points = [(r["epoch"], r[key] * scale) for r in history if r.get(key) is not None]
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot(epochs, values, marker="o", markersize=3, label=label)

        fig, ax = _figure("loss", "epoch", "loss")
        series(ax, "train_loss", self.train_loss_label)
        series(ax, "val_loss", "validation")
        _save(fig, ax, self.run_dir / "loss.png")

        if any(r.get("val_acc") is not None for r in history):  # a pre-training run has none
            fig, ax = _figure("accuracy", "epoch", "accuracy (%)")
            series(ax, "train_acc", "train", 100)
            series(ax, "val_acc", "validation", 100)
            series(ax, "ema_val_acc", "validation, EMA weights", 100)
            _save(fig, ax, self.run_dir / "accuracy.png")

        fig, ax = _figure("learning rate", "optimizer step", "learning rate")
        stride = max(1, len(self.lr_schedule) // _MAX_PLOT_POINTS)
        steps = range(0, len(self.lr_schedule), stride)
        ax.plot(steps, [self.lr_schedule[s] for s in steps], color="0.7", linestyle="--", label="schedule")
        done = [s for s in steps if s < steps_done]
        ax.plot(done, [self.lr_schedule[s] for s in done], color="C0", label="done")
        _save(fig, ax, self.run_dir / "lr.png")


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot): no global state and no GUI backend, only the Agg canvas savefig needs.
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig: Figure, ax: Any, path: Path) -> None:
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _summary_writer(log_dir: Path, completed_steps: int) -> Any:
    """A TensorBoard SummaryWriter, or None when tensorboard is not installed (it is an optional extra).

    ``purge_step`` drops events a crashed run logged after its last checkpoint, which the resumed run logs again.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: no TensorBoard event files (pip install 'vitkit[tensorboard]')")
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=completed_steps or None)
