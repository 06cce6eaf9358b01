"""Helpers of the training tests: tiny configs on the real digits data and weight comparisons."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from vitkit.training import TrainConfig

TINY = dict(hidden_dim=32, depth=2, num_heads=2, mlp_dim=64)
# The runs of test_distributed.py: 2 epochs of 11 optimizer steps (1437 digits, 2 micro-batches of 32 per step).
DDP_RECIPE = dict(epochs=2, batch_size=64, accum_steps=2, drop_path=0.0, dropout=0.0, mixup=0.0, cutmix=0.0)
STREAMED = {"batch_size": 16, "cache": "off", "drop_path": 0.1}  # runs on the shards of `digit_shards`


def tiny_config(out: Path, **changes: object) -> TrainConfig:
    """A fast, quiet config: tiny model, 2 epochs, no progress bar, no TensorBoard (tests that need them say so)."""
    values: dict[str, object] = dict(
        **TINY, epochs=2, batch_size=64, warmup_epochs=0.5, drop_path=0.0, progress=False, tensorboard=False,
        out=str(out),
    )  # fmt: skip
    values.update(changes)
    return TrainConfig.from_dict(values)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    """Bitwise equal when atol is 0, else equal within atol."""
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), f"{key} differs: max |diff| {(a[key] - b[key]).abs().max().item()}"
        else:
            diff = (a[key] - b[key]).abs().max().item()
            assert diff <= atol, f"{key} differs by {diff} > {atol}"


def subprocess_env() -> dict[str, str]:
    """Environment for `python -m vitkit ...` subprocesses: one thread, like the tests themselves."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def without_timings(history: list[dict]) -> list[dict]:
    """Metrics records minus the wall-clock fields, which no two runs share."""
    return [{k: v for k, v in record.items() if k not in ("images_per_s", "epoch_time_s")} for record in history]


def without_pictures() -> None:
    """In this worker process, as the `no_run_pictures` fixture (tests/conftest.py) does in the tests' own: runs end
    without their pictures and metric plots, whose drawing by rank 0 would keep the other processes waiting."""
    from vitkit.explain import report
    from vitkit.training.metrics import MetricsLog

    report.write_run_pictures = lambda *args, **kwargs: None
    MetricsLog._plot = lambda *args: None  # type: ignore[method-assign]


def write_digit_folder(root: Path, classes: list[int], per_class: int, size: int) -> Path:
    """An ImageFolder (root/train/<class>/, root/val/<class>/) of real digits, upscaled to size x size PNGs.

    Classes are named by word ("zero", ...) so they differ from the digits data set's "0".."9".
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    digits = load_digits()
    for label in classes:
        images = digits.images[digits.target == label][: per_class + per_class // 4]
        for i, pixels in enumerate(images):
            split = "train" if i < per_class else "val"
            path = root / split / names[label] / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray((pixels * 255 / 16).astype("uint8"), "L").resize((size, size), Image.BILINEAR)
            image.save(path)
    return root


@contextlib.contextmanager
def started_process_trees(
    commands: list[list[str]], envs: list[dict[str, str]] | None = None, stdout: int | None = None
) -> Iterator[list[subprocess.Popen]]:
    """Start commands side by side, each of which may start processes of its own (torchrun), their standard output
    going to ``stdout`` (subprocess.PIPE: read by the caller); when the block ends, however it ends, none of their
    processes survives."""
    envs = envs or [subprocess_env()] * len(commands)
    processes = [
        subprocess.Popen(command, env=env, stdout=stdout, start_new_session=True)
        for command, env in zip(commands, envs, strict=True)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


def wait_for_success(processes: list[subprocess.Popen], timeout: float) -> None:
    """Wait for every process (all within ``timeout`` seconds); raise if one failed."""
    deadline = time.monotonic() + timeout
    for process in processes:
        returncode = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        if returncode != 0:
            raise subprocess.CalledProcessError(returncode, process.args)


def run_process_tree(command: list[str], timeout: float) -> None:
    """Run a command that starts processes of its own (torchrun); on timeout or failure, none of them survives."""
    with started_process_trees([command]) as processes:
        wait_for_success(processes, timeout)
