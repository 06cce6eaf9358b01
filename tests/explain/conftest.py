"""A small ViT trained on the digits with a blank border, shared by the explanation tests (about 10 s, once)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from vitkit import VisionTransformer

BORDER = 2  # blank pixels around each 8x8 digit: 12x12 images, a 6x6 grid of 2x2 patches


@dataclass
class Digits:
    """Held-out digits: raw pixels in [0, 1] (B, 1, 12, 12), as the model takes them, and labels."""

    pixels: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor

    def ink(self) -> torch.Tensor:
        """(B, 6, 6): patches with pen strokes (mean intensity above 5%); the rest is blank paper."""
        return F.avg_pool2d(self.pixels, 2).squeeze(1) > 0.05


def tiny_digit_model(seed: int, mean: float, std: float) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(image_size=12, patch_size=2, in_channels=1, num_classes=10, hidden_dim=32, depth=2,
                             num_heads=2, mlp_dim=64, class_names=[str(i) for i in range(10)], mean=(mean,),
                             std=(std,))  # fmt: skip


@pytest.fixture(scope="session")
def digits_and_model() -> tuple[Digits, VisionTransformer, list[VisionTransformer]]:
    """(held-out digits, a model trained on the others, the same architecture with random weights for 8 seeds)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = F.pad(torch.from_numpy(data.images / 16.0).float(), (BORDER,) * 4).unsqueeze(1)
    labels = torch.from_numpy(data.target)
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))
    train, held_out = order[:1400], order[1400:1600]
    mean, std = pixels[train].mean().item(), pixels[train].std().item()
    images = (pixels - mean) / std
    model = tiny_digit_model(0, mean, std)
    steps, lr = 400, 5e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = train[torch.randint(len(train), (64,), generator=generator)]
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    held = Digits(pixels[held_out], images[held_out], labels[held_out])
    randoms = [tiny_digit_model(seed, mean, std).eval() for seed in range(1, 9)]
    return held, model, randoms
