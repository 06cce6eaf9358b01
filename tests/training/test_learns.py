"""A short real training run: the recipe must actually learn the digits, not just run."""

from __future__ import annotations

import json

from training_helpers import write_digit_folder

from vitkit.cli import main
from vitkit.training import train


def test_a_short_run_learns_the_digits(tiny) -> None:
    # Without augmentation, so that a few seconds of training are enough (the default run needs a minute).
    no_augmentation = dict(affine_degrees=0, affine_translate=0, affine_scale=0)
    config = tiny(hidden_dim=64, depth=2, num_heads=4, mlp_dim=128, epochs=10, batch_size=32, lr=2e-3,
                  warmup_epochs=1, **no_augmentation)  # fmt: skip
    result = train(config)
    assert result.history[0]["val_acc"] < 0.5  # it starts from scratch...
    assert result.final["val_acc"] >= 0.88  # ...and 10 epochs later classifies about 9 in 10 held-out digits
    assert result.final["ema_val_acc"] >= 0.88
    assert result.final["train_loss"] < result.history[0]["train_loss"] - 0.8


def test_a_short_run_learns_an_image_folder(tmp_path, capsys) -> None:
    """15 epochs of 7 steps, with the fixed defaults (no affine moves, which the folder's recipe would add and which
    105 steps on 120 images do not learn through)."""
    root = write_digit_folder(tmp_path / "images", classes=[0, 1, 7], per_class=40, size=16)
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(root), "--model", "vit_digits", "--image-size", "16", "--patch-size", "4",
            "--epochs", "15", "--batch-size", "16", "--lr", "2e-3", "--warmup-epochs", "1", "--hflip", "0",
            "--crop-scale-min", "1", "--no-auto-recipe", "--no-progress", "--no-tensorboard",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert main(["evaluate", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["num_samples"] == 30 and report["top1"] >= 0.9
