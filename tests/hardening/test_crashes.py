"""Runs that are killed, interrupted, starved of disk or lose a data worker: nothing is lost.

Every faulted run is resumed to the end and compared with one uninterrupted reference run: the final weights,
the checkpoint, the best weights and the metrics are bitwise equal. Between faults, every file of the run folder
that has its final name must be complete (writes go to a temporary file, are flushed, then renamed).
"""

from __future__ import annotations

import errno
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import torch

from vitkit.io import load_safetensors, write_json
from vitkit.training import TrainConfig, load_train_config, train
from vitkit.training.checkpoint import LAST_STATE, load_checkpoint
from vitkit.training.metrics import read_metrics

# 179 steps of batch 8 on the digits, a checkpoint after every step: a kill quite possibly lands mid-write.
RECIPE = dict(hidden_dim=16, depth=1, num_heads=2, mlp_dim=32, epochs=1, batch_size=8, save_every=1,
              warmup_epochs=0.5, drop_path=0.1, progress=False, tensorboard=False,
              cache="off")  # fmt: skip  # DataLoader workers that can die (cached data needs none)
KILLS = 5
CTRL_C_STEP = 5


def recipe(out: Path, **changes: object) -> TrainConfig:
    return TrainConfig.from_dict({**RECIPE, "out": str(out), **changes})


pytestmark = pytest.mark.usefixtures("no_run_pictures")  # tests/conftest.py


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every faulted run must end up equal to. Checkpoints do not change what a run computes,
    so it writes none but the end of its epoch's (as do the faulted runs once resumed for the last time)."""
    return train(recipe(tmp_path_factory.mktemp("reference") / "run", save_every=0)).run_dir


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


def resume(run_dir: Path, **changes: object):
    return train(load_train_config(run_dir).replace(resume=str(run_dir), **changes))


def resume_to_the_end(run_dir: Path, **changes: object) -> None:
    """Resume to the end of the run, without the checkpoint of every step (the reference has none either)."""
    resume(run_dir, save_every=0, **changes)


def _train_quietly(config: TrainConfig, steps: Connection) -> None:
    """The body of a forked child: a real training process, killed from outside; sends each finished step (its
    checkpoint written: save_every=1) through ``steps``."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    train(config, on_step_end=lambda epoch, step, model: steps.send(step))


def test_kill_9_at_random_moments_then_resume_loses_nothing(reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "victim"
    fork = multiprocessing.get_context("fork")  # a real process, without paying for a fresh interpreter
    rng = random.Random(2024)
    steps = []
    for trial in range(KILLS):
        config = recipe(run_dir) if trial == 0 else load_train_config(run_dir).replace(resume=str(run_dir))
        finished, sender = fork.Pipe(duplex=False)
        child = fork.Process(target=_train_quietly, args=(config, sender))
        child.start()
        sender.close()
        try:
            # a new checkpoint (progress between kills), or the child's end
            ready = multiprocessing.connection.wait([finished, child.sentinel])
            assert finished in ready, "the training process ended before its first checkpoint"
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment: mid-step, mid-write or between the two renames
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
        assert child.exitcode == -signal.SIGKILL
        steps.append(assert_no_half_written_file(run_dir))
        assert not (run_dir / "model.safetensors").exists(), "killed before the end"
    assert steps == sorted(steps) and len(set(steps)) == KILLS, f"each kill at a later step: {steps}"
    resume_to_the_end(run_dir)
    assert_nothing_lost(reference, run_dir)


@pytest.mark.parametrize("write", ["weights", "state"])
def test_a_full_disk_while_saving_is_a_clear_error_and_the_previous_checkpoint_survives(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    import vitkit.io

    target, name = (vitkit.io, "save_file") if write == "weights" else (torch, "save")
    real = getattr(target, name)
    calls = []

    def fills_the_disk_on_call_30(obj: object, path: object, *args: object, **kwargs: object) -> None:
        calls.append(path)
        if len(calls) == 30:
            Path(path).write_bytes(b"the first bytes of a file that did not fit")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(obj, path, *args, **kwargs)

    monkeypatch.setattr(target, name, fills_the_disk_on_call_30)
    run_dir = tmp_path / "full_disk"
    with pytest.raises(OSError, match=r"No space left on device.*previous checkpoint .*intact.*--resume") as info:
        train(recipe(run_dir))
    assert info.value.errno == errno.ENOSPC and str(run_dir) in str(info.value)
    monkeypatch.undo()
    assert assert_no_half_written_file(run_dir) == 29, "the checkpoint before the full disk"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"
    resume_to_the_end(run_dir)
    assert_nothing_lost(reference, run_dir)


def _train_on_the_command_line(argv: list[str], output: Path, pause: Connection) -> None:
    """The body of a forked child: `vitkit ARGV` as the command line runs it, its output written to ``output``.
    After optimizer step CTRL_C_STEP it says so through ``pause`` and waits for the answer: the test presses Ctrl-C
    meanwhile, so that the signal lands at a known step and the run never ends before it."""
    from vitkit import cli, training

    def wait_at_the_step(epoch: int, step: int, model: torch.nn.Module) -> None:
        if step == CTRL_C_STEP:
            pause.send(step)
            pause.recv()

    real_train = training.train
    training.train = lambda config, **kwargs: real_train(config, on_step_end=wait_at_the_step, **kwargs)
    with output.open("w") as sys.stderr:
        sys.stdout = sys.stderr
        sys.exit(cli.main(argv))


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(reference: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    config_file = tmp_path / "recipe.json"
    write_json(recipe(run_dir, save_every=0).to_dict(), config_file)  # the only checkpoint is Ctrl-C's
    output = tmp_path / "output.txt"
    fork = multiprocessing.get_context("fork")  # a real process, without paying for a fresh interpreter
    pause, child_end = fork.Pipe()
    child = fork.Process(target=_train_on_the_command_line, args=(["train", "--config", str(config_file)], output,
                                                                  child_end))  # fmt: skip
    child.start()
    child_end.close()
    try:
        ready = multiprocessing.connection.wait([pause, child.sentinel])  # the step is done, or the child ended
        assert pause in ready, f"the run ended before step {CTRL_C_STEP}: {output.read_text()}"
        assert pause.recv() == CTRL_C_STEP
        os.kill(child.pid, signal.SIGINT)
        pause.send("go on")
        child.join(timeout=120)  # a hang guard
    finally:
        if child.exitcode is None:
            child.kill()
            child.join()
    err = output.read_text()
    assert child.exitcode == 130, err
    assert "Traceback" not in err and f"vitkit train --resume {run_dir}" in err, err
    assert f"after step {CTRL_C_STEP}" in err, err  # the checkpoint was written at the interruption
    assert assert_no_half_written_file(run_dir) == CTRL_C_STEP
    assert not (run_dir / "model.safetensors").exists()
    resume(run_dir)
    assert_nothing_lost(reference, run_dir)


def kill_data_workers_at(step: int) -> Callable[[int, int, torch.nn.Module], None]:
    def on_step_end(epoch: int, done: int, model: torch.nn.Module) -> None:
        if done == step:
            workers = multiprocessing.active_children()
            assert workers, "the data loader runs worker processes"
            for worker in workers:
                os.kill(worker.pid, signal.SIGKILL)

    return on_step_end


def test_a_data_worker_that_dies_is_a_clear_error_and_the_checkpoint_stays_usable(
    reference: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "worker_died"
    with pytest.raises(RuntimeError, match=r"data-loading worker .*died.*checkpoint .*step \d+.*--resume") as info:
        train(recipe(run_dir, workers=1), on_step_end=kill_data_workers_at(40))
    assert str(run_dir) in str(info.value)
    del info  # its traceback keeps the data loader alive, and PyTorch would report the dead worker again
    gc.collect()
    assert assert_no_half_written_file(run_dir) >= 40
    resume_to_the_end(run_dir, workers=0)
    assert_nothing_lost(reference, run_dir)
