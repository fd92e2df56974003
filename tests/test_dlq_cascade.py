"""``dlq.requeue(..., cascade=True)``: a dead letter's dependents, ended with
``UpstreamFailedError`` by its failure, come back as new tasks waiting on the
new ids, with their ``result_of`` markers moved along; without ``cascade``
they stay failed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _tasks import Gate, add, fail_times, gated, ident

from procqueue import (
    InvalidArgumentError,
    ProcQueue,
    RetryPolicy,
    TaskNotFoundError,
    TaskQueue,
    TaskState,
    UpstreamFailedError,
    result_of,
    task_id,
)

NO_WAIT = RetryPolicy(backoff_base=0)


def test_cascade_rearms_a_chain_with_its_results_and_leaves_all_done_tasks_alone(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2, retry=NO_WAIT) as q:
            root = await q.submit(fail_times, str(tmp_path / "c"), 1, 10, max_retries=0)
            a = await q.submit(add, result_of(root), 1)  # 11 once root gives 10
            b = await q.submit(ident, {"v": [result_of(a)]}, after=[root])  # nested marker
            cleanup = await q.submit(ident, "cleaned", after=[root], trigger="all_done")
            with pytest.raises(UpstreamFailedError):
                await q.result(b)
            assert await q.result(cleanup) == "cleaned"

            ids = q.dlq.requeue(root, cascade=True)
            assert set(ids) == {root, a, b}  # the all_done task ran: not re-armed
            assert await q.result(ids[b]) == {"v": [11]}
            assert await q.result(ids[root]) == 10
            assert q.get_task_status(ids[b]).after == (ids[root], ids[a])
            # The old tasks stay as they ended; the letter left the DLQ.
            assert q.get_task_status(a).state is TaskState.FAILED
            assert q.dlq.list() == []

    asyncio.run(main())


def test_without_cascade_the_dependents_stay_failed(tmp_path: Path) -> None:
    with ProcQueue(max_workers=1, retry=NO_WAIT) as pool:
        root = pool.submit_task(fail_times, str(tmp_path / "c"), 1, 5, max_retries=0)
        dep = pool.submit(add, root, 1)  # a future of the pool passes its result
        with pytest.raises(UpstreamFailedError):
            dep.result()
        new = pool.dlq.requeue(task_id(root))
        assert isinstance(new, int)
        assert pool.future(new).result() == 5
        assert pool.get_task_status(task_id(dep)).state is TaskState.FAILED


def test_cascade_on_procqueue_gives_new_futures_by_id(tmp_path: Path) -> None:
    with ProcQueue(max_workers=1, retry=NO_WAIT) as pool:
        root = pool.submit_task(fail_times, str(tmp_path / "c"), 1, 5, max_retries=0)
        mid = pool.submit(add, root, 1)
        leaf = pool.submit(add, mid, 1)
        with pytest.raises(UpstreamFailedError):
            leaf.result()
        ids = pool.dlq.requeue(task_id(root), cascade=True)
        assert pool.future(ids[task_id(leaf)]).result() == 7


def test_cascade_refuses_when_another_upstream_was_dropped(tmp_path: Path) -> None:
    with ProcQueue(max_workers=1, retry=NO_WAIT, retain_finished=2) as pool:
        other = pool.submit(add, 1, 1)
        assert other.result() == 2
        root = pool.submit_task(fail_times, str(tmp_path / "c"), 1, 5, max_retries=0)
        dep = pool.submit_task(add, root, 1, after=[other])
        with pytest.raises(UpstreamFailedError):
            dep.result()
        for i in range(3):  # push `other` out of the retention window
            assert pool.submit(add, i).result() == i
        with pytest.raises(TaskNotFoundError, match="no longer known"):
            pool.dlq.requeue(task_id(root), cascade=True)
        assert [d.task_id for d in pool.dlq.list()] == [task_id(root)]  # not lost


def test_cascade_rearms_a_diamond_with_the_branch_that_completed(
    tmp_path: Path, gate: Gate
) -> None:
    """``merge(left, right)`` (futures as arguments), ``right`` failed: the
    re-armed merge takes ``left``'s value as it was passed before (the
    record has handed it to ``left``'s future since) and waits on the new
    ``right`` alone; nothing is admitted unless all of it can be."""
    with ProcQueue(max_workers=2, retry=NO_WAIT) as pool:
        left = pool.submit(gated, gate.paths, 2)
        gate.wait_started()
        right = pool.submit_task(
            fail_times, str(tmp_path / "c"), 1, 40, max_retries=0, after=[left]
        )
        merge = pool.submit(add, left, right)  # linked while left runs
        gate.release()
        with pytest.raises(UpstreamFailedError):
            merge.result()
        assert left.result() == 2
        ids = pool.dlq.requeue(task_id(right), cascade=True)
        assert set(ids) == {task_id(right), task_id(merge)}
        assert pool.future(ids[task_id(merge)]).result() == 42
        assert pool.get_task_status(ids[task_id(merge)]).after == (ids[task_id(right)],)
        assert pool.dlq.list() == []


def test_cascade_rearms_a_diamond_on_taskqueue(tmp_path: Path, gate: Gate) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2, retry=NO_WAIT) as q:
            left = await q.submit(gated, gate.paths, 2)
            gate.wait_started()
            # Both linked while left runs: merge is passed left's value when
            # it completes, then right (after left) fails.
            right = await q.submit(
                fail_times, str(tmp_path / "c"), 1, 40, max_retries=0, after=[left]
            )
            merge = await q.submit(add, result_of(left), result_of(right))
            gate.release()
            with pytest.raises(UpstreamFailedError):
                await q.result(merge)
            ids = q.dlq.requeue(right, cascade=True)
            assert await q.result(ids[merge]) == 42

    asyncio.run(main())


def test_cascade_passes_a_future_argument_whose_upstream_ended_since(
    tmp_path: Path, gate: Gate
) -> None:
    """``merge(left, right)``: right failed while left ran, and left's value
    then went to its own future. The re-armed merge keeps that future, and
    takes the value from it."""
    with ProcQueue(max_workers=2, retry=NO_WAIT) as pool:
        left = pool.submit(gated, gate.paths, 2)
        gate.wait_started()
        right = pool.submit_task(fail_times, str(tmp_path / "c"), 1, 40, max_retries=0)
        merge = pool.submit(add, left, right)
        with pytest.raises(UpstreamFailedError):
            merge.result()
        gate.release()
        assert left.result() == 2
        ids = pool.dlq.requeue(task_id(right), cascade=True)
        assert pool.future(ids[task_id(merge)]).result() == 42


def test_cascade_admits_nothing_when_a_dependent_cannot_take_a_value(
    tmp_path: Path, gate: Gate
) -> None:
    """``merge(result_of(left), right)`` by id: right failed while left ran,
    and left's value then went to its own future, which merge was not given.
    The requeue raises and admits nothing (not the new ``right`` either)."""
    with ProcQueue(max_workers=2, retry=NO_WAIT) as pool:
        left = pool.submit(gated, gate.paths, 2)
        gate.wait_started()
        right = pool.submit_task(fail_times, str(tmp_path / "c"), 1, 40, max_retries=0)
        merge = pool.submit(add, result_of(task_id(left)), right)
        with pytest.raises(UpstreamFailedError):
            merge.result()
        gate.release()
        assert left.result() == 2
        with pytest.raises(InvalidArgumentError, match="no longer held"):
            pool.dlq.requeue(task_id(right), cascade=True)
        assert [d.task_id for d in pool.dlq.list()] == [task_id(right)]
        stats = pool.get_stats()
        assert (stats.pending, stats.waiting, stats.running) == (0, 0, 0)


def test_cascade_rearms_branches_of_unequal_depth_in_order(tmp_path: Path) -> None:
    """``d(b, c3)`` with ``b`` one step below the letter and ``c3`` three: the
    re-armed ``d`` waits on the new ``c3`` (breadth-first order linked it to
    the old, failed one, and it failed at once)."""
    with ProcQueue(max_workers=1, retry=NO_WAIT) as pool:
        root = pool.submit_task(fail_times, str(tmp_path / "c"), 1, 1, max_retries=0)
        c1 = pool.submit(add, root, 1)
        b = pool.submit(add, root, 1)
        c2 = pool.submit(add, c1, 1)
        c3 = pool.submit(add, c2, 1)
        d = pool.submit(add, b, c3)
        with pytest.raises(UpstreamFailedError):
            d.result()
        ids = pool.dlq.requeue(task_id(root), cascade=True)
        assert pool.future(ids[task_id(d)]).result() == 2 + 4
