"""Stopping a run without losing it: Ctrl-C waits for the end of the step and saves a checkpoint, and a data
worker that dies is reported as what it is, with the checkpoint to resume from."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from types import FrameType

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after saving a checkpoint; the message says how to resume it."""


class DataWorkerError(RuntimeError):
    """A data-loading worker process died (killed, out of memory); the last checkpoint is kept."""


@contextlib.contextmanager
def stop_on_ctrl_c() -> Iterator[Callable[[], bool]]:
    """Yield ``requested()``: true once Ctrl-C (SIGINT) was pressed, so the loop can stop at a step boundary, where
    a checkpoint is consistent. A second Ctrl-C stops at once. Outside the main thread signals cannot be caught, and
    ``requested()`` stays false."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> None:
        if requested.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        requested.set()
        logger.warning("Ctrl-C: stopping after this step with a checkpoint (press Ctrl-C again to stop at once)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def is_worker_death(err: BaseException) -> bool:
    """Whether PyTorch's DataLoader raised ``err`` because one of its worker processes died.

    PyTorch has no exception type of its own for this: its SIGCHLD handler and its result queue raise a RuntimeError
    "DataLoader worker (pid ...) ...", and a worker that dies while sending a batch breaks the connection
    (ConnectionError, EOFError) under the main process.
    """
    return (
        isinstance(err, (ConnectionError, EOFError))
        or isinstance(err, RuntimeError)
        and "DataLoader worker" in str(err)
    )


def release_dead_loader(err: BaseException) -> None:
    """Clear the finished frames of ``err``'s traceback (a worker's death), and with them the data-loader iterator
    they hold, so that PyTorch shuts the iterator's workers down and forgets their pids. Until then its SIGCHLD
    handler raises the death again, wherever the main thread is: the clear error that follows would be replaced
    by the raw one. A death raised again meanwhile is the same one, and absorbed."""
    while True:
        try:
            traceback.clear_frames(err.__traceback__)
            gc.collect()
            return
        except RuntimeError as again:
            if not is_worker_death(again):
                raise
