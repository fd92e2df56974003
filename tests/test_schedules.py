"""Recurring schedules end to end, on real processes and both front doors:
runs fire on time and deliver results, the handle's controls, ``overlap``,
the default timeout, bad input refused at the call, and a stopping queue.

The decisions themselves (catch-up, misfires, cron across DST) are tested
without processes in ``core/test_schedules_core.py``. Here, waits are on
results or on a condition polled with a deadline; the only waits that run out
are the ones that check that nothing fires, bounded by a few intervals.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from _tasks import Gate, add, gated, hang

from procqueue import (
    InvalidArgumentError,
    InvalidCallableError,
    MissingExtraError,
    OptionTypeError,
    ProcQueue,
    QueueClosedError,
    QueueNotStartedError,
    SerializationError,
    TaskQueue,
    TaskState,
    TaskTimeoutError,
    result_of,
)

#: Upper bound on any wait for something that must happen.
BOUND = 30.0
#: A short interval: fast tests, yet long enough for a run to start between ticks.
SHORT = 0.25


def until(cond: Callable[[], bool], within: float) -> bool:
    """Poll ``cond`` until it holds (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


async def until_async(cond: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def test_every_second_fires_about_a_second_apart() -> None:
    with ProcQueue(max_workers=1) as pool:
        # A warm worker: the first run's start is not delayed by a worker boot.
        assert pool.submit(add, 0).result(timeout=BOUND) == 0
        sched = pool.schedule(add, 1, 2, every=1.0, name="beat")
        next_run = sched.next_run
        assert next_run is not None and next_run.tzinfo is not None
        ahead = (next_run - datetime.now(timezone.utc)).total_seconds()
        assert 0.0 < ahead <= 1.05  # the first run is one interval from now
        assert until(lambda: sched.runs >= 2, BOUND)
        first, second = sched.task_ids[:2]
        assert [pool.future(t).result(timeout=BOUND) for t in (first, second)] == [3, 3]
        a, b = pool.get_task_status(first), pool.get_task_status(second)
        assert a.schedule == b.schedule == "beat"
        assert a.started_at is not None and b.started_at is not None
        assert 0.5 <= b.started_at - a.started_at <= 1.6
        # Still live: leaving the block stops the pool, and with it the schedule.


def test_taskqueue_cron_schedule_delivers_results() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            sched = await q.schedule(add, 20, b=22, cron="* * * * * *", tz="UTC")
            assert sched.name == "add" and [s.name for s in q.schedules()] == ["add"]
            next_run = sched.next_run
            assert next_run is not None and next_run.utcoffset() == timedelta(0)
            assert next_run.microsecond == 0  # cron ticks fall on whole seconds
            assert await until_async(lambda: sched.runs >= 1, BOUND)
            tid = sched.task_ids[0]
            assert await q.result(tid, timeout=BOUND) == 42
            assert q.get_task_status(tid).schedule == "add"
            now_id = sched.run_now()
            assert await q.result(now_id, timeout=BOUND) == 42

    asyncio.run(main())


def test_controls_run_now_pause_resume_cancel() -> None:
    with ProcQueue(max_workers=1) as pool:
        sched = pool.schedule(add, 2, 3, every=SHORT, name="tick")
        with pytest.raises(InvalidArgumentError, match="already exists"):
            pool.schedule(add, 0, every=SHORT, name="tick")
        assert [s.name for s in pool.schedules()] == ["tick"]

        forced = sched.run_now()
        assert pool.future(forced).result(timeout=BOUND) == 5
        assert pool.get_task_status(forced).schedule == "tick"
        assert forced in sched.task_ids
        assert until(lambda: sched.runs >= 2, BOUND)  # and a tick of its own

        sched.pause()
        assert sched.paused and sched.next_run is None and not sched.cancelled
        fired = sched.runs
        assert not until(lambda: sched.runs > fired, 3 * SHORT)

        sched.resume()
        next_run = sched.next_run
        assert not sched.paused and next_run is not None
        # The next tick after now (nothing caught up): at most one interval away.
        assert next_run - datetime.now(timezone.utc) <= timedelta(seconds=SHORT)
        assert until(lambda: sched.runs > fired, BOUND)

        sched.cancel()
        sched.cancel()  # idempotent
        assert sched.cancelled and sched.next_run is None
        assert pool.schedules() == []
        with pytest.raises(QueueClosedError):
            sched.run_now()
        again = pool.schedule(add, 0, every=3600, name="tick")  # the name is free again
        again.cancel()
        assert [pool.future(t).result(timeout=BOUND) for t in sched.task_ids] == [5] * sched.runs


def test_overlap_skip_counts_the_tick_the_busy_run_blocks(
    gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="procqueue.schedules")
    # Two workers: a skipped tick is the policy's doing, not a lack of room.
    with ProcQueue(max_workers=2) as pool:
        sched = pool.schedule(gated, gate.paths, "done", every=SHORT, timeout=BOUND)
        gate.wait_started(BOUND)
        assert until(lambda: sched.skipped["overlap"] >= 1, BOUND)
        assert sched.runs == 1  # nothing fired beside the run that is going
        sched.cancel()
        gate.release()
        assert pool.future(sched.task_ids[0]).result(timeout=BOUND) == "done"
        assert sched.runs == 1 and sched.skipped["misfire"] == 0
        assert any("overlap='skip'" in r.getMessage() for r in caplog.records)


def test_default_timeout_is_the_interval_and_the_schedule_goes_on() -> None:
    interval = 0.3
    with ProcQueue(max_workers=1) as pool:
        sched = pool.schedule(hang, every=interval, max_retries=0, name="stuck")
        assert until(lambda: sched.runs >= 1, BOUND)
        first = sched.task_ids[0]
        with pytest.raises(TaskTimeoutError):
            pool.future(first).result(timeout=BOUND)
        assert until(lambda: sched.runs >= 2, BOUND)  # the kill did not end it
        sched.cancel()
        with pytest.raises(TaskTimeoutError):  # killed in turn: it cannot block shutdown
            pool.future(sched.task_ids[1]).result(timeout=BOUND)
        status = pool.get_task_status(first)
        assert status.state is TaskState.FAILED and status.attempts == 1
        assert status.schedule == "stuck"


def test_bad_input_raises_at_the_call_and_registers_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ProcQueue(max_workers=1) as pool:
        bad: list[tuple[type[Exception], Callable[[], object]]] = [
            (InvalidArgumentError, lambda: pool.schedule(add, 1, name="job")),
            (
                InvalidArgumentError,
                lambda: pool.schedule(add, 1, cron="* * * * *", every=1, name="job"),
            ),
            (InvalidArgumentError, lambda: pool.schedule(add, 1, cron="61 * * * *", name="job")),
            (InvalidArgumentError, lambda: pool.schedule(add, 1, cron="often", name="job")),
            (InvalidArgumentError, lambda: pool.schedule(add, 1, every=0, name="job")),
            (OptionTypeError, lambda: pool.schedule(add, 1, every="1s", name="job")),  # type: ignore[arg-type]
            (InvalidCallableError, lambda: pool.schedule(42, every=1, name="job")),  # type: ignore[arg-type]
            (
                SerializationError,
                lambda: pool.schedule(add, threading.Lock(), every=1, name="job"),
            ),
            (OptionTypeError, lambda: pool.schedule(add, 1, every=1, delay=5, name="job")),
            (InvalidArgumentError, lambda: pool.schedule(add, result_of(1), every=1, name="job")),
            (
                InvalidArgumentError,
                lambda: pool.schedule(add, 1, cron="0 * * * *", tz="Mars/Olympus", name="job"),
            ),
            (InvalidArgumentError, lambda: pool.schedule(add, 1, every=1, overlap="x", name="job")),
            (InvalidArgumentError, lambda: pool.schedule(add, 1, every=1, catchup="x", name="job")),
        ]
        for error, call in bad:
            with pytest.raises(error):
                call()
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "cronsim", None)  # the optional extra is missing
            with pytest.raises(MissingExtraError, match=r"procqueue\[cron\]"):
                pool.schedule(add, 1, cron="0 * * * *", name="job")
        assert pool.schedules() == []
        assert pool.get_stats().submitted == 0
        # No refused call left its name behind.
        sched = pool.schedule(add, 1, every=3600, name="job")
        assert [s.name for s in pool.schedules()] == ["job"]
        sched.cancel()


def test_stopping_the_queue_ends_the_schedule(gate: Gate) -> None:
    async def main() -> None:
        q = TaskQueue(num_workers=1)
        with pytest.raises(QueueNotStartedError):
            await q.schedule(add, 1, every=SHORT)
        await q.start()
        # overlap="allow": only the stop, not the busy run, may hold ticks back.
        sched = await q.schedule(
            gated, gate.paths, "ran", every=SHORT, overlap="allow", timeout=BOUND
        )
        await asyncio.to_thread(gate.wait_started, BOUND)
        stopping = asyncio.create_task(q.stop())  # drains: waits for the gated runs
        assert await until_async(lambda: sched.cancelled, BOUND)
        assert sched.next_run is None
        fired = sched.runs
        assert not await until_async(lambda: sched.runs > fired, 3 * SHORT)
        gate.release(fired)
        await asyncio.wait_for(stopping, BOUND)
        assert sched.runs == fired and sched.cancelled
        states = {q.get_task_status(t).state for t in sched.task_ids}
        assert states == {TaskState.COMPLETED}
        with pytest.raises(QueueClosedError):
            sched.run_now()

    asyncio.run(main())


def test_a_stopped_queue_lists_no_schedules() -> None:
    pool = ProcQueue(max_workers=1)
    sched = pool.schedule(add, 1, every=3600)
    pool.shutdown()
    assert sched.cancelled
    assert pool.schedules() == []
