"""TrainConfig: config files (TOML, YAML, JSON), flags that override them, validation, resume precedence."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from vitkit.data import AugmentConfig
from vitkit.io import write_json
from vitkit.training import TrainConfig, add_train_arguments, config_from_args, read_config_file


def parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_defaults_without_flags() -> None:
    config = parse()
    assert config == TrainConfig()
    assert config.dataset == "digits"


def test_toml_file_values_and_flag_precedence(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('epochs = 5\nlr = 0.01\nimage-size = [8, 8]\nauto_augment = "randaugment"\ntensorboard = false\n')
    config = parse("--config", str(path), "--lr", "0.02")
    assert config.lr == 0.02  # typed flag beats the file
    assert config.epochs == 5  # file beats the default
    assert config.image_size == (8, 8)
    assert config.auto_augment == "randaugment"
    assert config.tensorboard is False
    assert config.batch_size == TrainConfig().batch_size  # neither file nor flag: default
    assert parse("--config", str(path), "--tensorboard").tensorboard is True


def test_yaml_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nbatch_size: 32\nmixup: 1\ndrop-path: 0.2\nimage_size: 16\n")
    config = parse("--config", str(path), "--epochs", "9", "--image-size", "16x24")
    assert (config.epochs, config.batch_size, config.drop_path) == (9, 32, 0.2)
    assert config.mixup == 1.0 and isinstance(config.mixup, float)
    assert config.image_size == (16, 24)
    assert TrainConfig.from_file(path).image_size == (16, 16)


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("epochs = 2\nlearning_rate = 0.1\nbatchsize = 3\n")
    with pytest.raises(ValueError, match=r"\['batchsize', 'learning_rate'\]"):
        read_config_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs = 0", "epochs=0 is invalid"),
        ('amp = "fp16"', "amp='fp16' is invalid"),
        ("lr = true", "lr must be a number"),
        ("label_smoothing = 1.5", "label_smoothing=1.5 is invalid"),
        ("batch_size = 7\nnproc = 2", "batch_size 7 does not split evenly between 2 processes"),
        ('dataset = "cifar10"', "needs data_dir"),
        ("epochs = 2.5", "epochs must be an integer"),
    ],
)
def test_invalid_values_are_explained(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_file(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_config_file(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("epochs = = 2\n")
    with pytest.raises(ValueError, match="could not be parsed"):
        read_config_file(tmp_path / "bad.toml")
    (tmp_path / "x.ini").write_text("[a]\n")
    with pytest.raises(ValueError, match="unknown extension"):
        read_config_file(tmp_path / "x.ini")


def test_data_dir_means_folder() -> None:
    assert TrainConfig(data_dir="somewhere").dataset == "folder"


def test_every_field_has_a_flag_and_every_augmentation_a_field() -> None:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in flags
    assert {f.name for f in dataclasses.fields(AugmentConfig)} <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_round_trip_through_dict() -> None:
    config = TrainConfig(image_size=28, patch_size=(4, 2), lr=0.5, mixup=0.2)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_resume_starts_from_the_saved_config(tmp_path: Path) -> None:
    saved = TrainConfig(epochs=3, lr=0.004, seed=5, out=str(tmp_path))
    write_json(saved.to_dict(), tmp_path / "train_config.json")
    config = parse("--resume", str(tmp_path), "--epochs", "6")
    assert (config.lr, config.seed, config.epochs, config.resume) == (0.004, 5, 6, str(tmp_path))


def test_default_run_folder_is_named_after_data_and_model(tmp_path) -> None:
    from vitkit.training import TrainConfig
    from vitkit.training.trainer import resolve_run_dir

    assert resolve_run_dir(TrainConfig(model="vit_digits")).name.startswith("digits-vit_digits-")
    assert resolve_run_dir(TrainConfig(init_from=str(tmp_path))).name.startswith("digits-finetuned-")
    assert resolve_run_dir(TrainConfig(name="mine")) == Path("runs") / "mine"


def test_a_run_without_out_or_model_is_named_after_the_default_model(tmp_path, monkeypatch) -> None:
    from training_helpers import TINY

    from vitkit.training import TrainConfig, train

    monkeypatch.chdir(tmp_path)
    result = train(TrainConfig(**TINY, epochs=1, progress=False, tensorboard=False))
    assert result.run_dir.parent == Path("runs") and result.run_dir.name.startswith("digits-vit_digits-")
