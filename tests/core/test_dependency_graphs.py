"""Random task graphs with random failures, on the pure core with a fake
clock: every task ends in exactly one final state; no task starts before its
upstream tasks have ended; under the default trigger no dependent of a failed
or cancelled upstream runs; under all_done every dependent runs."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduler_machine import Shell, sent

from procqueue import RetryPolicy
from procqueue._core.deps import bind
from procqueue._core.events import Done, Started, StartWorker
from procqueue._core.records import TaskState, _TaskRecord

FINAL = {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED}

#: One task: (upstream picks as indices into earlier tasks, fails?, all_done?, cancel?)
node = st.tuples(
    st.lists(st.integers(0, 10**6), max_size=3), st.booleans(), st.booleans(), st.booleans()
)


def _bind(payload: object, values: dict[int, object]) -> object:
    return ("bound", bind(sorted(values), values))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(nodes=st.lists(node, min_size=1, max_size=25), workers=st.integers(1, 3))
def test_random_graphs_end_once_in_order(
    nodes: list[tuple[list[int], bool, bool, bool]], workers: int
) -> None:
    shell = Shell(workers=workers, prefetch=0)
    shell.sched.bind_inputs = _bind
    recs: list[_TaskRecord] = []
    for i, (picks, _fails, all_done, _cancel) in enumerate(nodes):
        rec = _TaskRecord(i + 1, f"t{i + 1}", 0, (b"f", []), RetryPolicy(), None, 0.0, None)
        if i:
            ups = sorted({recs[p % i].task_id for p in picks})
            if ups:
                rec.upstream = tuple(ups)
                rec.all_done = all_done
                rec.inputs = dict.fromkeys(ups[:1])  # one of them passes its result
        shell.sched.admit(rec, 0.0)
        recs.append(rec)
    for rec, (_picks, _fails, _all_done, cancel) in zip(recs, nodes):
        if cancel and rec.state is TaskState.WAITING:
            shell.sched.cancel(rec.task_id, 0.0)

    started: list[int] = []
    ended_at: dict[int, int] = {}  # task id -> step it became final
    finals: Counter[int] = Counter()
    step = 0

    def observe(actions: list[object]) -> None:
        for tid in sent(actions):  # type: ignore[arg-type]
            rec = shell.sched.tasks[tid]
            for up in rec.upstream:  # never before every upstream ended
                assert recs[up - 1].state in FINAL, f"task {tid} started before upstream {up}"
            started.append(tid)
        for a in actions:
            if isinstance(a, StartWorker):
                observe(shell.turn(float(step), Started(a.slot, 100 + a.slot)))
                observe(shell.boot(a.slot, float(step)))

    observe(shell.turn(0.0))
    while True:
        step += 1
        for rec in recs:
            if rec.state in FINAL and rec.task_id not in ended_at:
                ended_at[rec.task_id] = step
                finals[rec.task_id] += 1
        busy = [(s.index, s.inflight[0]) for s in shell.sched.slots if s.inflight]
        if not busy:
            break
        slot, rec = busy[0]
        fails = nodes[rec.task_id - 1][1]
        value = ValueError("boom") if fails else f"r{rec.task_id}"
        observe(shell.turn(float(step), Done(slot, rec.task_id, not fails, value, "", 0.0, 0.0)))
    assert all(r.state in FINAL for r in recs)
    assert all(finals[r.task_id] == 1 for r in recs)
    assert len(started) == len(set(started))  # nobody ran twice (no retries here)
    for rec in recs:
        ups = [recs[u - 1] for u in rec.upstream]
        if not ups or rec.all_done:
            continue
        if any(u.state is not TaskState.COMPLETED for u in ups):
            assert rec.task_id not in started  # a failed/cancelled upstream: never ran
            assert rec.state in (TaskState.FAILED, TaskState.CANCELLED)
        elif rec.state is not TaskState.CANCELLED:
            assert rec.task_id in started
    tally = shell.sched.tally
    assert sum(tally.by_state) == tally.submitted == len(recs)
    assert tally.count(TaskState.WAITING) == 0


def test_a_long_chain_cascades_without_recursion() -> None:
    shell = Shell()
    n = 5000  # far past the interpreter's recursion limit
    first = shell.submit(0)
    prev = first
    for i in range(2, n + 1):
        rec = _TaskRecord(i, f"t{i}", 0, (b"f", []), RetryPolicy(), None, 0.0, None)
        rec.upstream = (prev.task_id,)
        shell.sched.admit(rec, 0.0)
        prev = rec
    shell.next_id = n + 1
    shell.sched.cancel(first.task_id, 0.0)
    assert all(r.state is TaskState.CANCELLED for r in shell.sched.tasks.values())
