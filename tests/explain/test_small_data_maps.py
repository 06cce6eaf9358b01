"""Explaining models that use the options for small data sets: what each map means for them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitkit import VisionTransformer
from vitkit.explain import attention_rollout, embedding_filters
from vitkit.explain.maps import _pixel_filters
from vitkit.explain.report import explain_images


def small_model(channels: int, **options: object) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=8, patch_size=(4, 2), in_channels=channels, num_classes=3, hidden_dim=16,
                             depth=2, num_heads=2, mlp_dim=32, **options)  # fmt: skip


def test_shifted_patch_filters_are_one_filter_over_a_window_twice_the_patch() -> None:
    """What a token's projection computes from the (normalised) patches of the five views equals one filter over
    the 8x4 pixel window around the patch, read from the zero-padded image."""
    model = small_model(2, patch_embed="shifted").eval()
    torch.nn.init.normal_(model.patch_embed.norm.weight)  # a LayerNorm gain that is not 1 must be in the filters
    embed = model.patch_embed
    images = torch.randn(1, 2, 8, 8)
    filters = _pixel_filters(model)
    assert filters.shape == (16, 2, 8, 4)
    padded = F.pad(images, (1, 1, 2, 2))[0].double()  # half a patch (2 rows, 1 column) of zeros around
    views = embed.shifted_views(images)[0].double()
    for row, col in ((0, 0), (1, 3)):
        stacked = views[:, 4 * row : 4 * row + 4, 2 * col : 2 * col + 2].flatten()
        projected = (embed.proj.weight * embed.norm.weight).double() @ stacked
        window = padded[:, 4 * row : 4 * row + 8, 2 * col : 2 * col + 4]
        torch.testing.assert_close((filters * window).sum(dim=(1, 2, 3)), projected)
    assert embedding_filters(model, 5).shape == (5, 2, 8, 4)


def test_a_conv_stem_has_no_pixel_filters_and_the_report_leaves_them_out(tmp_path: Path) -> None:
    model = small_model(3, conv_stem=1, locality_attention=True, pool="seq", class_token=False)
    with pytest.raises(ValueError, match=r"convolutional stem \(conv_stem=1\), not from pixels"):
        embedding_filters(model, 4)
    images = torch.rand(2, 3, 8, 8)
    maps = attention_rollout(model, images)  # sequence pooling: rolled out from the mean of the patch tokens
    assert maps.shape == (2, 2, 4)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2))
    explain_images(model, images[:1], ["a.png"], tmp_path)
    written = {path.name for path in tmp_path.glob("*.png")}
    assert "position-similarity.png" in written and "embedding-filters.png" not in written
