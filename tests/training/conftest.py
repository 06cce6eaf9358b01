"""Fixtures of the training tests: tiny training runs on the real digits data (a 2-block ViT of width 32)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from training_helpers import DDP_RECIPE, STREAMED, run_process_tree, tiny_config, write_digit_folder

from vitkit.io import write_json
from vitkit.training import TrainConfig


@pytest.fixture
def tiny(tmp_path: Path) -> Callable[..., TrainConfig]:
    """tiny(name="run", **changes) -> a TrainConfig writing to tmp_path/name."""

    def make(name: str = "run", **changes: object) -> TrainConfig:
        return tiny_config(tmp_path / name, **changes)

    return make


@pytest.fixture(autouse=True)
def _no_pictures(request: pytest.FixtureRequest) -> None:
    """The runs of a test here draw no pictures or metric plots unless the test is marked `pictures`."""
    if request.node.get_closest_marker("pictures") is None:
        request.getfixturevalue("no_run_pictures")  # tests/conftest.py


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, its WebDataset shards): 3 classes x 30 training images in shards of 40, 40 and 10 (which do
    not divide evenly between 2 processes), 21 validation images."""
    from vitkit.data.shards import write_shards

    root = tmp_path_factory.mktemp("shards")
    folder = write_digit_folder(root / "folder", [0, 1, 2], per_class=30, size=16)
    write_shards(folder, root / "shards", shard_size=40)
    return folder, root / "shards"


@pytest.fixture(scope="session")
def ddp_out(tmp_path_factory: pytest.TempPathFactory, digit_shards: tuple[Path, Path]) -> Path:
    """The results of ddp_worker.py under `torchrun --nproc_per_node=2` (about 11 s): the one launch of 2 processes
    on one node that test_distributed.py and test_loaders.py share."""
    out = tmp_path_factory.mktemp("ddp")
    write_json(tiny_config(out / "ddp", **DDP_RECIPE).to_dict(), out / "ddp.json")
    uneven = tiny_config(out / "uneven", data_dir=f"{digit_shards[1]}/train-{{000000..000002}}.tar", epochs=1,
                         **STREAMED)  # fmt: skip
    write_json(uneven.to_dict(), out / "uneven.json")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(Path(__file__).with_name("ddp_worker.py")), str(out / "ddp.json"), str(out / "uneven.json"), str(out),
    ]  # fmt: skip
    run_process_tree(command, timeout=300)
    return out
