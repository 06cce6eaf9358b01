"""Runs that are killed, interrupted, starved of disk or lose a data worker: nothing is lost.

Every faulted run is resumed to the end and compared with one uninterrupted reference run: the final weights,
the checkpoint, the best weights and the metrics are bitwise equal. Between faults, every file of the run folder
that has its final name must be complete (writes go to a temporary file, are flushed, then renamed).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vitkit.io import load_safetensors, write_json
from vitkit.training import TrainConfig, load_train_config, train
from vitkit.training.checkpoint import LAST_STATE, load_checkpoint
from vitkit.training.metrics import read_metrics

# 179 steps of batch 8 on the digits, a checkpoint after every step: a kill quite possibly lands mid-write.
RECIPE = dict(hidden_dim=16, depth=1, num_heads=2, mlp_dim=32, epochs=1, batch_size=8, save_every=1,
              warmup_epochs=0.5, drop_path=0.1, progress=False, tensorboard=False)  # fmt: skip
KILLS = 5


def recipe(out: Path, **changes: object) -> TrainConfig:
    return TrainConfig(**{**RECIPE, "out": str(out), **changes})


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread, as in the forked and spawned children: the same arithmetic, bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every faulted run must end up equal to."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(recipe(tmp_path_factory.mktemp("reference") / "run")).run_dir
    finally:
        torch.set_num_threads(threads)


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s")} for r in history]


def assert_nothing_lost(reference: Path, resumed: Path) -> None:
    for name in ("model.safetensors", "last.safetensors", "best.safetensors"):
        a, b = load_safetensors(reference / name), load_safetensors(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    assert without_timings(read_metrics(reference)) == without_timings(read_metrics(resumed))


def assert_no_half_written_file(run_dir: Path) -> int:
    """Every file with its final name is complete; returns the checkpoint's step (-1: none yet)."""
    for path in run_dir.iterdir():
        if path.suffix == ".safetensors":
            load_safetensors(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    if not (run_dir / LAST_STATE).exists() and not (run_dir / f"{LAST_STATE}.next").exists():
        return -1
    _, state = load_checkpoint(run_dir)
    return state["step"]


def checkpoint_time(run_dir: Path) -> int | None:
    with contextlib.suppress(FileNotFoundError):
        return (run_dir / LAST_STATE).stat().st_mtime_ns
    return None


def resume(run_dir: Path, **changes: object):
    return train(load_train_config(run_dir).replace(resume=str(run_dir), **changes))


def _train_quietly(config: TrainConfig) -> None:
    """The body of a forked child: a real training process, killed from outside."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    train(config)


def test_kill_9_at_random_moments_then_resume_loses_nothing(reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "victim"
    fork = multiprocessing.get_context("fork")  # a real process, without paying for a fresh interpreter
    rng = random.Random(2024)
    steps = []
    for trial in range(KILLS):
        config = recipe(run_dir) if trial == 0 else load_train_config(run_dir).replace(resume=str(run_dir))
        child = fork.Process(target=_train_quietly, args=(config,))
        child.start()
        try:
            previous = checkpoint_time(run_dir)
            deadline = time.monotonic() + 120
            while checkpoint_time(run_dir) == previous:  # wait for a new checkpoint: progress between kills
                assert child.is_alive(), "the training process ended before it was killed"
                assert time.monotonic() < deadline, "no new checkpoint after 120 s"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment: mid-step, mid-write or between the two renames
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
        assert child.exitcode == -signal.SIGKILL
        steps.append(assert_no_half_written_file(run_dir))
        assert not (run_dir / "model.safetensors").exists(), "killed before the end"
    assert steps == sorted(steps) and len(set(steps)) == KILLS, f"each kill at a later step: {steps}"
    resume(run_dir)
    assert_nothing_lost(reference, run_dir)
