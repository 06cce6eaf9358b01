"""Fixtures of the serve tests: a tiny served model and its saved folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serve_helpers import CLASSES

from vitkit import VisionTransformer


@pytest.fixture
def served_model(tiny_classifier) -> VisionTransformer:
    """A two-block RGB model on 16x16 images (a 4x4 patch grid), ten named classes, with normalisation statistics.

    Its head is scaled up so that different images get clearly different probabilities (a mix-up shows).
    """
    model = tiny_classifier(CLASSES, 3, image_size=16, depth=2, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
    with torch.no_grad():
        model.head.weight.mul_(40)
    return model.eval()


@pytest.fixture
def run_dir(served_model: VisionTransformer, tmp_path: Path) -> Path:
    return served_model.save_pretrained(tmp_path / "tiny-run")
