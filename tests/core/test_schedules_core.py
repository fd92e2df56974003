"""Recurring schedules in the pure core, with a fake clock: interval and cron
ticks (DST in a named zone), misfires, catch-up, overlap, pause and resume.

The loop is driven as the shell drives it: ``now`` jumps to the scheduler's
own ``next_deadline``, and the wall clock is ``now + wall_offset``.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduler_machine import Shell, sent

from procqueue import RetryPolicy
from procqueue._core.events import StartWorker
from procqueue._core.records import TaskState, _TaskRecord
from procqueue._core.scheduler import WALL_RECHECK
from procqueue._core.schedules import MAX_CATCHUP, Cron, Every, ScheduleEntry
from procqueue.errors import InvalidArgumentError

BERLIN = ZoneInfo("Europe/Berlin")
PENDING, RUNNING, WAITING = TaskState.PENDING, TaskState.RUNNING, TaskState.WAITING


class Fired:
    """A schedule's record factory: what it made, and each run's timeout."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.records: list[_TaskRecord] = []
        self.at: list[float] = []  # wall-clock time each record was made

    def __call__(self, timeout: float) -> _TaskRecord:
        shell = self.shell
        rec = _TaskRecord(shell.next_id, "job", 0, (b"f", []), RetryPolicy(), timeout, 0.0, None)
        shell.next_id += 1
        self.records.append(rec)
        self.at.append(self.now + shell.sched.wall_offset)
        return rec

    now = 0.0


def add(
    shell: Shell,
    *,
    every: float | None = None,
    cron: str | None = None,
    now: float = 0.0,
    grace: float | None = 60.0,
    catchup: str = "latest",
    overlap: str = "allow",
) -> tuple[ScheduleEntry, Fired]:
    fired = Fired(shell)
    trigger = Every(every, now) if every is not None else Cron(str(cron), BERLIN)
    entry = ScheduleEntry(
        "job",
        trigger,
        fired,
        misfire_grace=grace,
        catchup=catchup,
        overlap=overlap,
        now=now,
        wall_offset=shell.sched.wall_offset,
    )
    shell.sched.add_schedule(entry)
    return entry, fired


def at(shell: Shell, fired: Fired, now: float) -> None:
    fired.now = now
    shell.turn(now)


def run_until(shell: Shell, fired: Fired, end: float) -> None:
    """The loop: sleep until the next deadline, tick, until ``end``."""
    now = 0.0
    while True:
        due = shell.sched.next_deadline(now)
        assert due is not None
        if due > end:
            return
        now = max(now, due)
        at(shell, fired, now)


def wall(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=BERLIN).timestamp()


def local(ts: float) -> str:
    return datetime.fromtimestamp(ts, BERLIN).strftime("%m-%d %H:%M%z")


# ---------------------------------------------------------------- intervals


def test_an_interval_fires_at_a_fixed_rate_with_its_period_as_timeout() -> None:
    shell = Shell(workers=2)
    entry, fired = add(shell, every=10.0)
    assert shell.sched.next_deadline(0.0) == 10.0
    at(shell, fired, 9.99)
    assert fired.records == []
    at(shell, fired, 10.5)  # a little late: the next tick stays at 20, not 20.5
    assert entry.next_tick == 20.0
    run_until(shell, fired, 40.0)
    assert fired.at == [10.5, 20.0, 30.0, 40.0]
    assert [r.timeout for r in fired.records] == [10.0] * 4
    assert entry.runs == 4 and list(entry.fired) == [r.task_id for r in fired.records]
    assert all(r.fired_by == "job" and r.snapshot().schedule == "job" for r in fired.records)


def test_an_interval_ignores_the_wall_clock() -> None:
    shell = Shell()
    entry, fired = add(shell, every=10.0)
    shell.sched.wall_offset += 3600.0  # the wall clock stepped an hour
    at(shell, fired, 5.0)
    assert fired.records == [] and entry.next_tick == 10.0


def test_bad_schedule_values_are_refused() -> None:
    shell = Shell()
    with pytest.raises(InvalidArgumentError):
        Every(0.0, 0.0)
    with pytest.raises(InvalidArgumentError):
        add(shell, every=1.0, catchup="some")
    with pytest.raises(InvalidArgumentError):
        add(shell, every=1.0, overlap="never")
    with pytest.raises(InvalidArgumentError):
        add(shell, every=1.0, grace=-1.0)
    with pytest.raises(InvalidArgumentError):  # every run is handled a little late
        add(shell, every=1.0, grace=0.0)
    with pytest.raises(InvalidArgumentError, match="invalid cron"):
        Cron("61 * * * *", BERLIN)
    add(shell, every=1.0)
    with pytest.raises(InvalidArgumentError, match="already exists"):
        add(shell, every=2.0)


# ---------------------------------------------------------------- cron and DST


def cron_runs(expr: str, start: float, end: float) -> list[str]:
    shell = Shell(workers=4)
    shell.sched.wall_offset = start  # now=0 is `start` on the wall clock
    _, fired = add(shell, cron=expr)
    run_until(shell, fired, end - start)
    return [local(t) for t in fired.at]


def test_cron_fires_on_the_wall_clock_and_rechecks_it() -> None:
    shell = Shell()
    shell.sched.wall_offset = wall(2026, 11, 29, 12, 0)
    entry, fired = add(shell, cron="0 13 * * *")
    # An hour away, but the loop looks at the wall clock every WALL_RECHECK s.
    assert shell.sched.next_deadline(0.0) == WALL_RECHECK
    shell.sched.wall_offset += 3570.0  # suspended (or the clock stepped) ~1 h
    at(shell, fired, 0.0)
    assert fired.records == []
    assert shell.sched.next_deadline(0.0) == pytest.approx(30.0)
    at(shell, fired, 30.0)
    assert [local(t) for t in fired.at] == ["11-29 13:00+0100"]
    # Its default timeout is the gap to the next tick: a day.
    assert fired.records[0].timeout == 86400.0
    assert entry.runs == 1


def test_weekday_0_and_7_are_both_sunday() -> None:
    for expr in ("0 9 * * 0", "0 9 * * 7", "0 9 * * SUN"):
        runs = cron_runs(expr, wall(2026, 11, 23, 0), wall(2026, 12, 8, 0))
        assert runs == ["11-29 09:00+0100", "12-06 09:00+0100"], expr


def test_an_optional_leading_seconds_field() -> None:
    runs = cron_runs("*/20 * * * * *", wall(2026, 11, 29, 12, 0), wall(2026, 11, 29, 12, 1))
    assert len(runs) == 3  # 12:00:20, :40, 12:01:00


def test_spring_forward_a_fixed_time_in_the_skipped_hour_runs_once_after_the_jump() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET -> 03:00 CEST.
    runs = cron_runs("30 2 * * *", wall(2026, 3, 28, 0), wall(2026, 3, 31, 0))
    assert runs == ["03-28 02:30+0100", "03-29 03:00+0200", "03-30 02:30+0200"]


def test_fall_back_a_fixed_time_in_the_repeated_hour_runs_once() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice.
    runs = cron_runs("30 2 * * *", wall(2026, 10, 24, 0), wall(2026, 10, 27, 0))
    assert runs == ["10-24 02:30+0200", "10-25 02:30+0200", "10-26 02:30+0100"]


def test_a_step_schedule_follows_elapsed_time_across_dst() -> None:
    # Every 30 minutes: both passes of the repeated hour, none of the missing one.
    back = cron_runs("*/30 * * * *", wall(2026, 10, 25, 1, 45), wall(2026, 10, 25, 3, 1))
    assert back == [
        "10-25 02:00+0200",
        "10-25 02:30+0200",
        "10-25 02:00+0100",
        "10-25 02:30+0100",
        "10-25 03:00+0100",
    ]
    fwd = cron_runs("*/30 * * * *", wall(2026, 3, 29, 1, 15), wall(2026, 3, 29, 4, 1))
    assert fwd == ["03-29 01:30+0100", "03-29 03:00+0200", "03-29 03:30+0200", "03-29 04:00+0200"]
    # No duplicate instants, and ticks are 30 real minutes apart.
    trig = Cron("*/30 * * * *", BERLIN)
    t = wall(2026, 10, 25, 1, 0)
    ticks = []
    for _ in range(8):
        t = trig.next_after(t)
        ticks.append(t)
    assert all(b - a == 1800.0 for a, b in itertools.pairwise(ticks))
    # Walking back through the repeated hour meets each instant once too.
    assert trig.last_at_or_before(ticks[3] + 5) == ticks[3]
    assert [trig.prev_before(t) for t in ticks[1:]] == ticks[:-1]


def test_in_the_second_pass_of_a_repeated_hour_the_next_tick_is_never_past() -> None:
    """cronsim steps on the wall clock: from the second pass, a fixed time in
    the repeated hour came back as its first pass, already past, so the loop
    never slept (created or resumed there, or a tick handled late there), and
    with a large grace fired again on every turn."""
    second_pass = wall(2026, 10, 25, 2, 10) + 3600  # 02:10+0100
    trig = Cron("30 2 * * *", BERLIN)
    assert local(trig.next_after(second_pass)) == "10-26 02:30+0100"
    # Created there: the next deadline lies ahead.
    shell = Shell(workers=1)
    shell.sched.wall_offset = second_pass
    entry, fired = add(shell, cron="30 2 * * *")
    deadline = shell.sched.next_deadline(0.0)
    assert deadline is not None and deadline > 0.0
    entry.resume(0.0, second_pass)  # and resumed there
    assert local(entry.next_tick) == "10-26 02:30+0100"
    # The first pass's tick handled late, in the second pass: one run, then
    # the loop sleeps until tomorrow.
    first_pass = wall(2026, 10, 25, 2, 0)  # 02:00+0200
    shell = Shell(workers=1)
    shell.sched.wall_offset = first_pass
    entry, fired = add(shell, cron="30 2 * * *", grace=7200.0)
    late = second_pass - first_pass
    for turn in range(5):
        at(shell, fired, late + turn * 0.01)
    assert [local(t) for t in fired.at] == ["10-25 02:10+0100"]
    assert local(entry.next_tick) == "10-26 02:30+0100"
    assert entry.deadline(late, first_pass) > late + 3600


# ---------------------------------------------------------------- misfires and catch-up


def suspended(catchup: str, grace: float | None, resume_at: float) -> tuple[ScheduleEntry, Fired]:
    """Every 60 s; the process sleeps from 0 to ``resume_at``."""
    shell = Shell(workers=4)
    entry, fired = add(shell, every=60.0, grace=grace, catchup=catchup)
    at(shell, fired, resume_at)
    return entry, fired


def test_latest_runs_the_newest_tick_within_grace_and_counts_the_rest() -> None:
    entry, fired = suspended("latest", 30.0, 610.0)  # ticks 60..600; 600 is 10 s late
    assert fired.at == [610.0]
    assert (entry.misfired, entry.skipped_catchup, entry.runs) == (9, 0, 1)
    entry, fired = suspended("latest", None, 610.0)  # no grace limit: coalesced instead
    assert (entry.misfired, entry.skipped_catchup, entry.runs) == (0, 9, 1)
    assert entry.next_tick == 660.0


def test_a_run_later_than_misfire_grace_is_skipped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry, fired = suspended("latest", 30.0, 650.0)  # even tick 600 is 50 s late
    assert fired.records == []
    assert (entry.misfired, entry.runs) == (10, 0)
    assert "misfire_grace" in caplog.text and "10 run(s) skipped" in caplog.text


def test_all_runs_every_tick_within_grace() -> None:
    entry, fired = suspended("all", 130.0, 610.0)  # 480, 540, 600 within 130 s
    assert len(fired.records) == 3
    assert (entry.misfired, entry.runs) == (7, 3)
    entry, fired = suspended("all", None, 610.0)
    assert entry.runs == 10
    entry, fired = suspended("all", None, 60.0 * (MAX_CATCHUP + 50) + 1)
    assert entry.runs == MAX_CATCHUP and entry.misfired == 50


def test_none_drops_missed_ticks_but_runs_on_time_ones() -> None:
    entry, fired = suspended("none", 30.0, 610.0)
    assert fired.records == [] and entry.skipped_catchup == 10
    entry, fired = suspended("none", 30.0, 60.5)  # one tick, on time
    assert entry.runs == 1


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.floats(min_value=0.001, max_value=400.0), min_size=1, max_size=30),
    period=st.sampled_from([1.0, 7.5, 60.0]),
    catchup=st.sampled_from(["latest", "all", "none"]),
    grace=st.one_of(st.none(), st.floats(min_value=0.001, max_value=300.0)),
)
def test_every_tick_is_run_or_counted_once(
    steps: list[float], period: float, catchup: str, grace: float | None
) -> None:
    """Whatever the gaps between loop turns: ticks run in order, each at most
    once, and every tick up to now either ran or was counted as skipped."""
    shell = Shell(workers=4)
    entry, fired = add(shell, every=period, grace=grace, catchup=catchup)
    now = 0.0
    for step in steps:
        now += step
        at(shell, fired, now)
    due_ticks = int(now // period)
    accounted = entry.runs + entry.misfired + entry.skipped_catchup + entry.skipped_overlap
    assert accounted == due_ticks
    assert fired.at == sorted(fired.at)
    assert entry.next_tick > now


# ---------------------------------------------------------------- overlap


def test_overlap_skip_counts_and_logs_a_run_that_would_overlap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shell = Shell(workers=2)
    entry, fired = add(shell, every=1.0, overlap="skip")
    fired.now = 1.0
    assert shell.turn(1.0) == [StartWorker(0)]
    assert sent(shell.boot(0, 1.0)) == [fired.records[0].task_id]
    first = fired.records[0]
    assert first.state is RUNNING
    at(shell, fired, 2.0)
    assert len(fired.records) == 1 and entry.skipped_overlap == 1
    assert "still running" in caplog.text
    shell.done(0, first, 2.5)
    at(shell, fired, 3.0)
    assert len(fired.records) == 2


def test_overlap_queue_waits_for_the_previous_run_whatever_its_outcome() -> None:
    shell = Shell(workers=2)
    _entry, fired = add(shell, every=1.0, overlap="queue")
    at(shell, fired, 1.0)
    sent(shell.boot(0, 1.0))
    at(shell, fired, 2.0)
    first, second = fired.records
    assert second.state is WAITING and second.upstream == (first.task_id,)
    shell.done(0, first, 2.5, ok=False)  # fails: the queued run goes on anyway
    assert second.state in (PENDING, RUNNING)


def test_overlap_allow_runs_side_by_side() -> None:
    shell = Shell(workers=2)
    _, fired = add(shell, every=1.0, overlap="allow")
    at(shell, fired, 1.0)
    sent(shell.boot(0, 1.0))
    at(shell, fired, 2.0)
    shell.boot(1, 2.0)
    assert [r.state for r in fired.records] == [RUNNING, RUNNING]


# ---------------------------------------------------------------- controls


def test_pause_resume_run_now_and_removal() -> None:
    shell = Shell(workers=2)
    entry, fired = add(shell, every=10.0)
    entry.paused = True
    at(shell, fired, 35.0)
    assert fired.records == [] and shell.sched.next_deadline(35.0) is None
    entry.resume(35.0, shell.sched.wall_offset)  # no catch-up of 10, 20, 30
    assert entry.next_tick == 40.0
    fired.now = 36.0
    tid = shell.sched.run_now(entry, 36.0)
    assert fired.records[-1].task_id == tid and entry.next_tick == 40.0
    del shell.sched.schedules["job"]
    at(shell, fired, 50.0)
    assert len(fired.records) == 1


def test_a_stopping_queue_fires_nothing_and_is_not_held_by_schedules() -> None:
    shell = Shell()
    _, fired = add(shell, every=1.0)
    shell.sched.stop(cancel_pending=False, deadline=None, now=0.5)
    at(shell, fired, 5.0)
    assert fired.records == []
    assert shell.sched.next_deadline(5.0) is None
    assert shell.sched.finished_stopping()


def test_fired_runs_are_kept_only_within_retention() -> None:
    shell = Shell(workers=1)
    shell.sched.config = shell.sched.config.__class__(
        num_workers=1, retain_finished=2, keep_unclaimed=True
    )
    _, fired = add(shell, every=1.0)
    for t in range(1, 6):
        at(shell, fired, float(t))
        if t == 1:
            shell.boot(0, 1.0)
        rec = fired.records[-1]
        if rec.state is RUNNING:
            shell.done(0, rec, t + 0.5)
    kept = [r.task_id for r in fired.records if r.task_id in shell.sched.tasks]
    assert len(kept) <= 3  # two retained finals, plus at most one still running
