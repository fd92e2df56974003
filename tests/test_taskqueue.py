"""The asyncio front door: the API exactly as the README shows it."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import pytest
from _tasks import Gate, add, echo_kwargs, fail_times, gated, ident, raise_value_error

import procqueue
from procqueue import (
    InvalidArgumentError,
    InvalidCallableError,
    OptionTypeError,
    QueueClosedError,
    QueueNotStartedError,
    RemoteTraceback,
    SerializationError,
    TaskCancelledError,
    TaskNotFoundError,
    TaskQueue,
    TaskState,
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_readme_quickstart() -> None:
    async def main() -> None:
        queue = TaskQueue(num_workers=2)
        await queue.start()
        task_id = await queue.submit(add, 1, 2, priority=10, max_retries=3)
        assert await queue.result(task_id) == 3
        status = queue.get_task_status(task_id)
        assert status.state is TaskState.COMPLETED
        assert status.state == "completed"
        assert status.attempts == 1
        assert status.max_retries == 3
        assert status.priority == 10
        assert status.worker_pid is not None
        assert status.submitted_at <= status.started_at <= status.finished_at  # type: ignore[operator]
        assert status.error is None
        stats = queue.get_stats()
        assert stats.submitted == 1
        assert stats.completed == 1
        assert stats.success_rate == 1.0
        assert len(stats.workers) == 2
        await queue.stop()

    run(main())


def test_kwargs_pass_through_and_reserved_names() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            tid = await q.submit(echo_kwargs, 1, x=2, y=3, priority=5)
            assert await q.result(tid) == ((1,), {"x": 2, "y": 3})
            # The escape hatch for a callable that itself takes ``priority``.
            tid = await q.submit(functools.partial(echo_kwargs, priority="mine"))
            assert await q.result(tid) == ((), {"priority": "mine"})

    run(main())


def test_lambdas_and_closures_run() -> None:
    k = 5

    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            tid = await q.submit(lambda x: x * k, 3)
            assert await q.result(tid) == 15

    run(main())


def test_exception_carries_remote_traceback() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            tid = await q.submit(raise_value_error, "boom")
            with pytest.raises(ValueError, match="boom") as info:
                await q.result(tid)
            assert isinstance(info.value.__cause__, RemoteTraceback)
            assert "raise_value_error" in str(info.value.__cause__)
            st = q.get_task_status(tid)
            assert st.state is TaskState.FAILED
            assert st.error is not None
            assert st.error.exc_type == "builtins.ValueError"
            assert st.error.message == "boom"
            assert "raise_value_error" in st.error.traceback

    run(main())


def test_bad_input_is_rejected_at_the_call() -> None:
    async def main() -> None:
        q = TaskQueue(num_workers=1)
        with pytest.raises(QueueNotStartedError):
            await q.submit(add, 1)
        async with q:
            with pytest.raises(InvalidCallableError):
                await q.submit(42)  # type: ignore[arg-type]
            with pytest.raises(OptionTypeError):
                await q.submit(add, 1, priority="high")  # type: ignore[arg-type]
            with pytest.raises(OptionTypeError):
                await q.submit(add, 1, priority=1.5)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError):
                await q.submit(add, 1, max_retries=-1)
            with pytest.raises(InvalidArgumentError):
                await q.submit(add, 1, timeout=0)
            with pytest.raises(SerializationError, match="add"):
                await q.submit(add, threading.Lock())
            # Nothing of the above was queued.
            assert q.get_stats().submitted == 0
            tid = await q.submit(add, 1, 1)
            assert await q.result(tid) == 2
        with pytest.raises(QueueClosedError):
            await q.submit(add, 1)

    run(main())
    with pytest.raises(InvalidArgumentError):
        TaskQueue(num_workers=0)
    # The wrong type of an option is a TypeError (OptionTypeError), not a
    # complaint about a callable (#7).
    with pytest.raises(OptionTypeError):
        TaskQueue(num_workers=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TaskQueue(num_workers=1, retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_workers'"):
        TaskQueue(max_workers=1)  # type: ignore[call-arg]
    # The core's internal restart policy is no keyword of the front doors.
    for door in (TaskQueue, procqueue.ProcQueue):
        with pytest.raises(OptionTypeError, match="unexpected keyword argument 'restart'"):
            door(1, restart=None)  # type: ignore[call-arg]
    with pytest.raises(OptionTypeError, match="'keep_unclaimed'"):  # its futures hold them
        procqueue.ProcQueue(1, keep_unclaimed=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        TaskQueue(num_workers=1, prefetch=-1)
    with pytest.raises(InvalidArgumentError):
        TaskQueue(num_workers=1, max_retries=-2)
    with pytest.raises(InvalidArgumentError):
        TaskQueue(num_workers=1, start_method="teleport")


def test_unknown_task_id() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            with pytest.raises(TaskNotFoundError):
                q.get_task_status(12345)
            with pytest.raises(KeyError):
                await q.result(12345)

    run(main())


def test_cancel_pending_task(gate: Gate) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1, prefetch=0) as q:
            blocker = await q.submit(gated, gate.paths, "done")
            gate.wait_started()
            victim = await q.submit(add, 1, 2)
            assert q.get_task_status(victim).state is TaskState.PENDING
            assert q.cancel(victim) is True
            with pytest.raises(TaskCancelledError):
                await q.result(victim)
            assert q.get_task_status(victim).state is TaskState.CANCELLED
            gate.release()
            assert await q.result(blocker) == "done"
            assert q.cancel(blocker) is False
            stats = q.get_stats()
            assert (stats.completed, stats.cancelled, stats.pending) == (1, 1, 0)

    run(main())


def test_cancel_running_task_kills_its_worker(gate: Gate) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            tid = await q.submit(gated, gate.paths)
            pid = gate.wait_started()
            assert q.cancel(tid)
            with pytest.raises(TaskCancelledError):
                await q.result(tid)
            assert q.get_task_status(tid).state is TaskState.CANCELLED
            # The pool goes on, on a new worker.
            after = await q.submit(procqueue_pid)
            assert await q.result(after) != pid
            assert q.get_stats().workers[0].restarts == 1

    run(main())


def procqueue_pid() -> int:
    import os

    return os.getpid()


def test_wait_and_as_completed(gate: Gate) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2) as q:
            slow = await q.submit(gated, gate.paths, "slow")
            fast = await q.submit(ident, "fast")
            done, pending = await q.wait([slow, fast], return_when=asyncio.FIRST_COMPLETED)
            assert done == {fast}
            assert pending == {slow}
            gate.wait_started()
            order = []
            gate.release()
            async for tid in q.as_completed([slow, fast]):
                order.append(tid)
            assert set(order) == {slow, fast}
            done, pending = await q.wait([slow, fast])
            assert done == {slow, fast} and not pending

    run(main())


def test_result_timeout_leaves_task_running(gate: Gate) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            tid = await q.submit(gated, gate.paths, 7)
            gate.wait_started()
            with pytest.raises(TimeoutError):
                await q.result(tid, timeout=0.01)
            assert q.get_task_status(tid).state is TaskState.RUNNING
            gate.release()
            assert await q.result(tid) == 7

    run(main())


def test_retries_then_success(counter: str) -> None:
    async def main() -> None:
        fast = procqueue.RetryPolicy(backoff_base=0.001, backoff_max=0.01)
        async with TaskQueue(num_workers=1, retry=fast) as q:
            tid = await q.submit(fail_times, counter, 2, "third time", max_retries=3)
            assert await q.result(tid) == "third time"
            st = q.get_task_status(tid)
            assert st.attempts == 3
            assert [e.exc_type for e in st.errors] == ["builtins.ValueError"] * 2
            assert st.error is None
            assert q.get_stats().retried == 2

    run(main())


def test_retries_exhausted(counter: str) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1, retry=procqueue.RetryPolicy(backoff_base=0)) as q:
            tid = await q.submit(fail_times, counter, 10, max_retries=2)
            with pytest.raises(ValueError, match="planned failure 3"):
                await q.result(tid)
            st = q.get_task_status(tid)
            assert st.state is TaskState.FAILED
            assert st.attempts == 3
            assert len(st.errors) == 3

    run(main())


def test_retry_on_filters_exceptions(counter: str) -> None:
    async def main() -> None:
        only_os = procqueue.RetryPolicy(max_retries=5, backoff_base=0, retry_on=(OSError,))
        async with TaskQueue(num_workers=1, retry=only_os) as q:
            tid = await q.submit(fail_times, counter, 10)
            with pytest.raises(ValueError):
                await q.result(tid)
            assert q.get_task_status(tid).attempts == 1

    run(main())


def test_backoff_does_not_block_other_tasks(counter: str, gate: Gate) -> None:
    async def main() -> None:
        slow_retry = procqueue.RetryPolicy(backoff_base=30, jitter=0)
        async with TaskQueue(num_workers=1, retry=slow_retry) as q:
            failing = await q.submit(fail_times, counter, 1, max_retries=1)
            other = await q.submit(ident, "not blocked")
            assert await q.result(other) == "not blocked"
            assert q.get_task_status(failing).state is TaskState.RETRYING
            assert q.get_stats().retrying == 1
            assert q.cancel(failing)
            with pytest.raises(TaskCancelledError):
                await q.result(failing)

    run(main())


def test_join_waits_for_everything() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2) as q:
            ids = [await q.submit(add, i, i) for i in range(50)]
            await q.join()
            assert all(q.get_task_status(t).state is TaskState.COMPLETED for t in ids)
            assert sum([await q.result(t) for t in ids]) == sum(2 * i for i in range(50))

    run(main())


def test_stop_drains_by_default() -> None:
    async def main() -> None:
        q = TaskQueue(num_workers=2)
        await q.start()
        ids = [await q.submit(add, i, 1) for i in range(30)]
        await q.stop()
        assert [q.get_task_status(t).state for t in ids] == [TaskState.COMPLETED] * 30
        assert sum([await q.result(t) for t in ids]) == sum(range(1, 31))

    run(main())


def test_stop_cancel_pending_and_deadline(gate: Gate) -> None:
    async def main() -> None:
        q = TaskQueue(num_workers=1, prefetch=0)
        await q.start()
        running = await q.submit(gated, gate.paths)
        gate.wait_started()
        queued = [await q.submit(add, i) for i in range(5)]
        await q.stop(cancel_pending=True, timeout=0.05)
        assert q.get_task_status(running).state is TaskState.CANCELLED
        assert {q.get_task_status(t).state for t in queued} == {TaskState.CANCELLED}
        stats = q.get_stats()
        assert stats.cancelled == 6
        assert stats.submitted == stats.cancelled

    run(main())


def test_retention_never_loses_an_unclaimed_result() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1, retain_finished=5) as q:
            ids = [await q.submit(add, i) for i in range(20)]
            await q.join()
            # Submit everything, then gather: every result is still there.
            assert [await q.result(t) for t in ids] == list(range(20))
            # Claimed results fall under the bound: the oldest claimed records go.
            with pytest.raises(TaskNotFoundError):
                q.get_task_status(ids[0])
            assert q.get_task_status(ids[-1]).state is TaskState.COMPLETED
            assert q.get_stats().completed == 20

    run(main())


def test_retention_bounds_fire_and_forget_runs() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1, retain_finished=5, keep_unclaimed=False) as q:
            ids = [await q.submit(add, i) for i in range(20)]
            await q.join()
            with pytest.raises(TaskNotFoundError):
                q.get_task_status(ids[0])
            assert await q.result(ids[-1]) == 19
            assert len(q._engine.core.tasks) <= 5

    run(main())


def test_subscribe_sees_every_transition() -> None:
    async def main() -> None:
        seen: list[tuple[int, str]] = []
        async with TaskQueue(num_workers=1) as q:
            unsubscribe = q.subscribe(lambda st: seen.append((st.task_id, st.state.value)))
            tid = await q.submit(add, 1)
            await q.result(tid)
            unsubscribe()
        assert seen == [(tid, "pending"), (tid, "running"), (tid, "completed")]

    run(main())


def test_a_crashing_listener_is_ignored() -> None:
    def bad(_: object) -> None:
        raise RuntimeError("listener bug")

    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            q.subscribe(bad)
            tid = await q.submit(add, 2)
            assert await q.result(tid) == 2

    run(main())


def test_public_names_exported_once() -> None:
    names = procqueue.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(procqueue, name) is not None
        assert not name.startswith("_")


def test_join_returns_when_every_task_was_cancelled_before_any_worker_started() -> None:
    """Regression: the last task finished by a command (cancel), not by a worker
    event, left join() waiting forever on a coordinator with nothing to do."""

    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            ids = [await q.submit(add, i) for i in range(3)]
            joined = asyncio.ensure_future(q.join())
            await asyncio.sleep(0)  # join() registers before the cancels land
            for t in ids:
                q.cancel(t)
            await asyncio.wait_for(joined, 30)
            assert {q.get_task_status(t).state for t in ids} <= {
                TaskState.CANCELLED,
                TaskState.COMPLETED,
            }

    run(main())
