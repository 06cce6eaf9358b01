"""Micro-batching: requests that arrive within a few milliseconds of each other share one forward pass.

A model forward on a batch of 16 costs far less than 16 forwards of one image, so under concurrent load a server
that waits briefly and stacks what arrived answers more requests per second than one that runs each alone.

The queue is bounded: a request that would take it beyond ``max_queue`` items is refused at once with
:class:`QueueFull` (the server answers 503 with Retry-After), so that an overloaded server sheds load instead of
making every client wait. A request can take its room with :meth:`MicroBatcher.admit` before it prepares its
items (decodes its images), so that the bound also covers the work waiting to be prepared. At shutdown the
batcher drains: it stops waiting for batches to fill and finishes every item it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class QueueFull(Exception):
    """The queue cannot take a request's items now; ``retry_after_s`` estimates when it can."""

    def __init__(self, queued: int, wanted: int, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"the server is overloaded: {queued} images are waiting and this request brings {wanted}, "
            f"more than the queue limit of {limit}; retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class MicroBatcher(Generic[Item, Result]):
    """Collect items submitted concurrently and run ``fn`` once per batch, in a worker thread.

    A batch starts with the first waiting item and closes after ``max_wait_ms`` or at ``max_batch`` items, whichever
    comes first; items that arrive while a batch runs form the next one. ``fn`` maps a list of items to a list of
    results of the same length, in order. Batches run one at a time on a single thread, so the event loop keeps
    accepting requests while the model works. ``max_batch=1`` gives one-at-a-time serving with no waiting.
    At most ``max_queue`` items wait (None: no bound), counting those admitted and not yet submitted;
    :meth:`admit` and :meth:`submit` raise :class:`QueueFull` beyond it.

    Call :meth:`start` inside the running event loop (an app's lifespan) and :meth:`stop` at shutdown.
    """

    def __init__(
        self,
        fn: Callable[[list[Item]], Sequence[Result]],
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be at least 1 (or None: no bound), got {max_queue}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.batches = 0  # forwards run so far
        self.items = 0  # items answered so far
        self.last_batch_seconds = 0.0
        self._admitted = 0  # items that have room in the queue and are being prepared
        self._pending: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._running: list[tuple[Item, asyncio.Future[Result]]] = []
        self._wakeup: asyncio.Event | None = None
        self._draining = False
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued(self) -> int:
        """Items waiting for a forward pass, admitted or submitted (not counting the one running)."""
        return len(self._pending) + self._admitted

    def admit(self, count: int) -> None:
        """Take room for ``count`` items that will be submitted once prepared; QueueFull at once when there is none.
        Pass ``admitted=True`` to :meth:`submit` then, or give the room back with :meth:`release`."""
        if self.max_queue is not None and self.queued + count > self.max_queue:
            self._drop_abandoned()
            if self.queued + count > self.max_queue:
                raise QueueFull(self.queued, count, self.max_queue, self._retry_after_s())
        self._admitted += count

    def release(self, count: int) -> None:
        """Give back room taken by :meth:`admit` for items that will not be submitted (their preparation failed)."""
        self._admitted -= count

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("this MicroBatcher is already running")
        self._draining = False
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitkit-batch")
        self._task = asyncio.get_running_loop().create_task(self._run())

    def begin_drain(self) -> None:
        """Stop waiting for batches to fill: from now on every batch runs with what is queued."""
        self._draining = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def stop(self, drain_s: float = 0.0) -> None:
        """Finish the items already accepted, waiting at most ``drain_s`` seconds; then stop, failing what is left
        with a RuntimeError instead of leaving it hanging."""
        task, executor = self._task, self._executor
        if task is None or executor is None:
            return
        self.begin_drain()
        outstanding = [future for _, future in (*self._pending, *self._running)]
        if outstanding and drain_s > 0:
            await asyncio.wait(outstanding, timeout=drain_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        _fail(list(self._pending), RuntimeError("the server is shutting down"))
        self._pending.clear()
        executor.shutdown(wait=True)
        self._task = self._executor = self._wakeup = None

    async def submit(self, items: Sequence[Item], admitted: bool = False) -> list[Result]:
        """Queue ``items`` (one request's images) and wait for their results; they may share batches with others.
        ``admitted``: their room was taken by :meth:`admit`."""
        if self._task is None or self._wakeup is None:
            raise RuntimeError("MicroBatcher.start() has not been called in this event loop")
        if not admitted:
            self.admit(len(items))
        self._admitted -= len(items)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    def _drop_abandoned(self) -> None:
        """Forget queued items whose request gave up waiting (timed out, disconnected)."""
        self._pending = deque(entry for entry in self._pending if not entry[1].done())

    def _retry_after_s(self) -> int:
        """Whole seconds until the queue has room, from the time of the last forward pass (at least 1)."""
        batches_ahead = self.queued / self.max_batch + 1
        return max(1, math.ceil(batches_ahead * self.last_batch_seconds))

    async def _collect(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        wakeup = self._wakeup
        if wakeup is None:
            raise RuntimeError("MicroBatcher.start() has not been called")
        while not self._pending:
            wakeup.clear()
            await wakeup.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(self._pending) < self.max_batch and not self._draining:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(item, future) for item, future in await self._collect() if not future.done()]  # drop cancelled
            if not batch:
                continue
            self._running = batch
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:
                _fail(batch, RuntimeError("the server is shutting down"))
                raise
            except Exception as err:  # one failing batch fails its own requests, not the server
                logger.exception("a batch of %d failed", len(batch))
                _fail(batch, err)
                continue
            finally:
                self._running = []
            self.last_batch_seconds = time.perf_counter() - start
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


def _fail(batch: list[tuple[Item, asyncio.Future[Result]]], err: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(err)
