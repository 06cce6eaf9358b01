"""Stopping a run without losing it: Ctrl-C waits for the end of the step and saves a checkpoint, and a data
worker that dies is reported as what it is, with the checkpoint to resume from."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
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
