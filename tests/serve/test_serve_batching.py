"""MicroBatcher: concurrent submissions share batches, each gets its own result, failures stay contained."""

from __future__ import annotations

import asyncio
import time

import pytest

from vitkit.serve import MicroBatcher


def run_clients(batcher: MicroBatcher, requests: list[list[int]]) -> list[list[int]]:
    """Submit every request concurrently from its own task and return the answers in request order."""

    async def main() -> list[list[int]]:
        batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(items) for items in requests)))
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    sizes: list[int] = []

    def square(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.01)  # a forward pass takes time; requests arriving meanwhile form the next batch
        return [x * x for x in items]

    batcher = MicroBatcher(square, max_batch=8, max_wait_ms=20)
    requests = [[i] for i in range(30)] + [[100, 101, 102]]  # one request with several items
    answers = run_clients(batcher, requests)

    assert answers == [[x * x for x in items] for items in requests]
    assert sum(sizes) == 33 and max(sizes) <= 8
    assert len(sizes) < 33 / 2, f"requests should have been batched, got batch sizes {sizes}"
    assert (batcher.batches, batcher.items) == (len(sizes), 33)


def test_max_batch_one_runs_each_item_alone() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(lambda items: sizes.append(len(items)) or items, max_batch=1, max_wait_ms=50)
    assert run_clients(batcher, [[i] for i in range(6)]) == [[i] for i in range(6)]
    assert sizes == [1] * 6


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs() -> None:
    def fragile(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad item in this batch")
        return items

    async def main() -> tuple[BaseException | list[int], list[int]]:
        batcher = MicroBatcher(fragile, max_batch=4, max_wait_ms=1)
        batcher.start()
        try:
            failed = await asyncio.gather(batcher.submit([-1]), return_exceptions=True)
            return failed[0], await batcher.submit([7])
        finally:
            await batcher.stop()

    failed, later = asyncio.run(main())
    assert isinstance(failed, ValueError) and "bad item" in str(failed)
    assert later == [7]


def test_wrong_result_count_is_an_error_not_a_hang() -> None:
    batcher = MicroBatcher(lambda items: [], max_batch=4, max_wait_ms=1)
    with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
        run_clients(batcher, [[1]])


def test_bad_settings_and_submit_before_start() -> None:
    with pytest.raises(ValueError, match="max_batch must be at least 1, got 0"):
        MicroBatcher(list, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0"):
        MicroBatcher(list, max_wait_ms=-1)
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(MicroBatcher(list).submit([1]))


def test_a_full_queue_refuses_at_once_and_stop_finishes_what_was_accepted() -> None:
    """Beyond max_queue waiting items submit raises QueueFull; stopping with a drain time answers every accepted
    item instead of failing it, and runs the waiting batch without waiting for it to fill."""
    import threading

    from vitkit.serve import QueueFull

    entered, opened = threading.Event(), threading.Event()

    def held(items: list[int]) -> list[int]:
        entered.set()
        opened.wait(timeout=60)
        return [-x for x in items]

    async def main() -> tuple[list, BaseException, list[int]]:
        batcher = MicroBatcher(held, max_batch=2, max_wait_ms=60_000, max_queue=3)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit([1, 2]))  # a full batch: runs at once, and waits in `held`
        await asyncio.to_thread(entered.wait, 60)
        waiting = [asyncio.ensure_future(batcher.submit([x])) for x in (3, 4, 5)]  # a batch of 2 waits 60 s to fill
        await asyncio.sleep(0)  # let the three submissions queue
        assert batcher.queued == 3
        refused = await asyncio.gather(batcher.submit([6]), return_exceptions=True)
        opened.set()
        await batcher.stop(drain_s=60)
        return [await running] + [await task for task in waiting], refused[0], [batcher.batches, batcher.items]

    answers, refused, counts = asyncio.run(main())
    assert answers == [[-1, -2], [-3], [-4], [-5]]
    assert isinstance(refused, QueueFull) and refused.retry_after_s >= 1
    assert "3 images are waiting and this request brings 1, more than the queue limit of 3" in str(refused)
    assert counts == [3, 5], "the drain ran the waiting items without waiting 60 s for their batch to fill"


def test_admitted_room_counts_until_submitted_or_released() -> None:
    """Room taken before preparing items counts against max_queue until the items are submitted or it is released."""
    from vitkit.serve import QueueFull

    async def main() -> list[list[int]]:
        batcher = MicroBatcher(list, max_batch=4, max_wait_ms=0, max_queue=3)
        batcher.start()
        try:
            batcher.admit(2)
            with pytest.raises(QueueFull, match="2 images are waiting and this request brings 2"):
                batcher.admit(2)
            batcher.release(1)  # one item's preparation failed
            batcher.admit(2)
            assert batcher.queued == 3
            answers = await asyncio.gather(batcher.submit([7], admitted=True), batcher.submit([8, 9], admitted=True))
            assert batcher.queued == 0
            return list(answers)
        finally:
            await batcher.stop()

    assert asyncio.run(main()) == [[7], [8, 9]]
