"""Properties of the scheduler over random workloads (hypothesis), run on the
real engine with real worker processes."""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path

from _tasks import Gate, flaky, gated, record_order
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procqueue import RetryPolicy, TaskQueue, TaskState, TaskStatus

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(priorities=st.lists(st.integers(min_value=-3, max_value=3), min_size=1, max_size=25))
def test_one_worker_starts_tasks_in_priority_then_fifo_order(priorities: list[int]) -> None:
    async def main(gate: Gate) -> list[int]:
        async with TaskQueue(num_workers=1, prefetch=0) as q:
            blocker = await q.submit(gated, gate.paths, priority=100)
            gate.wait_started()
            ids = [await q.submit(record_order, i, priority=p) for i, p in enumerate(priorities)]
            gate.release()
            await q.result(blocker)
            results = [await q.result(t) for t in ids]
        ran = sorted(results, key=lambda r: r[1])
        return [tag for tag, _ in ran]

    with tempfile.TemporaryDirectory() as d:
        gate = Gate(Path(d))
        try:
            order = asyncio.run(main(gate))
        finally:
            gate.close()
    expected = sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))
    assert order == expected


task_spec = st.tuples(
    st.integers(min_value=0, max_value=3),  # failures before success
    st.integers(min_value=0, max_value=2),  # max_retries
    st.booleans(),  # fail by crashing the worker instead of raising
    st.booleans(),  # cancel right after submitting
)


@SETTINGS
@given(specs=st.lists(task_spec, min_size=1, max_size=12), workers=st.integers(1, 2))
def test_every_task_ends_in_exactly_one_final_state(
    specs: list[tuple[int, int, bool, bool]], workers: int
) -> None:
    finals: Counter[int] = Counter()
    transitions: list[TaskStatus] = []

    def listener(status: TaskStatus) -> None:
        transitions.append(status)
        if status.state.is_final:
            finals[status.task_id] += 1

    async def main(d: str) -> None:
        async with TaskQueue(num_workers=workers, retry=RetryPolicy(backoff_base=0)) as q:
            q.subscribe(listener)
            ids = []
            for n, (fails, retries, crash, cancel) in enumerate(specs):
                tid = await q.submit(flaky, f"{d}/c{n}", fails, crash, n, max_retries=retries)
                ids.append(tid)
                if cancel:
                    q.cancel(tid)
            await q.join()
            stats = q.get_stats()
            for tid, (fails, retries, _crash, cancel) in zip(ids, specs):
                st_ = q.get_task_status(tid)
                assert st_.state.is_final
                assert 0 <= st_.attempts <= retries + 1
                if st_.state is TaskState.COMPLETED:
                    assert st_.attempts == fails + 1
                    assert await q.result(tid) == ids.index(tid)
                elif st_.state is TaskState.FAILED:
                    assert fails > retries
                    assert st_.attempts == retries + 1
                    assert len(st_.errors) == retries + 1
                else:
                    assert cancel
            assert stats.pending == stats.running == stats.retrying == 0
            assert stats.submitted == stats.completed + stats.failed + stats.cancelled == len(specs)
            assert stats.completed == sum(
                1 for t in ids if q.get_task_status(t).state is TaskState.COMPLETED
            )

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(d))
    # Listeners run in their own thread; once stop() returned, each has seen
    # every status: one final status per task, never left again.
    assert all(finals[t] == 1 for t in {s.task_id for s in transitions})
    assert len(finals) == len(specs)
    seen_final: set[int] = set()
    for status in transitions:
        assert status.task_id not in seen_final
        if status.state.is_final:
            seen_final.add(status.task_id)


@SETTINGS
@given(n=st.integers(1, 40), workers=st.integers(1, 3))
def test_stats_add_up_while_running(n: int, workers: int) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=workers) as q:
            for i in range(n):
                await q.submit(record_order, i)
                s = q.get_stats()
                total = (
                    s.scheduled
                    + s.pending
                    + s.running
                    + s.retrying
                    + s.completed
                    + s.failed
                    + s.cancelled
                )
                assert total == s.submitted == i + 1
            await q.join()
            s = q.get_stats()
            assert s.completed == n

    asyncio.run(main())
