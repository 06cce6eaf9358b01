"""A tiny ViT trained for a few seconds on the real 8x8 digits: what the inexact options must agree with."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from vitkit import VisionTransformer


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, 8, 8) images, standardised (mean 0.3, std 0.4 on the [0, 1] scale), and labels."""
    data = load_digits()
    return (torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0 - 0.3) / 0.4, torch.tensor(data.target)


@pytest.fixture(scope="session")
def trained_digits_model(digits: tuple[torch.Tensor, torch.Tensor]) -> VisionTransformer:
    """Two blocks of width 32 on 17 tokens, trained with AdamW for 8 epochs (about 80% accuracy; 3 s of CPU)."""
    images, labels = digits
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=8, patch_size=2, in_channels=1, num_classes=10, hidden_dim=32, depth=2, num_heads=2, mlp_dim=64
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        for batch in torch.randperm(len(images), generator=generator).split(32):
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
