"""Fixtures of the training tests: tiny training runs on the real digits data (a 2-block ViT of width 32)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from training_helpers import tiny_config

from vitkit.training import TrainConfig


@pytest.fixture
def tiny(tmp_path: Path) -> Callable[..., TrainConfig]:
    """tiny(name="run", **changes) -> a TrainConfig writing to tmp_path/name."""

    def make(name: str = "run", **changes: object) -> TrainConfig:
        return tiny_config(tmp_path / name, **changes)

    return make


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every test here runs on one CPU thread (the fixture in tests/conftest.py)."""
