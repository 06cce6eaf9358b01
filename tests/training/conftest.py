"""Fixtures of the training tests: tiny training runs on the real digits data (a 2-block ViT of width 32)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config

from vitkit.training import TrainConfig


@pytest.fixture
def tiny(tmp_path: Path) -> Callable[..., TrainConfig]:
    """tiny(name="run", **changes) -> a TrainConfig writing to tmp_path/name."""

    def make(name: str = "run", **changes: object) -> TrainConfig:
        return tiny_config(tmp_path / name, **changes)

    return make


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Train on one CPU thread: the tiny models gain nothing from more, runs stay fast when other processes load the
    machine, and subprocess runs (started with OMP_NUM_THREADS=1) compute exactly what in-process runs compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
