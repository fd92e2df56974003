"""max_pending: bounded memory for producers faster than the pool."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from _tasks import Gate, add, gated

from procqueue import ProcQueue, QueueClosedError, QueueFullError, TaskQueue


def test_sync_submit_blocks_then_times_out(gate: Gate) -> None:
    with ProcQueue(max_workers=1, max_pending=2) as pool:
        first = pool.submit(gated, gate.paths, 1)
        gate.wait_started()
        second = pool.submit(add, 2)
        with pytest.raises(QueueFullError):
            pool.submit_task(add, 3, block_timeout=0.05)
        assert pool.get_stats().submitted == 2  # the refused call was not queued
        # A blocked submit proceeds as soon as a task finishes.
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(pool.submit(add, 4).result()))
        t.start()
        gate.release()
        t.join(30)
        assert got == [4]
        assert first.result() == 1
        assert second.result() == 2


def test_async_submit_waits_without_blocking_the_loop(gate: Gate) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1, max_pending=1) as q:
            first = await q.submit(gated, gate.paths, "a")
            gate.wait_started()
            pending_submit = asyncio.ensure_future(q.submit(add, 5))
            await asyncio.sleep(0)  # let it reach its wait
            assert not pending_submit.done()
            # The loop is free: other coroutines run meanwhile.
            assert q.get_stats().submitted == 1
            gate.release()
            second = await pending_submit
            assert await q.result(first) == "a"
            assert await q.result(second) == 5

    asyncio.run(main())


def test_stop_wakes_a_blocked_submitter(gate: Gate) -> None:
    pool = ProcQueue(max_workers=1, max_pending=1)
    pool.submit(gated, gate.paths)
    gate.wait_started()
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            pool.submit(add, 1)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=producer)
    t.start()
    pool.shutdown(wait=False)
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], QueueClosedError)
    gate.release()
    pool.shutdown()


def test_map_streams_an_infinite_iterator_in_bounded_memory() -> None:
    with ProcQueue(max_workers=2) as pool:
        results = pool.map(add, itertools.count(), itertools.repeat(1), buffersize=8)
        taken = list(itertools.islice(results, 500))
        assert taken == list(range(1, 501))
        # Never more than the window (+1 being refilled) was submitted ahead.
        assert pool.get_stats().submitted <= 500 + 9
        results.close()  # type: ignore[attr-defined]


def test_map_with_max_pending_streams_and_chunks() -> None:
    with ProcQueue(max_workers=2, max_pending=4) as pool:
        out = list(pool.map(add, range(1000), range(1000), chunksize=50))
        assert out == [2 * i for i in range(1000)]
