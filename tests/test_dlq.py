"""The dead letter queue: failed-for-good tasks with their history."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _tasks import Gate, add, crash_times, fail_times, gated

from procqueue import (
    DeadLetter,
    ProcQueue,
    RetryPolicy,
    TaskNotFoundError,
    TaskQueue,
    TaskState,
    WorkerCrashedError,
    task_id,
)

NO_WAIT = RetryPolicy(backoff_base=0)


def test_exhausted_task_lands_in_the_dlq_with_its_history(tmp_path: Path) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1, retry=NO_WAIT) as q:
            tid = await q.submit(crash_times, str(tmp_path / "c1"), 5, max_retries=1)
            ok = await q.submit(add, 1, 2)
            with pytest.raises(WorkerCrashedError):
                await q.result(tid)
            assert await q.result(ok) == 3
            letters = q.dlq.list()
            assert [d.task_id for d in letters] == [tid]
            letter = q.dlq.get(tid)
            assert isinstance(letter, DeadLetter)
            assert letter.attempts == 2
            assert len(letter.errors) == 2
            assert all(e.exitcode == 7 for e in letter.errors)
            assert all(e.worker_pid for e in letter.errors)
            assert letter.errors[0].worker_pid != letter.errors[1].worker_pid
            assert all(
                e.started_at is not None and e.started_at <= e.finished_at for e in letter.errors
            )
            assert letter.error is letter.errors[-1]
            assert q.get_stats().dead_letters == 1
            assert len(q.dlq) == 1

    asyncio.run(main())


def test_requeue_gets_a_fresh_budget_and_can_succeed(tmp_path: Path) -> None:
    counter = str(tmp_path / "c")
    with ProcQueue(max_workers=1, retry=NO_WAIT) as pool:
        fut = pool.submit_task(fail_times, counter, 2, "finally", max_retries=0)
        with pytest.raises(ValueError):
            fut.result()
        old = task_id(fut)
        new = pool.dlq.requeue(old, max_retries=3)
        assert new != old
        assert pool.future(new).result() == "finally"
        assert pool.get_task_status(new).attempts == 2
        assert pool.get_task_status(old).state is TaskState.FAILED  # final stays final
        assert pool.dlq.list() == []
        with pytest.raises(TaskNotFoundError):
            pool.dlq.requeue(old)


def test_requeue_is_not_held_to_max_pending(tmp_path: Path, gate: Gate) -> None:
    """An operator's requeue never blocks on back-pressure (it would stall a
    dashboard's request, or an event loop calling ``queue.dlq.requeue``)."""
    import concurrent.futures

    counter = str(tmp_path / "c")
    with ProcQueue(max_workers=1, retry=NO_WAIT, max_pending=1) as pool:
        fut = pool.submit_task(fail_times, counter, 1, "again", max_retries=0)
        with pytest.raises(ValueError):
            fut.result()
        busy = pool.submit(gated, gate.paths, "done")  # the one unfinished task allowed
        gate.wait_started()
        with concurrent.futures.ThreadPoolExecutor(1) as helper:
            try:
                new = helper.submit(pool.dlq.requeue, task_id(fut)).result(timeout=30)
            finally:
                gate.release()  # a requeue that blocked (the bug) gets its room
        assert busy.result() == "done"
        assert pool.future(new).result() == "again"


def test_purge_and_bound() -> None:
    with ProcQueue(max_workers=1, dead_letters=3) as pool:
        futs = [pool.submit(int, "not a number") for _ in range(5)]
        for f in futs:
            with pytest.raises(ValueError):
                f.result()
        stats = pool.get_stats()
        assert stats.dead_letters == 3
        assert stats.dead_letters_dropped == 2
        assert pool.dlq.dropped == 2
        kept = [d.task_id for d in pool.dlq.list()]
        assert kept == [task_id(f) for f in futs[2:]]  # the oldest were dropped
        assert pool.dlq.purge([kept[0]]) == 1
        assert pool.dlq.purge() == 2
        assert len(pool.dlq) == 0


def test_dlq_can_be_turned_off() -> None:
    with ProcQueue(max_workers=1, dead_letters=0) as pool:
        with pytest.raises(ValueError):
            pool.submit(int, "x").result()
        assert pool.get_stats().dead_letters == 0


def test_cancelled_and_successful_tasks_stay_out() -> None:
    with ProcQueue(max_workers=1) as pool:
        assert pool.submit(add, 1).result() == 1
        assert pool.dlq.list() == []
