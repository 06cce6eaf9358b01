"""Bad sizes and inputs are ValueErrors that give the numbers."""

import pytest
import torch

from vitkit import VisionTransformer, ViTConfig
from vitkit.model.config import to_pair

SMALL = dict(image_size=8, patch_size=2, in_channels=1, num_classes=3, hidden_dim=32, depth=1, num_heads=4, mlp_dim=64)


def test_image_size_must_divide_by_patch_size():
    with pytest.raises(ValueError, match=r"image height 30 is not divisible by patch height 16.*such as 16 or 32"):
        ViTConfig(image_size=30, patch_size=16)
    with pytest.raises(ValueError, match=r"image width 20 is not divisible by patch width 8.*16 or 24"):
        ViTConfig(image_size=(16, 20), patch_size=8)
    with pytest.raises(ValueError, match="such as 16 or 32"):
        VisionTransformer(image_size=10, patch_size=16)


def test_hidden_dim_must_divide_by_num_heads():
    with pytest.raises(ValueError, match="hidden_dim 100 is not divisible by num_heads 3"):
        ViTConfig(hidden_dim=100, num_heads=3)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(pos_embed="rotary"), "pos_embed must be one of"),
        (dict(pool="max"), "pool must be one of"),
        (dict(pool="cls", class_token=False), "needs class_token=True"),
        (dict(depth=0), "depth must be a positive int"),
        (dict(image_size=(8, 8, 8)), r"image_size must be a positive int or a \(height, width\) pair"),
        (dict(patch_size=0), "patch_size must be a positive int"),
        (dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
        (dict(num_classes=-1), "num_classes must be an int >= 0"),
        (dict(class_names=["a", "b"]), "class_names has 2 names but num_classes is 3"),
        (dict(mean=[0.5, 0.5, 0.5]), "mean has 3 values but in_channels is 1"),
        (dict(std=[0.0]), "std must be positive"),
        (dict(pos_embed="sincos", hidden_dim=18, num_heads=3), "needs hidden_dim divisible by 4"),
    ],
)
def test_bad_config_values(changes, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**{**SMALL, **changes})


def test_input_channels_and_size_are_checked():
    model = VisionTransformer(**SMALL)
    with pytest.raises(ValueError, match="expected 1 input channels, got 3"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected images of size 8x8 \(height x width\), got 16x8"):
        model(torch.randn(1, 1, 16, 8))
    with pytest.raises(
        ValueError, match=r"expected images of shape \(batch, channels, height, width\), got \(1, 8, 8\)"
    ):
        model(torch.randn(1, 8, 8))
    with pytest.raises(ValueError, match="expected 1 input channels"):
        model.get_attention_maps(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("bad", [0, -3, (8,), (8, 0), 8.0, True, (8, True), "88", (8, 8, 8)])
def test_sizes_must_be_a_positive_int_or_pair(bad):
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        to_pair(bad, "image_size")
    assert to_pair(8, "image_size") == (8, 8) and to_pair([8, 12], "image_size") == (8, 12)
