"""The recipe chosen from an image folder: the rules, flags and config-file values winning over it, photo folders
left as they were, and train_config.json recording the choice for a resumed run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from training_helpers import write_digit_folder

from vitkit import cli
from vitkit.cli.train_flags import add_train_arguments, config_from_args, given_settings
from vitkit.data import default_augment
from vitkit.io import read_json
from vitkit.model import get_config
from vitkit.training import TrainConfig, prepare_config
from vitkit.training.config import DEFAULT_MODEL
from vitkit.training.folder_recipe import FolderFacts, apply_recipe, choose_recipe, folder_facts, settings_given
from vitkit.training.run import check_run_dir

GLYPH_AUGMENT = dict(crop_scale_min=1.0, hflip=0.0, affine_degrees=10.0, affine_translate=0.1, affine_scale=0.1)


def cli_config(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    return apply_recipe(config_from_args(args), given_settings(args))[0]


def test_small_grey_images_get_glyph_settings_and_a_4x4_patch_grid() -> None:
    recipe = choose_recipe(FolderFacts(channels=1, side=28, images=7000, classes=10))
    # 7000 images in batches of 64: 109 steps an epoch; 6500 steps take ceil(59.6) = 60 epochs.
    assert recipe == {"model": "vit_digits", "image_size": (28, 28), "patch_size": (7, 7), "drop_path": 0.0,
                      "epochs": 60, **GLYPH_AUGMENT}  # fmt: skip
    # The same number of steps whatever the folder's size: 8000 images (125 steps an epoch) train ceil(52.0) = 52
    # epochs, and a larger batch takes fewer steps an epoch, so more epochs: 7000 / 128 -> 54 steps, ceil(120.4).
    assert choose_recipe(FolderFacts(channels=1, side=28, images=8000, classes=10))["epochs"] == 52
    assert choose_recipe(FolderFacts(channels=1, side=28, images=7000, classes=10), batch_size=128)["epochs"] == 121
    # At 28 px the rule builds the registry's vit_pico_patch7_28; on 8x8 images, vit_digits itself (2x2 patches).
    assert get_config(recipe["model"], image_size=28, patch_size=7) == get_config("vit_pico_patch7_28")
    eight = choose_recipe(FolderFacts(channels=1, side=8, images=1437, classes=10))
    assert eight["patch_size"] == get_config("vit_digits").patch_size and eight["image_size"] == (8, 8)
    # A side no 4 divides is resized to the nearest grid of whole patches: 30 px -> 4 patches of 8 (round(7.5)).
    odd = choose_recipe(FolderFacts(channels=1, side=30, images=500, classes=3))
    assert odd["image_size"] == (32, 32) and odd["patch_size"] == (8, 8)
    built = get_config(odd["model"], image_size=odd["image_size"], patch_size=odd["patch_size"])
    assert built.grid_size == (4, 4)
    # Epochs follow the folder's size, within bounds: 100 images (1 step an epoch) -> 200; 70,000 -> 20 (not 6).
    assert choose_recipe(FolderFacts(1, 28, 100, 10))["epochs"] == 200
    assert choose_recipe(FolderFacts(1, 28, 70_000, 10))["epochs"] == 20


@pytest.mark.parametrize("facts", [FolderFacts(3, 224, 5000, 10), FolderFacts(3, 32, 50_000, 10),
                                   FolderFacts(1, 256, 800, 2)])  # fmt: skip
def test_photos_and_large_grey_images_keep_the_defaults(facts: FolderFacts) -> None:
    assert choose_recipe(facts) == {}


def grey_folder(root: Path) -> Path:
    return write_digit_folder(root, classes=[0, 1, 7], per_class=12, size=16)


def test_the_command_line_takes_the_folders_recipe_but_every_flag_and_file_value_wins(tmp_path: Path) -> None:
    folder = grey_folder(tmp_path / "digits")
    assert folder_facts(folder) == FolderFacts(channels=1, side=16, images=36, classes=3)
    chosen = cli_config("--data-dir", str(folder))
    assert chosen.model == "vit_digits" and chosen.image_size == (16, 16) and chosen.vit["patch_size"] == (4, 4)
    assert chosen.vit["drop_path"] == 0.0
    assert chosen.epochs == 200 and chosen.augment == GLYPH_AUGMENT  # 36 images: one step an epoch
    settings = tmp_path / "settings.yaml"
    settings.write_text("epochs: 40\naffine_degrees: 0\n")  # 40 is also the default: typed, it still wins
    typed = cli_config("--data-dir", str(folder), "--config", str(settings), "--hflip", "0.5", "--patch-size", "2")
    assert typed.epochs == 40 and typed.augment["affine_degrees"] == 0 and typed.augment["hflip"] == 0.5
    assert typed.vit["patch_size"] == (2, 2) and typed.image_size is None  # the data's size, for the patches given
    assert typed.recipe == {"crop_scale_min": 1.0, "affine_translate": 0.1, "affine_scale": 0.1}
    # A named model keeps its geometry; an image size given is the one the patches are chosen for.
    named = cli_config("--data-dir", str(folder), "--model", "vit_pico_patch7_28")
    assert named.model == "vit_pico_patch7_28" and "patch_size" not in named.vit and named.image_size is None
    assert named.vit["drop_path"] == 0.1  # the recipe's default stochastic depth, as for any named model
    assert named.epochs == 200 and named.augment == GLYPH_AUGMENT
    resized = cli_config("--data-dir", str(folder), "--image-size", "32")
    assert resized.image_size == (32, 32) and resized.vit["patch_size"] == (8, 8)
    off = cli_config("--data-dir", str(folder), "--no-auto-recipe")
    assert off.recipe is None and off.model is None and off.epochs == 40 and off.augment == {}


def test_a_photo_folder_trains_as_before(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        for i in range(3):
            path = tmp_path / "photos" / "train" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    before = TrainConfig(data_dir=str(tmp_path / "photos"))
    after = cli_config("--data-dir", str(tmp_path / "photos"))
    assert after.recipe == {} and after.replace(recipe=None) == before
    assert after.augmentation() == default_augment("folder") and after.model_name == DEFAULT_MODEL


def test_the_run_prints_and_records_the_recipe_and_a_resumed_run_keeps_it(tmp_path: Path, capsys) -> None:
    folder, run_dir = grey_folder(tmp_path / "digits"), tmp_path / "run"
    tiny = dict(epochs=3, hidden_dim=16, depth=1, num_heads=2, mlp_dim=16, batch_size=16)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in tiny.items()]
    code = cli.main(["train", "--data-dir", str(folder), *flags, "--steps", "1", "--no-progress", "--no-tensorboard",
                     "--out", str(run_dir)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and f"recipe for {folder} (36 images of 3 classes, 16 px, 1 channel(s))" in printed
    assert "--model vit_digits --image-size 16x16 --patch-size 4x4 --drop-path 0 --crop-scale-min 1" in printed
    saved = read_json(run_dir / "train_config.json")
    assert saved["recipe"] == {"model": "vit_digits", "image_size": [16, 16], "patch_size": [4, 4],
                               "drop_path": 0.0, **GLYPH_AUGMENT}  # fmt: skip
    assert saved["epochs"] == 3 and saved["vit"]["patch_size"] == [4, 4] and saved["augment"]["hflip"] == 0.0
    # Resumed from code with only its folder and what it was given: the recorded recipe fills in the rest.
    config = TrainConfig.from_dict(dict(data_dir=str(folder), resume=str(run_dir), progress=False, **tiny))
    assert settings_given(config) >= set(tiny) and "patch_size" not in settings_given(config)
    resumed = prepare_config(config)
    assert resumed.recipe == saved["recipe"] and resumed.vit["patch_size"] == (4, 4)
    check_run_dir(resumed)  # no setting differs from the interrupted run's
