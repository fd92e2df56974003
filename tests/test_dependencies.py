"""Task dependencies end to end, on both front doors: after=, result_of,
futures as arguments, failure propagation, the all_done trigger."""

from __future__ import annotations

import asyncio

import pytest
from _tasks import add, ident, raise_value_error

from procqueue import (
    InvalidArgumentError,
    OptionTypeError,
    ProcQueue,
    TaskCancelledError,
    TaskNotFoundError,
    TaskQueue,
    TaskState,
    UpstreamFailedError,
    result_of,
    task_id,
)

BOUND = 30.0


def test_diamond_passes_results_along() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2) as q:
            top = await q.submit(add, 1, 1)  # 2
            left = await q.submit(add, result_of(top), 10)  # 12
            right = await q.submit(add, result_of(top), 20)  # 22
            # Markers inside a list and a dict, and as a keyword argument.
            both = await q.submit(ident, [result_of(left), {"r": result_of(right)}])
            total = await q.submit(add, result_of(left), b=result_of(right))  # 34
            assert q.get_task_status(total).after == (left, right)
            assert await q.result(both, timeout=BOUND) == [12, {"r": 22}]
            assert await q.result(total, timeout=BOUND) == 34
            stats = q.get_stats()
            assert stats.completed == 5 and stats.waiting == 0

    asyncio.run(main())


def test_failure_cascades_through_three_levels() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            bad = await q.submit(raise_value_error, "boom", max_retries=1)
            one = await q.submit(add, result_of(bad), 1)
            two = await q.submit(add, result_of(one), 1)
            three = await q.submit(add, 0, after=[two])
            cleanup = await q.submit(ident, result_of(bad), trigger="all_done")
            for tid in (one, two, three):
                with pytest.raises(UpstreamFailedError) as info:
                    await q.result(tid, timeout=BOUND)
                assert q.get_task_status(tid).state is TaskState.FAILED
                assert q.get_task_status(tid).attempts == 0  # never ran
            assert info.value.upstream_id == two
            with pytest.raises(UpstreamFailedError) as first:
                await q.result(one)
            assert first.value.upstream_id == bad
            assert isinstance(first.value.__cause__, ValueError)
            # all_done runs anyway, and gets the upstream's exception as the value.
            err = await q.result(cleanup, timeout=BOUND)
            assert isinstance(err, ValueError) and str(err) == "boom"
            assert q.get_task_status(bad).attempts == 2  # retries invisible downstream

    asyncio.run(main())


def test_cancel_propagates_and_waiting_tasks_are_cancellable() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            parked = await q.submit(add, 1, delay=3600)
            child = await q.submit(add, result_of(parked), 1)
            grandchild = await q.submit(add, 0, after=[child])
            other = await q.submit(add, 5, after=[parked])
            assert q.get_task_status(child).state is TaskState.WAITING
            assert q.get_stats().waiting == 3
            assert q.cancel(other)
            assert q.cancel(parked)
            for tid in (child, grandchild, other):
                with pytest.raises(TaskCancelledError):
                    await q.result(tid, timeout=BOUND)
                assert q.get_task_status(tid).state is TaskState.CANCELLED

    asyncio.run(main())


def test_procqueue_futures_as_arguments_and_after() -> None:
    with ProcQueue(max_workers=2) as pool:
        a = pool.submit(add, 2, 3)
        b = pool.submit(add, a, 1)  # a future of this pool as an argument
        c = pool.submit_task(ident, {"a": a, "b": [b]}, after=[a])
        assert c.result(timeout=BOUND) == {"a": 5, "b": [6]}
        done = pool.submit(add, a, 100)  # a finished future: its value at once
        assert done.result(timeout=BOUND) == 105
        assert pool.get_task_status(task_id(done)).after == ()
        with ProcQueue(max_workers=1) as other:
            foreign = other.submit(add, 1)
            with pytest.raises(InvalidArgumentError):
                pool.submit_task(add, 1, after=[foreign])
            foreign.result(timeout=BOUND)


def test_bad_dependencies_are_rejected_at_the_call() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            with pytest.raises(TaskNotFoundError):
                await q.submit(add, 1, after=[999])
            with pytest.raises(TaskNotFoundError):
                await q.submit(add, result_of(998), 1)
            with pytest.raises(OptionTypeError):
                await q.submit(add, 1, after=5)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError):
                await q.submit(add, 1, after=[], trigger="sometimes")
            for bad in (["1"], [True], [1.0]):
                with pytest.raises(OptionTypeError):
                    await q.submit(add, 1, after=bad)  # type: ignore[arg-type]
            assert q.get_stats().submitted == 0  # nothing of the above was queued
            first = await q.submit(add, 1)
            second = await q.submit(add, 2)
            # Repeated ids count once, in the order given.
            both = await q.submit(add, 3, after=[second, first, second])
            assert q.get_task_status(both).after == (second, first)
            assert await q.result(both, timeout=BOUND) == 3
            assert await q.result(first, timeout=BOUND) == 1
            # An upstream that already completed: the dependent runs at once.
            later = await q.submit(add, result_of(first), 1)
            assert await q.result(later, timeout=BOUND) == 2

    asyncio.run(main())
