"""The fault catalogue: whatever a task does, that task gets a clear error, the
pool goes on serving, and (autouse no_leaks) nothing is left behind."""

from __future__ import annotations

import os
import signal
import threading

import psutil
import pytest
from _tasks import (
    Gate,
    add,
    big_result,
    close_stdio,
    fork_in_task,
    gated,
    pid,
    raise_unpicklable_exception,
    recurse,
    spawn_tree_and_hang,
    stop_self,
)

from procqueue import (
    ProcQueue,
    TaskCancelledError,
    TaskQueue,
    TaskState,
    TaskStatus,
    TaskTimeoutError,
    UnpicklableTaskError,
    WorkerCrashedError,
    task_id,
)


class Custom(BaseException):
    pass


def raise_custom() -> None:
    raise Custom("not an Exception")


def spin() -> None:
    while True:
        pass


def test_base_exception_subclass_is_the_tasks_error() -> None:
    with ProcQueue(max_workers=1) as pool:
        before = pool.submit(pid).result()
        with pytest.raises(Custom):
            pool.submit(raise_custom).result()
        assert pool.submit(pid).result() == before


def test_busy_infinite_loop_hits_its_timeout() -> None:
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(TaskTimeoutError):
            pool.submit_task(spin, timeout=0.3).result()
        assert pool.submit(add, 1, 1).result() == 2


def test_deep_recursion_is_a_plain_error() -> None:
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(RecursionError):
            pool.submit(recurse, 0).result()
        assert pool.submit(add, 1).result() == 1


def test_exception_of_a_local_class_with_a_lock() -> None:
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises((UnpicklableTaskError, Exception)) as info:
            pool.submit(raise_unpicklable_exception).result()
        assert "local class" in str(info.value)
        assert pool.submit(add, 2).result() == 2


def test_a_200_mb_result_arrives_whole() -> None:
    with ProcQueue(max_workers=1) as pool:
        data = pool.submit(big_result, 200).result()
        assert len(data) == 200 * 2**20 and data[:1] == b"x" and data[-1:] == b"x"
        del data
        assert pool.submit(add, 3).result() == 3


def test_task_that_closes_stdout_and_stderr() -> None:
    with ProcQueue(max_workers=1) as pool:
        assert pool.submit(close_stdio).result() == "closed"
        assert pool.submit(add, 4).result() == 4


def test_task_that_forks_gets_one_result() -> None:
    delivered: list[object] = []
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(fork_in_task)
        fut.add_done_callback(lambda f: delivered.append(f.result()))
        child = fut.result()
        assert child > 0  # the parent's value, not the forked child's -1
        assert pool.submit(add, 5).result() == 5
    assert delivered == [child]


def test_sigstopped_worker_hits_the_task_timeout() -> None:
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(TaskTimeoutError):
            pool.submit_task(stop_self, timeout=0.3).result()
        assert pool.submit(add, 6).result() == 6


def _tree_is_gone(pids: list[int]) -> None:
    procs = []
    for p in pids:
        try:
            procs.append(psutil.Process(p))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert not alive, f"survived: {alive}"


def _read_tree(gate: Gate) -> list[int]:
    return [gate.wait_started(), gate.wait_started()]


def test_timeout_kills_the_whole_tree(gate: Gate) -> None:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit_task(spawn_tree_and_hang, gate.paths, timeout=2.0)
        tree = _read_tree(gate)
        with pytest.raises(TaskTimeoutError):
            fut.result()
        _tree_is_gone(tree)


def test_cancel_kills_the_whole_tree(gate: Gate) -> None:
    import asyncio

    async def main() -> list[int]:
        async with TaskQueue(num_workers=1) as q:
            tid = await q.submit(spawn_tree_and_hang, gate.paths)
            tree = _read_tree(gate)
            q.cancel(tid)
            with pytest.raises(TaskCancelledError):
                await q.result(tid)
            assert q.get_task_status(tid).state is TaskState.CANCELLED
            return tree

    _tree_is_gone(asyncio.run(main()))


def test_stop_with_deadline_kills_the_whole_tree(gate: Gate) -> None:
    pool = ProcQueue(max_workers=1)
    fut = pool.submit(spawn_tree_and_hang, gate.paths)
    tree = _read_tree(gate)
    pool.shutdown(wait=True, timeout=0.1)
    with pytest.raises(TaskCancelledError):
        fut.result()
    _tree_is_gone(tree)


def test_kill_during_prefetch_keeps_every_result(gate: Gate) -> None:
    """SIGKILL a worker holding prefetched tasks: none is lost or duplicated."""
    with ProcQueue(max_workers=1, prefetch=20) as pool:
        all_dispatched = threading.Event()
        running: set[int] = set()

        def watch(status: TaskStatus) -> None:
            if status.state is TaskState.RUNNING:
                running.add(status.task_id)
                if len(running) == 21:
                    all_dispatched.set()

        pool.subscribe(watch)
        # Queued before the worker is up, so all 21 go to it in one batch.
        blocker = pool.submit(gated, gate.paths)
        futs = [pool.submit(add, i) for i in range(20)]
        worker = gate.wait_started()
        assert all_dispatched.wait(30)
        os.kill(worker, signal.SIGKILL)
        assert [f.result() for f in futs] == list(range(20))
        assert all(pool.get_task_status(task_id(f)).attempts == 1 for f in futs)
        with pytest.raises(WorkerCrashedError):
            blocker.result()
