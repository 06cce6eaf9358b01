"""What a new run decides before training and says about it: the image size (the named model's, else the data's),
the images whole batches leave out of small folders, and no run folder left by a run that could not start."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit import VisionTransformer, cli
from vitkit.io import read_json

TINY_FLAGS = ("--depth", "1", "--hidden-dim", "16", "--num-heads", "2", "--mlp-dim", "16", "--no-progress",
              "--no-tensorboard")  # fmt: skip


def photo_folder(root: Path, per_class: int, size: tuple[int, int]) -> Path:
    """root/train/<class>/*.png: two classes of noisy colour photos of (width, height) ``size``."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            path = root / "train" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size[1], size[0], 3)) // 2 + 100 * c
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def test_a_named_model_trains_at_its_size_and_small_folders_hear_about_unused_images(
    tmp_path: Path, caplog, capsys
) -> None:
    # 2 classes x 60 photos of 41x37 (a median side no 4x4 patch divides); 10 % held out: 108 training images.
    photos = photo_folder(tmp_path / "photos", per_class=60, size=(41, 37))
    caplog.set_level(logging.INFO)
    code = cli.main(["train", "--data-dir", str(photos), "--model", "vit_nano_patch4_32", "--epochs", "1",
                     *TINY_FLAGS, "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert VisionTransformer.from_pretrained(tmp_path / "run").image_size == (32, 32)
    assert read_json(tmp_path / "run" / "train_config.json")["image_size"] == [32, 32]
    said = caplog.text
    assert "image size 32x32: that of vit_nano_patch4_32" in said
    # 108 images at the default batch of 64: one step, 44 images left out; a batch of 54 (= 108 / 2) leaves none.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("108 training images" in w and "leave 44 images" in w and "--batch-size 54" in w for w in warnings)


def test_the_datas_size_is_explained_and_a_run_that_cannot_start_leaves_no_folder(tmp_path: Path, capsys) -> None:
    photos = photo_folder(tmp_path / "photos", per_class=10, size=(9, 11))  # median shorter side 9, odd
    code = cli.main(["train", "--data-dir", str(photos), "--epochs", "1", *TINY_FLAGS, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    # The default model's 2x2 patches do not divide 9: the message names the size's origin and the flag to pass.
    assert code == 2 and "median shorter side" in err and "--image-size 8x8" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("processes", [1])
def test_no_warning_when_whole_batches_use_every_image(tmp_path: Path, caplog, processes: int) -> None:
    from vitkit.training.config import TrainConfig
    from vitkit.training.run import _warn_unused_images

    caplog.set_level(logging.WARNING)
    config = TrainConfig(batch_size=54, epochs=1)
    _warn_unused_images(108, 2, config, processes)
    assert not caplog.records
    _warn_unused_images(108, 1, config.replace(batch_size=100), processes)  # 8 of 108 left out: 7 %
    assert "--batch-size 54" in caplog.text


@pytest.mark.parametrize("keep", [True, False])
def test_fine_tuning_records_the_sources_architecture_and_keeps_its_preprocessing_unless_told(
    tmp_path: Path, keep: bool
) -> None:
    from vitkit.training import TrainConfig, prepare_config

    VisionTransformer(image_size=(12, 16), patch_size=4, hidden_dim=8, depth=3, num_heads=2, mlp_dim=24,
                      interpolation="bicubic", crop_pct=0.9).save_pretrained(tmp_path / "source")  # fmt: skip
    config = prepare_config(TrainConfig(init_from=str(tmp_path / "source"), keep_preprocessing=keep, out=str(tmp_path)))
    assert config.model is None and config.image_size == (12, 16) and config.lr == 1e-4
    assert {key: config.vit[key] for key in ("hidden_dim", "depth", "num_heads", "mlp_dim")} == dict(
        hidden_dim=8, depth=3, num_heads=2, mlp_dim=24
    )
    assert config.vit["drop_path"] == 0.1  # the recipe's, not the source's 0
    kept = {key: config.vit.get(key) for key in ("interpolation", "crop_pct", "crop_mode")}
    assert kept == (
        {"interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center"} if keep else dict.fromkeys(kept)
    )
    assert prepare_config(config) == config  # resolved once: the processes torchrun starts resolve the same
