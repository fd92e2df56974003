"""Delayed tasks end to end, on both front doors: ``delay=`` and ``eta=``."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from _tasks import add

from procqueue import (
    InvalidArgumentError,
    OptionTypeError,
    ProcQueue,
    TaskQueue,
    TaskState,
    task_id,
)

BOUND = 30.0


def test_taskqueue_delay_runs_no_earlier_than_due() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            tid = await q.submit(add, 1, 2, delay=0.2)
            st = q.get_task_status(tid)
            assert st.state is TaskState.SCHEDULED and st.due_at is not None
            assert q.get_stats().scheduled == 1
            now = await q.submit(add, 5)  # due at once: not held up by the delayed one
            assert await q.result(now, timeout=BOUND) == 5
            assert await q.result(tid, timeout=BOUND) == 3
            done = q.get_task_status(tid)
            assert done.started_at is not None and done.started_at >= st.due_at

    asyncio.run(main())


def test_procqueue_eta_and_cancel_while_scheduled() -> None:
    with ProcQueue(max_workers=1) as pool:
        eta = datetime.now(timezone.utc) + timedelta(seconds=0.2)
        fut = pool.submit_task(add, 2, 2, eta=eta)
        parked = pool.submit_task(add, 0, delay=3600)
        assert pool.get_task_status(task_id(parked)).state is TaskState.SCHEDULED
        assert parked.cancel()
        assert fut.result(timeout=BOUND) == 4
        st = pool.get_task_status(task_id(fut))
        assert st.started_at is not None and st.due_at is not None
        assert st.started_at >= st.due_at
        stats = pool.get_stats()
        assert stats.cancelled == 1 and stats.scheduled == 0 and stats.completed == 1


def test_stop_waits_for_scheduled_tasks() -> None:
    async def main() -> int:
        q = TaskQueue(num_workers=1)
        await q.start()
        tid = await q.submit(add, 40, 2, delay=0.1)
        await q.stop()  # drains: the scheduled task still runs
        assert q.get_task_status(tid).state is TaskState.COMPLETED
        return int(await q.result(tid))

    assert asyncio.run(main()) == 42


def test_bad_delays_are_rejected_at_the_call() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            naive = datetime.now() + timedelta(seconds=1)
            aware = datetime.now(timezone.utc)
            with pytest.raises(InvalidArgumentError, match="timezone-aware"):
                await q.submit(add, 1, eta=naive)
            with pytest.raises(InvalidArgumentError, match="not both"):
                await q.submit(add, 1, delay=1, eta=aware)
            with pytest.raises(InvalidArgumentError):
                await q.submit(add, 1, delay=-1)
            with pytest.raises(OptionTypeError):
                await q.submit(add, 1, delay="soon")  # type: ignore[arg-type]
            with pytest.raises(OptionTypeError):
                await q.submit(add, 1, eta=3.0)  # type: ignore[arg-type]
            assert q.get_stats().submitted == 0  # nothing of the above was queued
            # A due time already past runs at once.
            tid = await q.submit(add, 1, eta=aware - timedelta(seconds=5))
            assert q.get_task_status(tid).due_at is None
            assert await q.result(tid, timeout=BOUND) == 1

    asyncio.run(main())
