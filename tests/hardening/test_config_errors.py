"""User mistakes in configs and flags: ValueError (or a one-line CLI error) naming the key, never anything else.

Property-based: hypothesis draws valid model configs and input shapes (the model builds and gives the right output
shape) and arbitrary values for every field (a ValueError with a message, or a model that works).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitkit import VisionTransformer, ViTConfig, cli
from vitkit.training import TrainConfig

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_configs(draw: st.DrawFn) -> tuple[ViTConfig, int]:
    """A small valid ViTConfig and a batch size."""
    patch = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    grid = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pos_embed = draw(st.sampled_from(["learned", "sincos"]))
    heads = draw(st.integers(1, 3))
    hidden = heads * draw(st.integers(1, 3)) * (4 if pos_embed == "sincos" else 1)
    class_token = draw(st.booleans())
    pool = draw(st.sampled_from(["cls", "mean"])) if class_token else "mean"
    channels = draw(st.integers(1, 4))
    num_classes = draw(st.integers(0, 5))
    config = ViTConfig(
        image_size=(patch[0] * grid[0], patch[1] * grid[1]), patch_size=patch, in_channels=channels,
        num_classes=num_classes, hidden_dim=hidden, depth=draw(st.integers(1, 2)), num_heads=heads,
        mlp_dim=draw(st.integers(1, 8)), pos_embed=pos_embed, pool=pool, class_token=class_token,
        dropout=draw(st.floats(0, 0.9)), drop_path=draw(st.floats(0, 0.9)), qkv_bias=draw(st.booleans()),
        class_names=[f"c{i}" for i in range(num_classes)] if draw(st.booleans()) else None,
        mean=(0.5,) * channels if draw(st.booleans()) else None,
    )  # fmt: skip
    return config, draw(st.integers(1, 3))


@FAST
@given(valid_configs())
def test_a_valid_config_builds_and_runs_forward_with_the_right_output_shape(drawn: tuple[ViTConfig, int]) -> None:
    config, batch = drawn
    model = VisionTransformer(config).eval()
    images = torch.randn(batch, config.in_channels, *config.image_size)
    out = model(images)
    assert out.shape == (batch, config.num_classes or config.hidden_dim)
    assert torch.isfinite(out).all()
    assert ViTConfig.from_dict(config.to_dict()) == config, "config.json round trip"


@FAST
@given(valid_configs(), st.integers(0, 5), st.integers(1, 40), st.integers(1, 40))
def test_a_wrong_input_shape_is_a_value_error_naming_it(
    drawn: tuple[ViTConfig, int], channels: int, height: int, width: int
) -> None:
    config, batch = drawn
    if (channels, height, width) == (config.in_channels, *config.image_size):
        return
    with pytest.raises(ValueError, match="expected"):
        VisionTransformer(config)(torch.randn(batch, channels, height, width))


ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.lists(st.integers(-2, 20), max_size=3), st.tuples(st.floats(-1, 2), st.floats(-1, 2)),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)  # fmt: skip
FIELDS = [f.name for f in dataclasses.fields(ViTConfig)]
SMALL = dict(image_size=8, patch_size=4, in_channels=1, num_classes=2, hidden_dim=8, depth=1, num_heads=2, mlp_dim=8)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE, min_size=1, max_size=3))
def test_any_wrong_value_is_a_value_error_with_a_message_never_another_exception(changes: dict) -> None:
    try:
        config = ViTConfig(**{**SMALL, **changes})
    except ValueError as err:
        assert str(err) and any(name in str(err) for name in changes), str(err)
        return
    # Accepted: then it must really work.
    out = VisionTransformer(config).eval()(torch.randn(1, config.in_channels, *config.image_size))
    assert out.shape[0] == 1 and torch.isfinite(out).all()
    assert ViTConfig.from_dict(config.to_dict()) == config


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(TrainConfig)]), ANY_VALUE, max_size=3))
def test_any_wrong_training_setting_is_a_value_error_naming_it(changes: dict) -> None:
    try:
        TrainConfig.from_dict(changes)
    except ValueError as err:
        assert str(err) and "\n" not in str(err)
        assert any(f.name in str(err) for f in dataclasses.fields(TrainConfig)), str(err)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(image_size=8, patch_size=16), r"patch_size \(16, 16\), the patch is larger than the image.*such as 16"),
        (dict(num_heads=0), r"num_heads must be a positive int, got 0"),
        (dict(hidden_dim=10, num_heads=4), "hidden_dim 10 is not divisible by num_heads 4"),
        (dict(pos_embed="rope"), r"pos_embed must be one of \('learned', 'sincos'\), got 'rope'"),
        (dict(dropout="0.1"), "dropout must be in \\[0, 1\\), got '0.1'"),
        (dict(layer_norm_eps=math.nan), "layer_norm_eps must be a positive number, got nan"),
        (dict(qkv_bias="yes"), "qkv_bias must be true or false, got 'yes'"),
        (dict(class_names="ab"), "class_names must be a list of names"),
        (dict(mean=0.5), "mean must be a list of numbers, one per channel"),
    ],
)
def test_impossible_model_values_name_the_key_and_what_is_allowed(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ViTConfig(**{**SMALL, **changes})


def test_config_file_keys_and_types_are_checked() -> None:
    with pytest.raises(ValueError, match=r"unknown ViT config keys \['hiden_dim'\]; expected some of \[.*'hidden_dim'"):
        ViTConfig.from_dict({**SMALL, "hiden_dim": 8})
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['learning_rate'\]; known settings: .*'lr'"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="epochs must be an integer, got '10'"):
        TrainConfig.from_dict({"epochs": "10"})
    with pytest.raises(ValueError, match=r"lr=-0.1 is invalid: expected a number > 0"):
        TrainConfig.from_dict({"lr": -0.1})


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--lr", "-1"], ["lr=-1.0 is invalid", "> 0"]),
        (["--num-heads", "0"], ["num_heads must be a positive int, got 0"]),
        (["--patch-size", "16"], ["patch_size", "larger than the image"]),
        (["--epochs", "ten"], ["--epochs", "invalid int value: 'ten'"]),
        (["--model", "vit_nonexistent"], ["vit_nonexistent", "vit_digits"]),
        (["--learning-rate", "0.1"], ["unrecognized arguments: --learning-rate"]),
    ],
    ids=["negative-lr", "zero-heads", "patch-larger-than-image", "wrong-type", "unknown-model", "unknown-flag"],
)
def test_cli_mistakes_are_one_line_errors_not_tracebacks(argv: list[str], words: list[str], tmp_path, capsys) -> None:
    try:
        code = cli.main(["train", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run"), *argv])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("vitkit"), lines
    assert all(word in lines[0] for word in words), lines[0]
    assert not (tmp_path / "run" / "last.safetensors").exists()
