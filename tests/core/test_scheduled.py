"""Delayed tasks (``delay``/``eta``) in the pure core, with a fake clock: a
``scheduled`` task blocks nobody, enters the ready heap at its due time in
priority order, and can be cancelled, stopped for, or failed by a break."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduler_machine import Shell, sent

from procqueue import RetryPolicy
from procqueue._core.events import Exited, InitFailed, Started, StartWorker
from procqueue._core.records import TaskState, _TaskRecord

SCHEDULED, PENDING, RUNNING = TaskState.SCHEDULED, TaskState.PENDING, TaskState.RUNNING


def delayed(shell: Shell, due: float, priority: int = 0) -> _TaskRecord:
    rec = _TaskRecord(
        shell.next_id, f"t{shell.next_id}", priority, (b"f", []), RetryPolicy(), None, 0.0, None
    )
    shell.next_id += 1
    rec.schedule(due, 1000.0 + due)
    shell.sched.admit(rec)
    return rec


def test_a_scheduled_task_waits_off_the_heap_and_blocks_nobody() -> None:
    shell = Shell(prefetch=0)
    later = delayed(shell, 5.0, priority=10)
    now_ = shell.submit(0)
    assert later.state is SCHEDULED and shell.sched.tally.count(SCHEDULED) == 1
    assert shell.sched.heap.live == 1  # only the one due now
    assert shell.turn(0.0) == [StartWorker(0)]  # one worker for the one due task
    assert sent(shell.boot(0)) == [now_.task_id]
    shell.done(0, now_, 1.0)
    assert shell.sched.next_deadline(1.0) == 5.0
    assert sent(shell.turn(4.999)) == [] and later.state is SCHEDULED
    assert sent(shell.turn(5.0)) == [later.task_id] and later.state is RUNNING
    assert later.snapshot().due_at == 1005.0


def test_due_tasks_enter_the_heap_in_priority_then_fifo_order() -> None:
    shell = Shell(prefetch=0)
    blocker = shell.submit(0)
    assert shell.turn(0.0) == [StartWorker(0)]
    assert sent(shell.boot(0)) == [blocker.task_id]
    a = delayed(shell, 2.0, priority=0)
    b = delayed(shell, 1.0, priority=5)  # due first, but waits as long as a
    c = delayed(shell, 2.0, priority=1)
    shell.turn(2.0)
    assert [r.state for r in (a, b, c)] == [PENDING] * 3
    order = sent(shell.done(0, blocker, 2.0))
    for _ in range(2):
        order += sent(shell.done(0, shell.sched.tasks[order[-1]], 3.0))
    assert order == [b.task_id, c.task_id, a.task_id]


def test_cancel_a_scheduled_task() -> None:
    shell = Shell()
    rec = delayed(shell, 10.0)
    shell.sched.cancel(rec.task_id, 1.0)
    assert rec.state is TaskState.CANCELLED
    assert shell.sched.next_deadline(1.0) is None  # its stale entry is dropped
    assert shell.turn(10.0) == [] and shell.sched.is_idle()


def test_stop_waits_for_scheduled_tasks_unless_cancelling() -> None:
    shell = Shell()
    rec = delayed(shell, 3.0)
    shell.sched.stop(cancel_pending=False, deadline=None, now=0.0)
    assert not shell.sched.finished_stopping()
    assert shell.turn(3.0) == [StartWorker(0)]
    assert sent(shell.boot(0, 3.0)) == [rec.task_id]
    shell.done(0, rec, 4.0)
    assert shell.sched.finished_stopping()

    other = Shell()
    late = delayed(other, 3.0)
    other.sched.stop(cancel_pending=True, deadline=None, now=0.0)
    assert late.state is TaskState.CANCELLED and other.sched.finished_stopping()


def test_a_broken_pool_fails_scheduled_tasks() -> None:
    shell = Shell()
    due_now = shell.submit(0)
    later = delayed(shell, 60.0)
    shell.turn(0.0)
    for _ in range(3):  # three initializer failures in a row
        shell.turn(0.0, Started(0, 7), InitFailed(0, "boom"), Exited(0, 3))
    assert shell.sched.broken is not None
    assert due_now.state is TaskState.FAILED and later.state is TaskState.FAILED


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    tasks=st.lists(
        st.tuples(st.floats(0, 10, allow_nan=False), st.integers(-2, 2)), min_size=1, max_size=20
    ),
    steps=st.lists(st.floats(0, 3, allow_nan=False), min_size=1, max_size=10),
)
def test_never_dispatched_before_due_and_all_run(
    tasks: list[tuple[float, int]], steps: list[float]
) -> None:
    shell = Shell(prefetch=0)
    recs = [delayed(shell, due, prio) for due, prio in tasks]
    now = 0.0
    running: _TaskRecord | None = None
    for step in [*steps, 20.0, 20.0, *([0.0] * len(recs))]:
        now += step
        actions = shell.turn(now)
        if running is not None:
            actions += shell.done(0, running, now)
            running = None
        if StartWorker(0) in actions:  # the first task came due: boot a worker
            actions += shell.boot(0, now)
        for tid in sent(actions):
            rec = shell.sched.tasks[tid]
            assert rec.due is not None and now >= rec.due  # never early
            waiting = [r for r in recs if r.state is PENDING]
            # Among those due, the best goes first.
            assert all((-r.priority, r.task_id) > (-rec.priority, rec.task_id) for r in waiting)
            running = rec
    assert all(r.state is TaskState.COMPLETED for r in recs)
    assert shell.sched.tally.count(SCHEDULED) == 0
