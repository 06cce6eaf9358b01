"""TrainConfig: config files (TOML, YAML, JSON), flags that override them, validation, resume precedence, and the
nested model (ViTConfig) and augmentation (AugmentConfig) settings whose flags are generated."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from vitkit.cli.train_flags import add_train_arguments, config_from_args
from vitkit.data import AugmentConfig, default_augment
from vitkit.io import read_json, write_json
from vitkit.model import ViTConfig
from vitkit.training import TrainConfig, read_config_file
from vitkit.training.config import DATA_DECIDED


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
    assert config.augment == {"auto_augment": "randaugment"}
    assert config.augmentation().auto_augment == "randaugment"
    assert config.tensorboard is False
    assert config.batch_size == TrainConfig().batch_size  # neither file nor flag: default
    assert parse("--config", str(path), "--tensorboard").tensorboard is True


def test_yaml_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nbatch_size: 32\nmixup: 1\ndrop-path: 0.2\nimage_size: 16\n")
    config = parse("--config", str(path), "--epochs", "9", "--image-size", "16x24")
    assert (config.epochs, config.batch_size, config.vit["drop_path"]) == (9, 32, 0.2)
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
        ('cpu_kernels = "fast"', r"cpu_kernels='fast' is invalid: expected one of \['auto', 'on', 'off'\]"),
        ("lr = true", "lr must be a number"),
        ("label_smoothing = 1.5", "label_smoothing=1.5 is invalid"),
        ("nproc = 2", "nproc is not a training setting: the command line starts the processes"),
        ('pool = "max"', "vit.pool='max' is invalid"),
        ("depth = 2.5", "vit.depth must be an integer"),
        ("[augment]\nhflip = 2", "AugmentConfig.hflip=2.0 is invalid"),
        ("[vit]\nwidth = 3", r"unknown vit setting\(s\) \['width'\]"),
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
    (tmp_path / "bad.yaml").write_text("epochs: [2\nlr: 0.1\n")
    with pytest.raises(ValueError, match="could not be parsed") as caught:
        read_config_file(tmp_path / "bad.yaml")
    assert "\n" not in str(caught.value) and "bad.yaml" in str(caught.value)
    (tmp_path / "x.ini").write_text("[a]\n")
    with pytest.raises(ValueError, match="unknown extension"):
        read_config_file(tmp_path / "x.ini")


def test_data_dir_means_folder() -> None:
    assert TrainConfig(data_dir="somewhere").dataset == "folder"


def test_every_setting_has_a_flag() -> None:
    """Flags are generated: every TrainConfig field (but ``recipe``, what auto_recipe chose, recorded), every
    ViTConfig field the data does not decide, every augmentation setting."""
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("vit", "augment", "recipe")]
    names += [f.name for f in dataclasses.fields(ViTConfig) if f.name not in DATA_DECIDED]
    names += [f.name for f in dataclasses.fields(AugmentConfig)]
    for name in names:
        assert "--" + name.replace("_", "-") in flags, name


def test_architecture_flags_reach_the_model_and_the_saved_config(tmp_path: Path) -> None:
    from vitkit.training import train

    config = parse(
        "--pos-embed", "sincos", "--pool", "mean", "--no-class-token", "--no-qkv-bias", "--attention-dropout", "0.1",
        "--hidden-dim", "32", "--depth", "1", "--num-heads", "2", "--mlp-dim", "32", "--patch-size", "4",
        "--hflip", "0.5", "--epochs", "1", "--no-progress", "--no-tensorboard", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    expected = dict(pos_embed="sincos", pool="mean", class_token=False, qkv_bias=False, attention_dropout=0.1)
    assert config.vit == {**expected, "drop_path": 0.1, "hidden_dim": 32, "depth": 1, "num_heads": 2,
                          "mlp_dim": 32, "patch_size": (4, 4)}  # fmt: skip
    result = train(config)
    model_config = result.model.config
    assert {key: getattr(model_config, key) for key in expected} == expected
    weights = result.model.state_dict()
    assert "blocks.0.attn.q.weight" in weights and "blocks.0.attn.q.bias" not in weights  # no q/k/v biases
    assert "cls_token" not in weights and "pos_embed" in dict(result.model.named_buffers())  # sin-cos: fixed
    saved = read_json(result.run_dir / "train_config.json")
    assert saved["vit"]["pos_embed"] == "sincos" and saved["vit"]["class_token"] is False
    # The augmentation actually used: the digits' default with the typed flip, every setting written out.
    assert saved["augment"] == {**dataclasses.asdict(default_augment("digits")), "hflip": 0.5}
    assert read_json(result.run_dir / "config.json")["pool"] == "mean"


def test_nested_and_flat_files_mean_the_same(tmp_path: Path) -> None:
    nested, flat = tmp_path / "nested.toml", tmp_path / "flat.yaml"
    nested.write_text('epochs = 3\n[vit]\ndepth = 2\npos-embed = "sincos"\n[augment]\nhflip = 0.5\n')
    flat.write_text("epochs: 3\ndepth: 2\npos_embed: sincos\nhflip: 0.5\n")
    assert TrainConfig.from_file(nested) == TrainConfig.from_file(flat)
    assert TrainConfig.from_file(nested).vit == {"drop_path": 0.1, "depth": 2, "pos_embed": "sincos"}
    # flags merge into the file's nested settings key by key
    config = parse("--config", str(nested), "--depth", "3", "--no-class-token", "--pool", "mean")
    assert config.vit == {"drop_path": 0.1, "depth": 3, "pos_embed": "sincos", "class_token": False, "pool": "mean"}


def test_round_trip_through_dict() -> None:
    config = TrainConfig.from_dict(dict(image_size=28, patch_size=(4, 2), lr=0.5, mixup=0.2, hflip=0.5))
    assert config.vit["patch_size"] == (4, 2) and config.augment == {"hflip": 0.5}
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.replace(depth=3).vit == {**config.vit, "depth": 3}


def test_resume_starts_from_the_saved_config(tmp_path: Path) -> None:
    saved = TrainConfig(epochs=3, lr=0.004, seed=5, out=str(tmp_path))
    write_json(saved.to_dict(), tmp_path / "train_config.json")
    config = parse("--resume", str(tmp_path), "--epochs", "6")
    assert (config.lr, config.seed, config.epochs, config.resume) == (0.004, 5, 6, str(tmp_path))


def test_default_run_folder_is_named_after_data_and_model(tmp_path) -> None:
    from vitkit import VisionTransformer
    from vitkit.training import prepare_config

    assert Path(prepare_config(TrainConfig()).out).name.startswith("digits-vit_digits_stem-")
    source = VisionTransformer(image_size=8, patch_size=4, hidden_dim=8, depth=1, num_heads=1, mlp_dim=8)
    source.save_pretrained(tmp_path)  # fine-tuning reads the source's architecture when the run is prepared
    assert Path(prepare_config(TrainConfig(init_from=str(tmp_path))).out).name.startswith("digits-finetuned-")
    assert prepare_config(TrainConfig(name="mine")).out == str(Path("runs") / "mine")


def test_a_run_without_out_or_model_is_named_after_the_default_model(tmp_path, monkeypatch) -> None:
    from training_helpers import TINY

    from vitkit.training import TrainConfig, train

    monkeypatch.chdir(tmp_path)
    result = train(TrainConfig.from_dict(dict(**TINY, epochs=1, progress=False, tensorboard=False)))
    assert result.run_dir.parent == Path("runs") and result.run_dir.name.startswith("digits-vit_digits_stem-")


def test_the_default_lr_is_ten_times_lower_from_trained_weights_but_not_from_a_masked_autoencoder(
    tmp_path: Path,
) -> None:
    """1e-3 from random weights; 1e-4 from trained ones; 1e-3 from a `vitkit pretrain` run folder (the folder or its
    weights file), whose encoder MAE fine-tunes with the recipe of training from scratch."""
    trained, pretrained = tmp_path / "trained", tmp_path / "mae"
    for folder in (trained, pretrained):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
    write_json({"mae": {}, "history": []}, pretrained / "pretrain.json")
    assert TrainConfig().lr == 1e-3
    assert (
        TrainConfig(init_from=str(trained)).lr == TrainConfig(init_from=str(trained / "model.safetensors")).lr == 1e-4
    )
    assert TrainConfig(init_from=str(pretrained)).lr == 1e-3
    assert TrainConfig(init_from=str(pretrained / "model.safetensors")).lr == 1e-3
    assert TrainConfig(init_from=str(pretrained), lr=5e-4).lr == 5e-4  # a given lr wins
