"""Fixtures shared across the test folders."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from vitkit import VisionTransformer


@pytest.fixture
def tiny_classifier() -> Callable[..., VisionTransformer]:
    """tiny_classifier(names, channels=1, **overrides): a seeded one-block ViT on 8x8 images, for fast tests."""

    def make(names: list[str], channels: int = 1, **overrides: object) -> VisionTransformer:
        torch.manual_seed(0)
        options: dict[str, object] = dict(
            image_size=8, patch_size=4, in_channels=channels, num_classes=len(names), hidden_dim=16, depth=1,
            num_heads=2, mlp_dim=32, class_names=names,
        )  # fmt: skip
        return VisionTransformer(**{**options, **overrides})

    return make
