"""Regressions for bugs an independent review found in dependencies and limits."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from test_scheduler_machine import Shell, sent

from procqueue import Concurrency, PoolBrokenError, RetryPolicy
from procqueue._core.records import TaskState, _TaskRecord


def mk(
    shell: Shell,
    *,
    key: str | None = None,
    after: tuple[int, ...] = (),
    all_done: bool = False,
    needs: tuple[int, ...] = (),
    priority: int = 0,
    now: float = 0.0,
) -> _TaskRecord:
    rec = _TaskRecord(
        shell.next_id, f"t{shell.next_id}", priority, (b"f", []), RetryPolicy(), None, 0.0, None
    )
    shell.next_id += 1
    rec.limit_key = key
    if after:
        rec.upstream, rec.all_done = after, all_done
        if needs:
            rec.inputs = dict.fromkeys(needs)
    shell.sched.admit(rec, now)
    return rec


def test_a_break_with_an_all_done_dependent_still_finishes_stopping() -> None:
    shell = Shell()
    a = mk(shell)
    b = mk(shell, after=(a.task_id,), all_done=True)
    shell.sched._break(PoolBrokenError("x"), 1.0)
    shell.turn(2.0)
    assert a.state is b.state is TaskState.FAILED
    assert shell.sched.heap.live == 0 and shell.sched.finished_stopping()


def test_a_dependent_admitted_before_the_upstream_future_is_settled_gets_its_value() -> None:
    shell = Shell(prefetch=0)
    bound: dict[int, Any] = {}
    shell.sched.bind_inputs = lambda payload, values: (bound.update(values), payload)[1]
    a = mk(shell)
    a.future = Future()  # someone awaits it; the shell settles it after the lock
    shell.turn(0.0)
    shell.boot(0)
    shell.done(0, a, 1.0)
    assert a.state is TaskState.COMPLETED and not a.future.done()
    mk(shell, after=(a.task_id,), needs=(a.task_id,), now=1.0)
    assert bound == {a.task_id: ("r1", None)}  # linked after the fact: no frame to forward


def test_a_released_task_waiting_for_a_worker_does_not_spin_or_drain_the_fifo() -> None:
    shell = Shell(workers=2, prefetch=0, key_limits={"k": Concurrency(1)})
    keyed = [mk(shell, key="k") for _ in range(4)]
    mk(shell)  # unkeyed: keeps the other worker busy
    shell.turn(0.0)
    shell.boot(0)
    shell.boot(1)
    urgent = mk(shell, priority=5, now=0.5)  # takes the worker the key frees
    shell.done(0, keyed[0], 1.0)
    for _ in range(3):
        assert shell.sched.next_deadline(1.0) is None  # nothing to wait for but an event
        shell.turn(1.0)
    assert shell.sched.parked == 2  # one released to the heap, the rest still parked
    order = []
    now = 2.0
    actions = shell.done(0, urgent, now)
    while True:
        order += [t for t in sent(actions) if shell.sched.tasks[t].limit_key]
        busy = [s for s in shell.sched.slots if s.inflight]
        if not busy:
            break
        now += 1
        actions = shell.done(busy[0].index, busy[0].inflight[0], now)
    assert order == [k.task_id for k in keyed[1:]]  # FIFO within the key kept
