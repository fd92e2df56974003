"""Crash injection: whatever a task does to its worker, only that task suffers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import pytest
from _tasks import (
    Gate,
    NeedsTwoArgs,
    add,
    broken_initializer,
    crash_times,
    exit_now,
    gated,
    get_init_value,
    hang,
    pid,
    raise_keyboard_interrupt,
    raise_needs_two_args,
    return_lambda,
    return_lock,
    segfault,
    set_init_value,
    spawn_child_and_hang,
    sys_exit,
)

from procqueue import (
    ProcQueue,
    ResultSerializationError,
    RetryPolicy,
    TaskCancelledError,
    TaskQueue,
    TaskState,
    TaskTimeoutError,
    UnpicklableTaskError,
    WorkerCrashedError,
    WorkerStartupError,
    task_id,
)

NO_WAIT = RetryPolicy(backoff_base=0)


def test_os_exit_fails_only_that_task() -> None:
    with ProcQueue(max_workers=2) as pool:
        bad = pool.submit(exit_now, 3)
        good = [pool.submit(add, i, 1) for i in range(20)]
        with pytest.raises(WorkerCrashedError) as info:
            bad.result()
        err = info.value
        assert isinstance(err, BrokenProcessPool)  # stdlib except clauses still work
        assert err.exitcode == 3
        assert err.pid is not None and str(err.pid) in str(err)
        assert "exit code 3" in str(err)
        assert sum(f.result() for f in good) == sum(range(1, 21))
        st = pool.get_task_status(task_id(bad))
        assert st.state is TaskState.FAILED
        assert st.error is not None and st.error.exitcode == 3
        # The pool still serves, on a replacement worker.
        assert pool.submit(add, 2, 2).result() == 4
        assert sum(w.restarts for w in pool.get_stats().workers) == 1


def test_segfault_is_reported_with_its_signal() -> None:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(segfault)
        with pytest.raises(WorkerCrashedError, match="SIGSEGV") as info:
            fut.result()
        assert info.value.exitcode == -signal.SIGSEGV
        assert pool.submit(add, 1, 1).result() == 2


def test_crash_is_retried_when_retries_remain(counter: str) -> None:
    with ProcQueue(max_workers=1, retry=NO_WAIT) as pool:
        fut = pool.submit_task(crash_times, counter, 2, "survived", max_retries=2)
        assert fut.result() == "survived"
        st = pool.get_task_status(task_id(fut))
        assert st.attempts == 3
        assert [e.exitcode for e in st.errors] == [7, 7]
        assert pool.get_stats().retried == 2


def test_sigkill_from_outside(gate: Gate) -> None:
    with ProcQueue(max_workers=1, retry=NO_WAIT) as pool:
        fut = pool.submit_task(gated, gate.paths, "second try", max_retries=1)
        worker = gate.wait_started()
        os.kill(worker, signal.SIGKILL)
        gate.wait_started()  # the retry, on the replacement worker
        gate.release()
        assert fut.result() == "second try"
        st = pool.get_task_status(task_id(fut))
        assert st.errors[0].exitcode == -signal.SIGKILL
        assert st.worker_pid != worker


def test_prefetched_tasks_behind_a_crash_are_requeued_uncharged() -> None:
    with ProcQueue(max_workers=1, prefetch=4) as pool:
        futs = [pool.submit(exit_now, 1)] + [pool.submit(add, i) for i in range(4)]
        with pytest.raises(WorkerCrashedError):
            futs[0].result()
        assert [f.result() for f in futs[1:]] == [0, 1, 2, 3]
        assert all(pool.get_task_status(task_id(f)).attempts == 1 for f in futs[1:])


def test_timeout_kills_and_replaces_the_worker() -> None:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit_task(hang, timeout=0.2)
        with pytest.raises(TaskTimeoutError) as info:
            fut.result()
        assert isinstance(info.value, TimeoutError)
        assert pool.submit(add, 1, 2).result() == 3
        assert pool.get_task_status(task_id(fut)).state is TaskState.FAILED


def test_timeout_kills_the_process_tree(gate: Gate) -> None:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit_task(spawn_child_and_hang, gate.paths, timeout=1.0)
        grandchild = gate.wait_started()
        with pytest.raises(TaskTimeoutError):
            fut.result()
        # kill_tree reaps nothing of the grandchild's; it was SIGKILLed, so it is
        # either gone or a zombie re-parented away from us.
        try:
            assert psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass


def test_timeout_retried_then_fails() -> None:
    with ProcQueue(max_workers=1, retry=NO_WAIT) as pool:
        fut = pool.submit_task(hang, timeout=0.1, max_retries=1)
        with pytest.raises(TaskTimeoutError):
            fut.result()
        st = pool.get_task_status(task_id(fut))
        assert st.attempts == 2
        assert [e.exc_type for e in st.errors] == ["procqueue.errors.TaskTimeoutError"] * 2


@pytest.mark.parametrize(
    ("fn", "exc"),
    [(sys_exit, SystemExit), (raise_keyboard_interrupt, KeyboardInterrupt)],
)
def test_base_exceptions_end_the_attempt_not_the_worker(fn: Any, exc: type) -> None:
    with ProcQueue(max_workers=1) as pool:
        before = pool.submit(pid).result()
        fut = pool.submit(fn, 3) if fn is sys_exit else pool.submit(fn)
        with pytest.raises(exc):
            fut.result()
        assert pool.submit(pid).result() == before  # same worker, not restarted


def test_unpicklable_result() -> None:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(return_lock)
        with pytest.raises(ResultSerializationError, match="lock"):
            fut.result()
        # cloudpickle carries what plain pickle cannot
        assert pool.submit(return_lambda).result()() == 42
        assert pool.submit(add, 1).result() == 1


def test_exception_that_cannot_be_unpickled() -> None:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(raise_needs_two_args)
        with pytest.raises(UnpicklableTaskError) as info:
            fut.result()
        assert info.value.exc_type.endswith("NeedsTwoArgs")
        assert "x/y" in str(info.value)
        assert "raise_needs_two_args" in str(info.value.__cause__)
        assert not isinstance(info.value, NeedsTwoArgs)
        assert pool.submit(add, 1).result() == 1


def test_initializer_runs_in_every_worker() -> None:
    with ProcQueue(max_workers=2, initializer=set_init_value, initargs=("hello",)) as pool:
        assert {pool.submit(get_init_value).result() for _ in range(4)} == {"hello"}


def test_broken_initializer_breaks_the_pool_without_a_respawn_storm() -> None:
    pool = ProcQueue(max_workers=2, initializer=broken_initializer)
    fut = pool.submit(add, 1)
    with pytest.raises(WorkerStartupError, match="initializer refuses") as info:
        fut.result(timeout=30)
    assert isinstance(info.value, BrokenProcessPool)
    with pytest.raises(WorkerStartupError):
        pool.submit(add, 2)
    restarts = sum(w.restarts for w in pool.get_stats().workers)
    assert restarts <= 2
    pool.shutdown()


def test_initializer_that_exits_breaks_the_pool_with_its_exit_code() -> None:
    from _tasks import exiting_initializer

    pool = ProcQueue(max_workers=2, initializer=exiting_initializer)
    fut = pool.submit(add, 1)
    with pytest.raises(WorkerStartupError, match="exit code 4"):
        fut.result(timeout=30)
    assert sum(w.restarts for w in pool.get_stats().workers) <= 2
    pool.shutdown()


def test_a_script_without_main_guard_gets_a_clear_error(tmp_path: Path) -> None:
    """The classic spawn/forkserver mistake: no ``if __name__ == "__main__":``.
    The pool must fail fast with WorkerStartupError naming the cause, not crash
    its coordinator or respawn forever."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from procqueue import ProcQueue, WorkerStartupError\n"
        "pool = ProcQueue(max_workers=1, start_method='spawn')\n"
        "try:\n"
        "    pool.submit(abs, -1).result(timeout=60)\n"
        "except WorkerStartupError as e:\n"
        "    print('STARTUP-ERROR', 'bootstrapping phase' in str(e) or 'exit code' in str(e))\n"
        "pool.shutdown(wait=True, cancel_futures=True, timeout=0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent.parent)}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, env=env, timeout=120, check=False
    )
    assert b"STARTUP-ERROR True" in proc.stdout, proc.stderr.decode()[-2000:]


def test_asyncio_front_door_survives_crashes_too() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2) as q:
            bad = await q.submit(exit_now, 9)
            ok = await q.submit(add, 20, 22)
            with pytest.raises(WorkerCrashedError, match="exit code 9"):
                await q.result(bad)
            assert await q.result(ok) == 42
            assert q.get_task_status(bad).state is TaskState.FAILED

    asyncio.run(main())


def test_stop_deadline_kills_hung_tasks() -> None:
    async def main() -> None:
        q = TaskQueue(num_workers=1)
        await q.start()
        tid = await q.submit(hang)
        await q.stop(timeout=0.2)
        with pytest.raises(TaskCancelledError):
            await q.result(tid)

    asyncio.run(main())


_ORPHAN_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading
    sys.path.insert(0, {tests!r})
    from procqueue import ProcQueue
    from _tasks import pid, hang

    if __name__ == "__main__":
        pool = ProcQueue(max_workers=2, start_method={method!r})
        pids = {{pool.submit(pid).result() for _ in range(20)}}
        pool.submit(hang)
        pool.submit(hang)
        print(" ".join(map(str, sorted(pids))), flush=True)
        threading.Event().wait()
    """
)


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_workers_die_with_the_coordinator(tmp_path: Path, method: str) -> None:
    script = tmp_path / "owner.py"
    script.write_text(_ORPHAN_SCRIPT.format(tests=str(Path(__file__).parent.parent), method=method))
    root = Path(__file__).parent.parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env)
    assert owner.stdout is not None
    line = owner.stdout.readline()
    workers = [psutil.Process(int(p)) for p in line.split()]
    assert workers
    owner.kill()
    owner.wait()
    _, alive = psutil.wait_procs(workers, timeout=3)
    for p in alive:
        p.kill()
    assert not alive, f"workers outlived their coordinator: {alive}"
    owner.stdout.close()


def test_no_process_left_after_many_start_stop_cycles() -> None:
    # The autouse no_leaks fixture checks processes, threads and fds afterwards.
    for _ in range(5):
        with ProcQueue(max_workers=2) as pool:
            assert pool.submit(add, 1, 1).result() == 2
