"""Peak memory of a model, each measured in a fresh child process of its own.

The child builds the model, then runs the batch (each batch size in turn, smallest first, the peak reset before
each); the figure is its peak resident memory minus its memory after importing torch, vitkit and the model's
library. glibc's pooling of large blocks is turned off in the child only (:func:`unpooled_malloc`), so that the
figure follows the live tensors; the process that asks for the figures keeps its allocator as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import logging
import multiprocessing
import os
import resource
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
UNPOOLED_BYTES = 128 * 1024  # glibc's initial mmap threshold
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"  # PyTorch's switch, which the `vitkit` command turns on


def memory_kib() -> tuple[int, int]:
    """This process's (resident, peak resident) memory in KiB: /proc/self/status on Linux, else getrusage's peak."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
        return peak, peak


def _glibc(function: str, *args: int) -> None:
    """Call one of glibc's malloc tuning functions; elsewhere (not glibc) do nothing."""
    with contextlib.suppress(OSError, AttributeError):
        getattr(ctypes.CDLL("libc.so.6"), function)(*args)


def unpooled_malloc() -> None:
    """From now on glibc serves every block of 128 KiB or more straight from the system and gives it back when freed
    (a fixed mmap threshold; elsewhere a no-op), so that resident memory follows the live tensors. For the
    measuring child processes only: it changes the whole process's allocator.

    By default the threshold grows with the blocks freed (up to 32 MiB) and freed heap memory stays resident, so a
    peak depends on the order of past allocations and varies by hundreds of MiB between fresh processes running the
    same step; with blocks unpooled it is the same from one process to the next.
    """
    _glibc("mallopt", M_MMAP_THRESHOLD, UNPOOLED_BYTES)


def _reset_peak() -> None:
    """Hand freed memory back to the system (glibc's malloc_trim), then set the recorded peak resident memory
    (VmHWM) to the current one (Linux >= 4.0; elsewhere a no-op)."""
    gc.collect()
    _glibc("malloc_trim", 0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        logger.debug("cannot reset the peak resident memory: it counts from the process start")


@dataclass(frozen=True)
class MemoryTask:
    """What one child process measures: a model (or, with ``train``, a :data:`TRAINERS` row) at each batch size."""

    label: str
    name: str
    image_size: int
    batch_sizes: tuple[int, ...]
    threads: int
    train: bool


def _peak_memory_child(task: MemoryTask) -> dict[int, float] | None:
    """In a fresh process: import, build, run each batch once; report (peak RSS - RSS after imports) in MiB each.

    Before each batch (smallest first) freed memory is handed back and the peak reset: the figure is the running
    model's, with its weights, not building's own passing peak (an ONNX export, ``optimize``'s copy) or the
    allocator's leftovers from it. Blocks of 128 KiB and more are unpooled (:func:`unpooled_malloc`): the figure is
    what the model's tensors need, the same from run to run, not what glibc's heap happened to keep.
    Not getrusage's ru_maxrss on Linux: a spawned child starts with its parent's peak (the kernel keeps the
    forked copy's peak across exec), so under a parent bigger than the model every child reported 0. VmHWM
    is the child's own address space's peak.
    """
    from vitkit.bench.peers import LIBRARY_MODULES, TRAINERS, build, training_step  # the models' libraries

    unpooled_malloc()
    torch.set_num_threads(task.threads)
    recipe = TRAINERS[task.label] if task.train else None
    model_label = recipe.model if recipe is not None else task.label
    if model_label in LIBRARY_MODULES:
        with contextlib.suppress(ImportError):  # build() logs it and gives None
            importlib.import_module(LIBRARY_MODULES[model_label])
    before, _ = memory_kib()
    model = build(model_label, task.name, task.image_size)
    if model is None:
        return None
    peaks = {}
    for batch_size in sorted(task.batch_sizes):
        _reset_peak()
        images = torch.randn(batch_size, 3, task.image_size, task.image_size)
        if recipe is not None:  # two steps: from the second on, AdamW's state and the last gradients are held
            step = training_step(model.train(), recipe.optimizer(model), images, forward_context=recipe.forward_context)
            step()
            step()
        else:
            with torch.inference_mode():
                model(images)
        del images
        peaks[batch_size] = (memory_kib()[1] - before) / 1024
    return peaks


def peak_memories_mib(
    labels: list[str],
    name: str,
    image_size: int,
    batch_sizes: list[int],
    threads: int,
    train: bool = False,
    processes: int = 2,
) -> dict[str, list[float | None]]:
    """Peak memory of each of ``labels`` running each batch (or, with ``train``, two training steps of each of
    :data:`TRAINERS`' labels), in MiB, above its imports.

    Each label gets one fresh process (a pool of one worker, which works before Python 3.11's
    ``max_tasks_per_child`` too) that builds the model and runs the batches, smallest first, the peak reset before
    each: each figure is about the memory that a process running only that batch needs once the model is built.
    ``processes`` of them run at a time (a process's peak is its own, and nothing is timed meanwhile).
    """
    context = multiprocessing.get_context("spawn")
    peaks: dict[str, dict[int, float] | None] = {}
    with _children_without_huge_pages():
        for start in range(0, len(labels), processes):
            group = labels[start : start + processes]
            pools = [ProcessPoolExecutor(1, mp_context=context) for _ in group]
            try:
                futures = {
                    label: pool.submit(
                        _peak_memory_child, MemoryTask(label, name, image_size, tuple(batch_sizes), threads, train)
                    )
                    for label, pool in zip(group, pools)
                }
                peaks.update({label: future.result() for label, future in futures.items()})
            finally:
                for pool in pools:
                    pool.shutdown()
    return {label: [None if p is None else p[b] for b in batch_sizes] for label, p in peaks.items()}


@contextlib.contextmanager
def _children_without_huge_pages() -> Iterator[None]:
    """Processes started meanwhile run with PyTorch's huge pages off: 2 MiB-aligned blocks bypass glibc's pool and
    round sizes up, so a child's figure would count blocks, not the tensors (this process's setting stays)."""
    before = os.environ.get(HUGE_PAGES_ENV)
    os.environ[HUGE_PAGES_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[HUGE_PAGES_ENV]
        else:
            os.environ[HUGE_PAGES_ENV] = before
