"""Checkpoint files: atomic writes, the weights/state pair kept consistent, weights-only loading, and sharded
checkpoint folders replaced whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import vitkit.io
from vitkit.training import checkpoint
from vitkit.training.checkpoint import (
    LAST_STATE,
    LAST_WEIGHTS,
    SHARDED_CHECKPOINT,
    checkpoint_step,
    load_checkpoint,
    load_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)


def pair(value: float) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    return {"w": torch.full((3,), value)}, {"step": int(value), "rng": [{"cpu": torch.get_rng_state(), "cuda": None}]}


def test_round_trip(tmp_path: Path) -> None:
    weights, state = pair(1.0)
    save_checkpoint(tmp_path, weights, state)
    loaded_weights, loaded_state = load_checkpoint(tmp_path)
    assert torch.equal(loaded_weights["w"], weights["w"]) and loaded_state["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST_WEIGHTS, LAST_STATE]


@pytest.mark.parametrize("failing", ["torch.save", "save_file"])
def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch, failing: str) -> None:
    save_checkpoint(tmp_path, *pair(1.0))

    def half_write_then_fail(obj: object, path: object, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    if failing == "torch.save":
        monkeypatch.setattr(torch, "save", half_write_then_fail)
    else:
        monkeypatch.setattr(vitkit.io, "save_file", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, *pair(2.0))
    weights, state = load_checkpoint(tmp_path)
    assert weights["w"][0].item() == 1.0 and state["step"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary files left behind


def test_a_kill_between_the_two_renames_still_resumes(tmp_path: Path, monkeypatch) -> None:
    """Weights already replaced, state not yet renamed into place: the pending state file is the matching one."""
    save_checkpoint(tmp_path, *pair(1.0))
    real_replace = os.replace

    def killed_before_state_rename(src: object, dst: object) -> None:
        if Path(dst).name == LAST_STATE:
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_state_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, *pair(2.0))
    monkeypatch.setattr(os, "replace", real_replace)
    weights, state = load_checkpoint(tmp_path)
    assert weights["w"][0].item() == 2.0 and state["step"] == 2


def test_mismatched_files_are_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a", *pair(1.0))
    save_checkpoint(tmp_path / "b", *pair(2.0))
    (tmp_path / "a" / LAST_STATE).write_bytes((tmp_path / "b" / LAST_STATE).read_bytes())
    with pytest.raises(ValueError, match="does not belong to"):
        load_checkpoint(tmp_path / "a")


def test_state_files_load_without_executing_code(tmp_path: Path) -> None:
    """last_state.pt is read with weights_only=True: a pickle that would run code is rejected."""
    save_checkpoint(tmp_path, *pair(1.0))
    torch.save({"checkpoint_id": "x", "evil": os.system}, tmp_path / LAST_STATE)
    with pytest.raises(
        ValueError, match="is not a readable vitkit training state.*(Weights only load failed|Unsupported global)"
    ):
        load_checkpoint(tmp_path)


def sharded_save(run_dir: Path, value: float) -> None:
    """A sharded checkpoint of one process (a plain module), whose weights and step are ``value``."""
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    optimizer = torch.optim.AdamW(model.parameters())
    save_sharded_checkpoint(run_dir, model, optimizer, None, {"step": int(value)}, is_main=True)


def sharded_load(run_dir: Path) -> tuple[float, int]:
    """(a weight, the step) of the sharded checkpoint that loading picks."""
    model = torch.nn.Linear(3, 2)
    state = load_sharded_checkpoint(run_dir, model, torch.optim.AdamW(model.parameters()), None)
    return model.weight[0, 0].item(), state["step"]


def test_a_sharded_checkpoint_is_replaced_whole_whenever_the_writer_dies(tmp_path: Path, monkeypatch) -> None:
    sharded_save(tmp_path, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SHARDED_CHECKPOINT]
    # killed while the next one is written: it has no training state yet, the current one stands
    (tmp_path / f"{SHARDED_CHECKPOINT}.next").mkdir()
    (tmp_path / f"{SHARDED_CHECKPOINT}.next" / "__0_0.distcp").write_bytes(b"half")
    assert checkpoint_step(tmp_path) == 1 and sharded_load(tmp_path) == (1.0, 1)
    sharded_save(tmp_path, 2.0)  # clears the unfinished one
    assert sorted(p.name for p in tmp_path.iterdir()) == [SHARDED_CHECKPOINT] and sharded_load(tmp_path) == (2.0, 2)

    # killed between the renames: the current one moved aside, the complete next one not yet in place
    def die_before_the_second_rename(source: object, target: object) -> None:
        if Path(source).name == f"{SHARDED_CHECKPOINT}.next":
            raise KeyboardInterrupt
        os.rename(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", die_before_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        sharded_save(tmp_path, 3.0)
    monkeypatch.undo()
    assert not (tmp_path / SHARDED_CHECKPOINT).exists()
    assert checkpoint_step(tmp_path) == 3 and sharded_load(tmp_path) == (3.0, 3)
    sharded_save(tmp_path, 4.0)  # puts the pending one in place first, then replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == [SHARDED_CHECKPOINT] and sharded_load(tmp_path) == (4.0, 4)


def test_checkpoint_step_reads_the_step_without_loading_the_state(tmp_path: Path, monkeypatch) -> None:
    assert checkpoint_step(tmp_path) is None
    save_checkpoint(tmp_path, *pair(7.0))
    monkeypatch.setattr(checkpoint, "load_checkpoint", None)  # the step comes from the weights' header
    assert checkpoint_step(tmp_path) == 7
