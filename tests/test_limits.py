"""Worker limits: recycling after N tasks, memory limits, idle exit."""

from __future__ import annotations

import asyncio

import psutil
import pytest
from _tasks import Gate, add, allocate_and_hold, allocate_and_return, pid

from procqueue import (
    InvalidArgumentError,
    MemoryLimitExceeded,
    ProcQueue,
    RetryPolicy,
    TaskQueue,
    TaskState,
    WorkerLimits,
    task_id,
)

MB = 2**20


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_max_tasks_per_child_on_every_start_method(method: str) -> None:
    with ProcQueue(max_workers=1, max_tasks_per_child=3, start_method=method) as pool:
        pids = [pool.submit(pid).result() for _ in range(7)]
        assert pids[0] == pids[1] == pids[2] != pids[3]
        assert pids[3] == pids[4] == pids[5] != pids[6]
        stats = pool.get_stats()
        assert stats.workers[0].recycled == 2
        assert stats.workers[0].restarts == 0


def test_max_tasks_per_child_with_prefetch_never_overruns() -> None:
    with ProcQueue(max_workers=2, max_tasks_per_child=5, prefetch=10) as pool:
        pids = [f.result() for f in [pool.submit(pid) for _ in range(40)]]
        counts: dict[int, int] = {}
        for p in pids:
            counts[p] = counts.get(p, 0) + 1
        assert max(counts.values()) <= 5
        assert sum(counts.values()) == 40


def test_soft_memory_limit_recycles_between_tasks() -> None:
    limits = WorkerLimits(memory_soft=60 * MB)
    with ProcQueue(max_workers=1, limits=limits) as pool:
        first = pool.submit(allocate_and_return, 80).result()
        second = pool.submit(pid).result()
        assert first != second
        assert pool.get_stats().workers[0].recycled == 1
        # A lean worker is left alone.
        assert pool.submit(pid).result() == second


def test_hard_memory_limit_kills_the_task_and_retries(gate: Gate) -> None:
    limits = WorkerLimits(memory_hard=150 * MB, memory_check_interval=0.02)
    with ProcQueue(max_workers=1, limits=limits, retry=RetryPolicy(backoff_base=0)) as pool:
        # Killed while it allocates or while it holds the memory at the gate,
        # which is never opened; the retry on a fresh worker grows too big too.
        fut = pool.submit_task(allocate_and_hold, 200, gate.paths, max_retries=1)
        with pytest.raises(MemoryLimitExceeded) as info:
            fut.result()
        assert isinstance(info.value, MemoryError)
        assert info.value.rss is not None and info.value.rss > 150 * MB
        st = pool.get_task_status(task_id(fut))
        assert st.attempts == 2
        assert [e.exc_type for e in st.errors] == ["procqueue.errors.MemoryLimitExceeded"] * 2
        assert pool.submit(add, 1, 1).result() == 2


def test_idle_workers_exit_and_come_back_on_demand() -> None:
    async def main() -> None:
        limits = WorkerLimits(idle_timeout=0.05)
        async with TaskQueue(num_workers=2, limits=limits) as q:
            # Two tasks at once: workers start on demand, one per waiting task.
            a, b = await q.submit(pid), await q.submit(pid)
            first = await q.result(a)
            await q.result(b)
            pids = [w.pid for w in q.get_stats().workers if w.pid]
            assert 1 <= len(pids) <= 2
            workers = []
            for p in pids:
                try:
                    workers.append(psutil.Process(p))
                except psutil.NoSuchProcess:
                    pass  # already gone: that is the point
            # They exit on their own once idle (wait_procs blocks on their exit).
            _, alive = psutil.wait_procs(workers, timeout=10)
            assert not alive
            again = await q.result(await q.submit(pid))
            assert again not in {first, *pids}
            assert q.get_task_status(1).state is TaskState.COMPLETED
            assert all(w.restarts == 0 for w in q.get_stats().workers)

    asyncio.run(main())


def test_limits_are_validated() -> None:
    with pytest.raises(InvalidArgumentError):
        WorkerLimits(max_tasks_per_child=0)
    with pytest.raises(InvalidArgumentError):
        WorkerLimits(idle_timeout=0)
    with pytest.raises(InvalidArgumentError):
        ProcQueue(max_workers=1, max_tasks_per_child=-1)
