"""Regressions for bugs a review of the asyncio front door found: far
deadlines crashing the coordinator, a submit spinning on the loop during a
stop, results lost to a wait or a timed-out ``result``, ``join`` waiting for
later tasks, orphaned asyncio futures, ``stop(timeout=)`` checks and a
traceback that grew with every ``result``."""

from __future__ import annotations

import asyncio
import math
import threading
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _tasks import Gate, add, gated, raise_value_error

from procqueue import (
    InvalidArgumentError,
    OptionTypeError,
    ProcQueue,
    QueueClosedError,
    TaskQueue,
    TaskState,
    taskqueue,
)
from procqueue._asyncbridge import to_asyncio

DAY = 86400.0


def gate_in(tmp_path: Path, name: str) -> Gate:
    d = tmp_path / name
    d.mkdir()
    return Gate(d)


def test_deadlines_past_epoll_s_limit_leave_the_pool_serving(tmp_path: Path) -> None:
    """epoll refuses waits over 2**31 ms (~24.8 days): a far delay, schedule,
    task timeout or stop timeout crashed the coordinator and broke the pool."""
    gate = gate_in(tmp_path, "g")

    async def main() -> None:
        q = TaskQueue(num_workers=2)
        await q.start()
        later = await q.submit(add, 1, delay=30 * DAY)
        await q.schedule(add, 2, every=timedelta(days=30), name="monthly")
        long = await q.submit(gated, gate.paths, "long", timeout=30 * DAY)
        gate.wait_started()
        assert await q.result(await q.submit(add, 20, 22), timeout=30) == 42
        assert q.get_task_status(later).state is TaskState.SCHEDULED
        gate.release()
        assert await q.result(long, timeout=30) == "long"
        await q.stop(cancel_pending=True, timeout=math.inf)  # inf: wait for them

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_a_submit_waiting_for_room_gets_closed_at_once_when_stop_begins(
    tmp_path: Path,
) -> None:
    """It used to get QueueFullError again and again without yielding: the
    loop spun until a running task ended."""
    gate = gate_in(tmp_path, "g")

    async def main() -> None:
        q = TaskQueue(num_workers=1, max_pending=1)
        await q.start()
        running = await q.submit(gated, gate.paths)
        gate.wait_started()
        blocked = asyncio.create_task(q.submit(add, 1))
        await asyncio.sleep(0)  # it runs up to its wait for room
        assert not blocked.done()
        stopping = asyncio.create_task(q.stop())
        # A safety net for the old code only: without it the test would hang.
        net = threading.Timer(10.0, gate.release)
        net.start()
        try:
            with pytest.raises(QueueClosedError):
                await blocked
            assert q.get_task_status(running).state is TaskState.RUNNING
        finally:
            net.cancel()
            gate.release()
        await stopping

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_a_timed_out_result_or_a_wait_does_not_claim(tmp_path: Path) -> None:
    """retain_finished counts claimed results only: a result() that timed
    out, or a wait() that left the task undone, handed nothing over."""
    gate = gate_in(tmp_path, "g")

    async def main() -> None:
        async with TaskQueue(num_workers=2, retain_finished=1) as q:
            a = await q.submit(gated, gate.paths, "a")
            b = await q.submit(gated, gate.paths, "b")
            gate.wait_started()
            gate.wait_started()
            with pytest.raises(TimeoutError):
                await q.result(a, timeout=0.01)
            assert await q.wait([b], timeout=0.01) == (set(), {b})
            gate.release(2)
            await q.join()
            for i in range(3):  # three claims: each may push one out of retention
                assert await q.result(await q.submit(add, i)) == i
            assert await q.result(a) == "a" and await q.result(b) == "b"

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_results_can_be_read_by_id_after_wait_and_as_completed() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2, retain_finished=3) as q:
            ids = [await q.submit(add, i) for i in range(8)]
            done, _ = await q.wait(ids)
            assert done == set(ids)
            assert [await q.result(t) for t in ids] == list(range(8))
            more = [await q.submit(add, i) for i in range(8)]
            seen = [t async for t in q.as_completed(more)]
            assert sorted(seen) == more
            assert [await q.result(t) for t in more] == list(range(8))

    asyncio.run(main())


def test_join_waits_only_for_what_was_submitted_before_it(tmp_path: Path) -> None:
    first, second = gate_in(tmp_path, "first"), gate_in(tmp_path, "second")

    async def main() -> None:
        async with TaskQueue(num_workers=2) as q:
            a = await q.submit(gated, first.paths)
            first.wait_started()
            joining = asyncio.create_task(q.join())
            await asyncio.sleep(0)  # join() has taken its snapshot
            b = await q.submit(gated, second.paths)
            second.wait_started()
            first.release()
            await asyncio.wait_for(joining, 30)
            assert q.get_task_status(a).state is TaskState.COMPLETED
            assert q.get_task_status(b).state is TaskState.RUNNING
            second.release()
            await q.join()
            assert q.get_task_status(b).state is TaskState.COMPLETED

    try:
        asyncio.run(main())
    finally:
        first.close()
        second.close()


def test_wait_and_as_completed_leave_no_unretrieved_future_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A not-done future that wait() or as_completed() let go later got the
    task's exception, which nobody read: asyncio logs "Future exception was
    never retrieved" when such a future is collected (here: at exit)."""
    gate = gate_in(tmp_path, "g")
    bridged: list[asyncio.Future[Any]] = []

    def recording(cf: Any) -> asyncio.Future[Any]:
        bridged.append(to_asyncio(cf))
        return bridged[-1]

    monkeypatch.setattr(taskqueue, "to_asyncio", recording)

    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            held = await q.submit(gated, gate.paths)
            a = await q.submit(raise_value_error, "boom a", after=[held])
            b = await q.submit(raise_value_error, "boom b", after=[held])
            assert await q.wait([a], timeout=0.01) == (set(), {a})
            with pytest.raises(TimeoutError):
                async for _ in q.as_completed([b], timeout=0.01):
                    pass
            gate.release()
            for t in (a, b):
                with pytest.raises(ValueError, match="boom"):
                    await q.result(t)
            await asyncio.sleep(0)  # the relay's copies, if any, have run

    try:
        asyncio.run(main())
    finally:
        gate.close()
    assert len(bridged) >= 2
    # asyncio's own flag for "would be logged as never retrieved".
    assert not [f for f in bridged if not f.cancelled() and f._log_traceback]


def test_stop_timeout_is_checked_on_both_front_doors() -> None:
    async def main() -> None:
        q = TaskQueue(num_workers=1)
        await q.start()
        with pytest.raises(InvalidArgumentError):
            await q.stop(timeout=math.nan)
        with pytest.raises(OptionTypeError):
            await q.stop(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            await q.stop(timeout=-1)
        assert await q.result(await q.submit(add, 1, 2)) == 3  # nothing was stopped
        await q.stop()

    asyncio.run(main())
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(InvalidArgumentError):
            pool.shutdown(timeout=-1)
        assert pool.submit(add, 1, 2).result(timeout=30) == 3


def test_reading_a_failure_again_does_not_grow_its_traceback() -> None:
    def depth(e: BaseException) -> int:
        return len(traceback.extract_tb(e.__traceback__))

    async def main() -> list[int]:
        async with TaskQueue(num_workers=1) as q:
            t = await q.submit(raise_value_error, "again")
            depths = []
            for _ in range(4):
                try:
                    await q.result(t)
                except ValueError as e:
                    depths.append(depth(e))
            return depths

    depths: Any = asyncio.run(main())
    # The first read awaits the outcome, the others find it settled: from
    # then on the same depth (it grew by 3 frames a read).
    assert len(depths) == 4 and depths[1] == depths[2] == depths[3], depths


def test_a_bool_is_no_task_id() -> None:
    """``True == 1``: get_task_status(True) used to answer for task 1."""

    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            assert await q.result(await q.submit(add, 1)) == 1
            for call in (q.get_task_status, q._future):
                with pytest.raises(OptionTypeError):
                    call(True)
            with pytest.raises(OptionTypeError):
                await q.result(True)

    asyncio.run(main())
    with ProcQueue(max_workers=1) as pool:
        pool.submit(add, 1).result(timeout=30)
        with pytest.raises(OptionTypeError):
            pool.get_task_status(True)
