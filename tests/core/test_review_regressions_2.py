"""Regressions for bugs a second independent review found in the core and the
engine around it: dead-letter requeues, throttling, futures by id, schedule
retention and interval ticks. No processes: a fake clock and hand-fed events."""

from __future__ import annotations

import math

import pytest
from test_scheduler_machine import Shell

from procqueue import Concurrency, InvalidArgumentError, RetryPolicy, Throttle
from procqueue._core.events import Done, Ready, Started
from procqueue._core.records import TaskState, _TaskRecord
from procqueue._core.schedules import Every, ScheduleEntry
from procqueue._frontdoor import make_engine
from procqueue._runtime.engine import Engine
from procqueue._runtime.futures import _TaskFuture
from procqueue._runtime.state import EngineState


def running_engine(door: str, **options: object) -> Engine:
    """An engine marked running, without any process (see :func:`boot`)."""
    eng = make_engine(door, 1, dict(options))
    eng.state = EngineState.RUNNING
    return eng


def boot(eng: Engine) -> None:
    """Its one worker slot comes up and takes what is queued."""
    core = eng.core
    core.tick(0.0)
    core.feed(Started(0, 123), 0.0)
    core.feed(Ready(0), 0.0)
    core.tick(0.0)


def settle(eng: Engine) -> None:
    eng.core.tick(0.0)
    eng._after_step()
    eng._publish(eng._take_publication())


def test_a_requeued_dead_letter_keeps_its_limit_key() -> None:
    eng = running_engine("TaskQueue", key_limits={"db": Concurrency(1)})
    rec = eng.new_record("f", 0, (b"f", []), None, None, None)
    rec.limit_key = "db"
    eng.core.admit(rec, 0.0)
    boot(eng)
    eng.core.feed(Done(0, rec.task_id, False, ValueError("boom"), "", 0.0, 0.0), 0.0)
    assert rec.state is TaskState.FAILED
    new = eng.requeue_dead_letter(rec.task_id)[rec.task_id]
    assert eng.core.tasks[new].limit_key == "db"


@pytest.mark.parametrize("seconds", [math.inf, math.nan, -1.0])
def test_throttle_refuses_a_retry_after_that_is_not_a_finite_delay(seconds: float) -> None:
    with pytest.raises(InvalidArgumentError, match="retry_after"):
        Throttle(retry_after=seconds)
    assert Throttle(retry_after=0).retry_after == 0.0


@pytest.mark.parametrize("option", ["backoff_base", "backoff_max", "backoff_factor"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_retry_policy_refuses_non_finite_backoff(option: str, value: float) -> None:
    with pytest.raises(InvalidArgumentError, match=option):
        RetryPolicy(**{option: value})  # type: ignore[arg-type]


def test_a_throttle_under_cancel_pending_ends_cancelled_not_failed() -> None:
    sh = Shell(workers=1)
    rec = sh.submit(retries=3)
    sh.turn(0.0)
    sh.boot(0, 0.0)
    assert rec.state is TaskState.RUNNING
    sh.sched.stop(cancel_pending=True, deadline=None, now=0.1)
    sh.turn(0.2, Done(0, rec.task_id, False, Throttle(1.0), "", 0.1, 0.2))
    assert rec.state is TaskState.CANCELLED
    assert rec.task_id not in sh.sched.dlq.entries
    assert sh.sched.tally.failed_by_type == {}


def test_a_future_by_id_refuses_an_outcome_released_to_the_submitters_future() -> None:
    eng = running_engine("ProcQueue", keep_unclaimed=False)
    futs = [_TaskFuture(), _TaskFuture()]
    recs = [eng.new_record("f", 0, (b"f", []), None, None, f) for f in futs]
    for r in recs:
        eng.core.admit(r, 0.0)
    boot(eng)
    eng.core.feed(Done(0, recs[0].task_id, True, 42, "", 0.0, 0.0), 0.0)
    eng.core.tick(0.0)
    eng.core.feed(Done(0, recs[1].task_id, False, ValueError("boom"), "", 0.0, 0.0), 0.0)
    settle(eng)
    assert futs[0].result(timeout=0) == 42
    assert isinstance(futs[1].exception(timeout=0), ValueError)
    for r in recs:  # was: a fresh future resolved to None, the failure hidden
        with pytest.raises(InvalidArgumentError, match="use that future"):
            eng.future_for(r.task_id)


def test_claiming_a_finished_schedule_run_takes_one_retention_slot() -> None:
    eng = running_engine("TaskQueue", retain_finished=2)
    core = eng.core
    run = eng.new_record("job", 0, (b"f", []), None, None, None)
    run.fired_by = "job"
    core.admit(run, 0.0)
    boot(eng)
    core.feed(Done(0, run.task_id, True, 1, "", 0.0, 0.0), 0.0)
    core.tick(0.0)
    eng.future_for(run.task_id)  # queue.result(run_id) after it finished
    other = eng.new_record("g", 0, (b"g", []), None, None, None)
    core.admit(other, 0.0)
    core.tick(0.0)
    eng.future_for(other.task_id)
    core.feed(Done(0, other.task_id, True, 1, "", 0.0, 0.0), 0.0)
    core.tick(0.0)
    # One newer task finished, retain_finished=2: the run is still there.
    assert run.task_id in core.tasks


@pytest.mark.parametrize("period", [0.1, 0.3, 0.7, 1.1, 2.2])
@pytest.mark.parametrize("anchor", [12345.678901, 0.3])
def test_an_interval_tick_taken_exactly_at_its_time_runs(period: float, anchor: float) -> None:
    entry = ScheduleEntry(
        "j", Every(period, anchor), lambda t: None, misfire_grace=60,
        catchup="latest", overlap="allow", now=anchor, wall_offset=0.0,
    )  # fmt: skip
    for _ in range(500):
        tick = entry.next_tick
        due = entry.take_due(tick)
        assert due.run == [tick] and due.misfired == due.skipped == 0


@pytest.mark.parametrize("period", [0.1, 0.3, 2.2])
def test_a_redis_schedule_stored_to_the_millisecond_runs_each_tick(period: float) -> None:
    """A node rebuilds the entry from the tick rounded to the ms (``_cron._entry``)."""
    from procqueue.redis._cron import _entry

    s = {"kind": "every", "every": period, "anchor": 0.3, "grace": 60.0, "catchup": "latest"}
    ms = round(Every(period, 0.3).next_after(100.0) * 1000)
    for _ in range(300):
        entry = _entry("j", {**s, "next_ms": ms})
        due = entry.take_due(ms / 1000 + 0.002)  # a node looking 2 ms after the tick
        assert len(due.run) == 1 and due.misfired == due.skipped == 0
        ms = round(entry.next_tick * 1000)


def test_a_dependent_ended_by_its_upstream_s_failure_shows_that_error() -> None:
    sh = Shell(workers=1)
    up = sh.submit()
    dep = _TaskRecord(99, "dep", 0, (b"f", []), RetryPolicy(), None, 0.0, None)
    dep.upstream = (up.task_id,)
    sh.sched.admit(dep, 0.0)
    sh.turn(0.0)
    sh.boot(0, 0.0)
    sh.done(0, up, 0.1, ok=False)
    status = dep.snapshot()
    assert status.state is TaskState.FAILED and status.errors == ()
    assert status.error is not None
    assert status.error.exc_type == "procqueue.errors.UpstreamFailedError"
    assert f"upstream task {up.task_id}" in status.error.message


def test_a_cancelled_dependent_lets_go_of_the_values_it_was_passed() -> None:
    sh = Shell(workers=1, prefetch=0)
    a, b = sh.submit(), sh.submit()
    dep = _TaskRecord(99, "dep", 0, (b"f", []), RetryPolicy(), None, 0.0, None)
    dep.upstream = (a.task_id, b.task_id)
    dep.inputs = dict.fromkeys(dep.upstream)
    sh.sched.admit(dep, 0.0)
    sh.turn(0.0)
    sh.boot(0, 0.0)
    sh.done(0, a, 0.1)  # a's value is passed to dep; b is still to run
    assert dep.inputs is not None and dep.inputs[a.task_id] is not None
    sh.sched.cancel(dep.task_id, 0.2)
    assert dep.state is TaskState.CANCELLED and dep.inputs is None


@pytest.mark.parametrize("now", [1030.0, 1030.25, 1030.5, 1030.99])
def test_throughput_of_a_steady_rate_reads_that_rate_all_second_long(now: float) -> None:
    from procqueue._core.tally import Tally

    tally = Tally(now=1000.0)
    i = 0
    while 1000.0 + i / 100 <= now:
        tally.count_completion(1000.0 + i / 100)
        i += 1
    assert tally.throughput(now) == pytest.approx(100.0, rel=0.01)  # was 90 to 100
