"""Seeing progress: metrics.jsonl and metrics.csv, PNG plots, TensorBoard events, the per-epoch line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from vitkit.cli.train import format_epoch_line
from vitkit.training import train
from vitkit.training.checkpoint import load_checkpoint
from vitkit.training.metrics import FIELDS, read_metrics

pytestmark = pytest.mark.pictures


def test_metric_files_plots_and_tensorboard(tiny) -> None:
    lines: list[str] = []
    config = tiny(epochs=2, tensorboard=True, lr=1e-3, min_lr=1e-5)

    def report(record: dict) -> None:
        # a reported epoch is already in the checkpoint and in metrics.jsonl: a kill now loses nothing reported
        _, state = load_checkpoint(Path(config.out))
        assert state["epoch"] == record["epoch"] and state["history"][-1] == record
        assert read_metrics(Path(config.out))[-1] == record
        lines.append(format_epoch_line(record, config.epochs))

    result = train(config, on_epoch_end=report)
    run = result.run_dir

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records == result.history
    assert [tuple(r) for r in records] == [FIELDS, FIELDS]
    assert [r["epoch"] for r in records] == [1, 2] and [r["step"] for r in records] == [22, 44]
    for r in records:
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1 and 0 <= r["ema_val_acc"] <= 1
        assert r["train_loss"] > 0 and r["val_loss"] > 0 and r["images_per_s"] > 0 and r["epoch_time_s"] > 0
    assert records[-1]["lr"] == pytest.approx(1e-5)  # the cosine ends at min_lr on the last step

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(row["val_acc"]) for row in rows] == [r["val_acc"] for r in records]
    assert tuple(rows[0]) == FIELDS

    for name in ("loss.png", "accuracy.png", "lr.png"):
        with Image.open(run / name) as image:
            assert image.format == "PNG" and image.width > 100
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  loss ")
    for word in ("train acc", "val acc", "ema val acc", "lr 1.00e-05", "img/s"):
        assert word in lines[1]


def test_tensorboard_off_and_warmup_longer_than_the_run(tiny) -> None:
    result = train(tiny(epochs=1, tensorboard=False, warmup_epochs=3, min_lr=1e-5))
    assert not (result.run_dir / "tensorboard").exists()
    assert result.history[-1]["lr"] == pytest.approx(1e-5)  # warm-up capped at half the run: the cosine annealed
    assert (result.run_dir / "train_config.json").is_file() and (result.run_dir / "config.json").is_file()


def test_plots_are_drawn_in_the_background_and_brought_up_to_date_on_close(tmp_path) -> None:
    from vitkit.training.metrics import MetricsLog

    log = MetricsLog(tmp_path, lr_schedule=[1e-3] * 4, completed_steps=0, tensorboard=False)
    record = dict.fromkeys(FIELDS, 0.5)
    history = [{**record, "epoch": 1, "step": 2}]
    log.log_epoch(history)
    log._drawing.result()  # the first epoch is always drawn, in the plotting thread
    first = (tmp_path / "accuracy.png").read_bytes()
    history.append({**record, "epoch": 2, "step": 4, "val_acc": 0.9})
    log.log_epoch(history)
    assert (tmp_path / "accuracy.png").read_bytes() == first  # within PLOT_INTERVAL_S: not redrawn yet
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2  # but the metric files are
    log.close()
    assert (tmp_path / "accuracy.png").read_bytes() != first
