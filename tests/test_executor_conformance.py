"""ProcQueue against the behaviour CPython's own tests define for executors.

Every test here ports the *semantics* of a test in CPython's
``Lib/test/test_concurrent_futures/`` package (the upstream file and test are
named in each test's docstring); the code is our own. Where procqueue differs
from ``ProcessPoolExecutor`` on purpose (a crashed worker fails only its own
task, unpicklable arguments fail ``submit`` itself, lambdas work) the test checks
procqueue's documented behaviour instead and says so.

Synchronisation never uses sleep: a task that must stay busy blocks on a FIFO
(see :class:`Gate`); the test releases it by writing to, or closing, its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import itertools
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Future,
)
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import pytest

import procqueue
from procqueue import ProcQueue, RemoteTraceback, SerializationError, WorkerCrashedError

pytestmark = pytest.mark.timeout(30)

#: Seconds a test waits for something that must happen; a bound, never a sync.
BOUND = 15.0
#: A shorter bound where a known failure mode is a hang, to keep the file fast.
HANG_BOUND = 3.0


# --------------------------------------------------------------------------------------
# Synchronisation with tasks: FIFOs, no sleeps.
# --------------------------------------------------------------------------------------


class Gate:
    """A pair of FIFOs shared with gated tasks.

    A gated task writes one byte to *started*, then blocks reading one byte from
    *gate*. The test holds both FIFOs open read-write (which never blocks on
    Linux), so a task's opens never block; :meth:`release` writes one byte per
    task to let through, :meth:`open_all` closes the test's end of *gate* so that
    every blocked or later read sees end-of-file and returns at once.

    Use it *after* the pool in a ``with`` statement (``with ProcQueue(1) as pool,
    Gate(tmp_path) as gate:``): it then exits first, releasing every task, so the
    pool's ``shutdown(wait=True)`` can never hang on a failed assertion.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.started_path = str(directory / "started.fifo")
        self.gate_path = str(directory / "gate.fifo")
        os.mkfifo(self.started_path)
        os.mkfifo(self.gate_path)
        self._started_fd = os.open(self.started_path, os.O_RDWR | os.O_NONBLOCK)
        self._gate_fd = os.open(self.gate_path, os.O_RDWR)
        self.started = 0

    @property
    def paths(self) -> tuple[str, str]:
        return self.started_path, self.gate_path

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._started_fd, 4096)
            except BlockingIOError:
                return
            if not data:
                return
            self.started += len(data)

    def wait_started(self, n: int = 1, timeout: float = BOUND) -> None:
        """Block until at least ``n`` gated tasks (in all) have started."""
        deadline = time.monotonic() + timeout
        self._drain()
        while self.started < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {self.started} of {n} gated tasks started")
            ready, _, _ = select.select([self._started_fd], [], [], remaining)
            if ready:
                self._drain()

    def count_started(self) -> int:
        self._drain()
        return self.started

    def release(self, n: int = 1) -> None:
        os.write(self._gate_fd, b"g" * n)

    def open_all(self) -> None:
        if self._gate_fd >= 0:
            os.close(self._gate_fd)
            self._gate_fd = -1

    def close(self) -> None:
        self.open_all()
        if self._started_fd >= 0:
            os.close(self._started_fd)
            self._started_fd = -1

    def __enter__(self) -> Gate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _signal_started(started_path: str) -> None:
    try:
        fd = os.open(started_path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # ENXIO: the test has closed its end; nobody is listening any more
    try:
        os.write(fd, b"s")
    except OSError:
        pass
    finally:
        os.close(fd)


def _await_gate(gate_path: str) -> None:
    # O_NONBLOCK only for the open (it must not wait for a writer); the read
    # blocks until the test writes a byte, or returns b"" once it has closed.
    fd = os.open(gate_path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(fd, True)
        os.read(fd, 1)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# Task functions (top level, so workers import them by reference).
# --------------------------------------------------------------------------------------


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def gated(started_path: str, gate_path: str, value: Any = None) -> Any:
    _signal_started(started_path)
    _await_gate(gate_path)
    return value


def gated_raise(started_path: str, gate_path: str, exc: BaseException) -> None:
    _signal_started(started_path)
    _await_gate(gate_path)
    raise exc


def gated_exit(started_path: str, gate_path: str, code: int) -> None:
    _signal_started(started_path)
    _await_gate(gate_path)
    os._exit(code)


def value_or_gated(value: Any, started_path: str, gate_path: str) -> Any:
    """``map`` helper: ``None`` blocks on the gate, anything else returns at once."""
    if value is None:
        return gated(started_path, gate_path, "released")
    return value


def maybe_gated(value: Any, started_path: str, gate_path: str, block: bool = True) -> Any:
    """One callable for both fast calls (``block=False``) and gated ones."""
    if block:
        _signal_started(started_path)
        _await_gate(gate_path)
    return value


def raise_or_gated(value: Any, started_path: str, gate_path: str) -> Any:
    if value == "raise":
        raise ValueError("first item fails")
    return gated(started_path, gate_path, value)


def raise_runtime_error() -> None:
    raise RuntimeError(123)  # some comment


class CustomError(Exception):
    pass


def raise_custom(message: str) -> None:
    raise CustomError(message)


def sys_exit(code: int) -> None:
    sys.exit(code)


def exit_with_data(data: object) -> None:
    os._exit(1)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def return_instance(cls: type) -> Any:
    return cls()


class MyObject:
    def my_method(self) -> None:
        pass


def make_dummy_object(_: object) -> MyObject:
    return MyObject()


INITIALIZER_STATUS = "uninitialized"


def init(status: str, log_path: str | None = None) -> None:
    global INITIALIZER_STATUS
    INITIALIZER_STATUS = status
    if log_path is not None:
        with open(log_path, "a") as f:
            f.write(f"{os.getpid()}\n")


def get_init_status() -> str:
    return INITIALIZER_STATUS


def gated_init_status(started_path: str, gate_path: str) -> tuple[int, str]:
    return gated(started_path, gate_path, (os.getpid(), INITIALIZER_STATUS))


def init_fail() -> None:
    raise ValueError("error in initializer")


def _exit_one() -> None:
    sys.exit(1)


def _raise_unpickling_error() -> None:
    raise pickle.UnpicklingError("error at unpickle")


class ErrorAtPickle:
    """Pickling it raises (test_deadlock.py)."""

    def __reduce__(self) -> Any:
        raise pickle.PicklingError("error in pickle")


class ErrorAtUnpickle:
    """Unpickling it raises (test_deadlock.py; without touching sys.stderr)."""

    def __reduce__(self) -> Any:
        return _raise_unpickling_error, ()


class ExitAtPickle:
    """Pickling it raises SystemExit (test_deadlock.py)."""

    def __reduce__(self) -> Any:
        sys.exit(1)


class ExitAtUnpickle:
    """Unpickling it raises SystemExit (test_deadlock.py)."""

    def __reduce__(self) -> Any:
        return _exit_one, ()


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def finished_future(result: Any = None, exception: BaseException | None = None) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_running_or_notify_cancel()
    if exception is not None:
        f.set_exception(exception)
    else:
        f.set_result(result)
    return f


def cancelled_future(*, notified: bool) -> Future[Any]:
    """util.py's CANCELLED_FUTURE (``notified=False``) or
    CANCELLED_AND_NOTIFIED_FUTURE, made through the public API."""
    f: Future[Any] = Future()
    f.cancel()
    if notified:
        f.set_running_or_notify_cancel()
    return f


def run_tiny_tasks(pool: ProcQueue, gate: Gate, n: int = 200) -> None:
    """Run ``n`` very short calls of :func:`maybe_gated`, the callable the test
    then gates: the same function, fast at first and slow later (enough calls
    that any average of their run times forgets the worker's first import)."""
    started, gate_path = gate.paths
    results = pool.map(maybe_gated, range(n), [started] * n, [gate_path] * n, [False] * n)
    assert list(results) == list(range(n))


def call_bounded(fn: Callable[[], object], timeout: float = BOUND) -> None:
    """Run ``fn`` in a thread; fail (instead of hanging) if it does not return."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=target, name="conformance-bounded")
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} did not return within {timeout}s"
    if errors:
        raise errors[0]


# ======================================================================================
# executor.py: ExecutorTest
# ======================================================================================


def test_submit() -> None:
    """executor.py ExecutorTest.test_submit."""
    with ProcQueue(max_workers=2) as pool:
        future = pool.submit(pow, 2, 8)
        assert isinstance(future, Future)
        assert future.result(timeout=BOUND) == 256


def test_submit_keyword() -> None:
    """executor.py ExecutorTest.test_submit_keyword: keyword arguments reach the
    callable, even ones named ``self`` or ``fn``; ``fn`` is positional-only."""
    with ProcQueue(max_workers=2) as pool:
        assert pool.submit(mul, 2, y=8).result(timeout=BOUND) == 16
        future = pool.submit(capture, 1, self=2, fn=3)
        assert future.result(timeout=BOUND) == ((1,), {"self": 2, "fn": 3})
        with pytest.raises(TypeError):
            pool.submit(fn=capture, arg=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            pool.submit(arg=1)  # type: ignore[call-arg]


def test_submit_keywords_named_like_procqueue_options_reach_the_callable() -> None:
    """Drop-in: plain ``submit`` keeps no keyword for itself (``submit_task`` does),
    so ``timeout=``/``priority=`` go to the callable as with the stdlib."""
    with ProcQueue(max_workers=1) as pool:
        future = pool.submit(capture, timeout=5, priority=1, max_retries=2, retry=None)
        assert future.result(timeout=BOUND) == (
            (),
            {"timeout": 5, "priority": 1, "max_retries": 2, "retry": None},
        )


def test_map() -> None:
    """executor.py ExecutorTest.test_map: results in input order, with and
    without chunksize."""
    expected = list(map(pow, range(10), range(10)))
    with ProcQueue(max_workers=2) as pool:
        assert list(pool.map(pow, range(10), range(10))) == expected
        assert list(pool.map(pow, range(10), range(10), chunksize=3)) == expected


def test_map_stops_at_shortest_iterable_and_handles_empty_input() -> None:
    """Executor.map has builtin ``map``/``zip`` semantics."""
    with ProcQueue(max_workers=2) as pool:
        assert list(pool.map(pow, range(3), itertools.count())) == [1, 1, 4]
        assert list(pool.map(pow, [], [])) == []
        assert list(pool.map(abs, [], chunksize=4)) == []


def test_map_exception() -> None:
    """executor.py ExecutorTest.test_map_exception: results before the failing
    item are returned, then the task's exception is raised."""
    with ProcQueue(max_workers=2) as pool:
        it = pool.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
        assert next(it) == (0, 1)
        assert next(it) == (0, 1)
        with pytest.raises(ZeroDivisionError):
            next(it)


def test_map_exception_with_chunksize() -> None:
    """As test_map_exception, with items batched by ``chunksize``."""
    with ProcQueue(max_workers=2) as pool:
        it = pool.map(divmod, [1, 1, 1, 1, 1], [2, 3, 0, 5, 7], chunksize=2)
        assert next(it) == (0, 1)
        assert next(it) == (0, 1)
        with pytest.raises(ZeroDivisionError):
            next(it)


def test_map_timeout(tmp_path: Path) -> None:
    """executor.py ExecutorTest.test_map_timeout: the results that are ready are
    returned, then TimeoutError once ``timeout`` (counted from the map call)
    has passed; the remaining tasks are cancelled (Executor.map's contract)."""
    timeout = 0.5
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        completed: list[int] = []
        two_settled = threading.Event()

        def listen(st: procqueue.TaskStatus) -> None:  # statuses follow settled futures
            if st.state == "completed":
                completed.append(st.task_id)
                if len(completed) == 2:
                    two_settled.set()

        pool.subscribe(listen)
        start = time.monotonic()
        it = pool.map(
            value_or_gated,
            [1, 2, None, None, None, None],
            *[[p] * 6 for p in gate.paths],
            timeout=timeout,
        )
        # One worker runs items in order, so once the first blocker has started,
        # items 1 and 2 are finished; once the coordinator has settled their
        # futures, the outcome no longer depends on speed (a settled future is
        # returned even past the deadline, as the stdlib's map does).
        gate.wait_started(1)
        assert two_settled.wait(30)
        results = []
        with pytest.raises(futures.TimeoutError):
            for r in it:
                results.append(r)
        assert results == [1, 2]
        assert time.monotonic() - start >= timeout
        gate.open_all()
        pool.shutdown(wait=True)
        # The blocker that timed out was running; at most one more was already
        # handed to the worker (prefetch). The rest were cancelled and never ran.
        assert gate.count_started() <= 2


def test_map_early_exit_on_exception_cancels_the_rest(tmp_path: Path) -> None:
    """Executor.map's result iterator cancels what it has not yielded when it
    stops early (the ``finally`` of ``result_iterator`` in CPython's
    Lib/concurrent/futures/_base.py; executor.py test_map_exception)."""
    n = 20
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        items = ["raise", *range(1, n)]
        it = pool.map(raise_or_gated, items, *[[p] * n for p in gate.paths])
        with pytest.raises(ValueError, match="first item fails"):
            next(it)
        gate.open_all()
        pool.shutdown(wait=True)
        assert gate.count_started() <= 2, "pending map items ran after the iterator failed"


def test_map_early_exit_on_close_cancels_the_rest(tmp_path: Path) -> None:
    """Breaking out of the loop and dropping the iterator cancels the rest."""
    n = 20
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        it = pool.map(value_or_gated, [1, *[None] * (n - 1)], *[[p] * n for p in gate.paths])
        for r in it:
            assert r == 1
            break
        it.close()
        del it
        gate.open_all()
        pool.shutdown(wait=True)
        assert gate.count_started() <= 2, "pending map items ran after the iterator closed"


def test_map_chunksize() -> None:
    """test_process_pool.py ProcessPoolExecutorTest.test_map_chunksize."""
    ref = list(map(pow, range(40), range(40)))
    with ProcQueue(max_workers=2) as pool:
        for chunksize in (6, 50, 40):
            assert list(pool.map(pow, range(40), range(40), chunksize=chunksize)) == ref
        for bad in (-1, 0):
            with pytest.raises(ValueError):
                list(pool.map(pow, range(40), range(40), chunksize=bad))


def test_shutdown_race_issue12456() -> None:
    """executor.py ExecutorTest.test_shutdown_race_issue12456: map submits
    eagerly; shutdown right after does not hang and the work gets done."""
    pool = ProcQueue(max_workers=2)
    try:
        it = pool.map(str, [2] * 3)
        call_bounded(pool.shutdown)
        assert list(it) == ["2", "2", "2"]
    finally:
        pool.shutdown(wait=True)


def test_no_stale_references() -> None:
    """executor.py ExecutorTest.test_no_stale_references (issue #16284): the
    executor does not keep the submitted callable (and what it references)."""
    with ProcQueue(max_workers=1) as pool:
        my_object = MyObject()
        collected = threading.Event()
        ref = weakref.ref(my_object, lambda _: collected.set())
        fut = pool.submit(my_object.my_method)
        del my_object
        fut.result(timeout=BOUND)
        del fut
        gc.collect()
        assert collected.wait(BOUND), "stale reference to the submitted callable"
        assert ref() is None


def test_max_workers_negative() -> None:
    """executor.py ExecutorTest.test_max_workers_negative."""
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            ProcQueue(max_workers=number)


def test_max_workers_default() -> None:
    """``max_workers=None`` means os.cpu_count() workers; the pool works."""
    with ProcQueue() as pool:
        assert pool.submit(pow, 3, 2).result(timeout=BOUND) == 9


def test_free_reference() -> None:
    """executor.py ExecutorTest.test_free_reference (issue #14406): the map
    result iterator does not keep a reference to results it has yielded."""
    with ProcQueue(max_workers=2) as pool:
        for obj in pool.map(make_dummy_object, range(10)):
            wr = weakref.ref(obj)
            del obj
            gc.collect()
            assert wr() is None, "the executor keeps a yielded map result alive"


def test_result_freed_once_future_dropped() -> None:
    """Companion of test_free_reference for ``submit``: once the caller drops the
    future and the result, nothing in the executor keeps the result alive (as
    with ProcessPoolExecutor, whose work item is deleted when it completes)."""
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(make_dummy_object, 0)
        obj = fut.result(timeout=BOUND)
        wr = weakref.ref(obj)
        del obj, fut
        gc.collect()
        assert wr() is None, "the executor keeps a finished task's result alive"


def test_lambdas_and_closures_are_accepted() -> None:
    """Deliberate difference: callables are pickled with cloudpickle."""
    k = 10
    with ProcQueue(max_workers=1) as pool:
        assert pool.submit(lambda x: x + k, 1).result(timeout=BOUND) == 11
        assert list(pool.map(lambda x: x * 2, range(4))) == [0, 2, 4, 6]


# ======================================================================================
# test_shutdown.py: ExecutorShutdownTest / ProcessPoolShutdownTest
# ======================================================================================


def test_run_after_shutdown() -> None:
    """test_shutdown.py ExecutorShutdownTest.test_run_after_shutdown."""
    pool = ProcQueue(max_workers=1)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(pow, 2, 5)
    with pytest.raises(RuntimeError):
        list(pool.map(pow, [2], [5]))


def test_run_after_shutdown_no_wait(tmp_path: Path) -> None:
    """Submitting after ``shutdown(wait=False)`` raises RuntimeError at once,
    while earlier work is still running."""
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        busy = pool.submit(gated, *gate.paths, "done")
        gate.wait_started()
        pool.shutdown(wait=False)
        with pytest.raises(RuntimeError):
            pool.submit(pow, 2, 5)
        gate.release()
        assert busy.result(timeout=BOUND) == "done"


def test_shutdown_is_idempotent() -> None:
    """shutdown may be called repeatedly, with and without wait, and after the
    context manager has exited."""
    with ProcQueue(max_workers=1) as pool:
        assert pool.submit(pow, 2, 3).result(timeout=BOUND) == 8
        pool.shutdown(wait=False)
        pool.shutdown(wait=True)
        pool.shutdown(wait=True, cancel_futures=True)
    pool.shutdown()
    pool.shutdown(wait=False)


def test_hang_issue12364() -> None:
    """test_shutdown.py ExecutorShutdownTest.test_hang_issue12364: shutdown with
    many queued tasks waits for all of them; every result is available."""
    pool = ProcQueue(max_workers=2)
    try:
        fs = [pool.submit(pow, i, 2) for i in range(50)]
        call_bounded(pool.shutdown)
        assert all(f.done() for f in fs)
        assert [f.result(timeout=0) for f in fs] == [i * i for i in range(50)]
    finally:
        pool.shutdown(wait=True)


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "after_tiny_tasks"])
def test_cancel_futures(tmp_path: Path, warm: bool) -> None:
    """test_shutdown.py ExecutorShutdownTest.test_cancel_futures, made
    deterministic: with the one worker busy, everything still queued is
    cancelled by ``shutdown(cancel_futures=True)``; what was already running
    finishes normally. As with ProcessPoolExecutor (one extra queued call),
    at most one task beyond the running one escapes cancellation, also on a
    pool that has just run very short calls of the same function (``warm``)."""
    n = 30
    # procqueue hands a worker tasks ahead of time (prefetch) and, like the
    # stdlib's call queue, counts them as running. Adaptive prefetch learns a
    # callable's run time, so after tiny calls of the *same* callable, slow
    # calls are prefetched deep (README, "Priority order"); prefetch=1 gives
    # the stdlib's bound, which is what this port checks.
    with ProcQueue(max_workers=1, prefetch=1 if warm else None) as pool, Gate(tmp_path) as gate:
        if warm:
            run_tiny_tasks(pool, gate)
        fs = [pool.submit(maybe_gated, i, *gate.paths) for i in range(n)]
        gate.wait_started(1)
        pool.shutdown(wait=False, cancel_futures=True)
        # Cancellation happens in the background (as in ProcessPoolExecutor):
        # wait() returns cancelled futures once they are CANCELLED_AND_NOTIFIED.
        # A future still not done after the bound was handed to the busy worker
        # and is stuck behind the running task: it escaped cancellation.
        futures.wait(fs[2:], timeout=HANG_BOUND)
        gate.open_all()
        pool.shutdown(wait=True)
        cancelled = [f for f in fs if f.cancelled()]
        others = [f for f in fs if not f.cancelled()]
        assert len(cancelled) >= n - 2, (
            f"only {len(cancelled)} of {n} futures cancelled; {len(others)} ran"
        )
        assert fs[0] in others
        for f in others:
            assert f.done()
            assert f.exception(timeout=0) is None
        assert gate.count_started() == len(others)


def test_cancel_futures_wait_true_waits_for_running_tasks(tmp_path: Path) -> None:
    """``shutdown(wait=True, cancel_futures=True)`` cancels the queue, then
    blocks until the running task has finished."""
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        running = pool.submit(gated, *gate.paths, "ran")
        queued = [pool.submit(gated, *gate.paths, i) for i in range(10)]
        gate.wait_started(1)
        shutdown_returned = threading.Event()

        def do_shutdown() -> None:
            pool.shutdown(wait=True, cancel_futures=True)
            shutdown_returned.set()

        t = threading.Thread(target=do_shutdown, name="conformance-shutdown")
        t.start()
        try:
            done, _ = futures.wait(queued[1:], timeout=BOUND)
            assert len(done) == len(queued) - 1
            assert all(f.cancelled() for f in queued[1:])
            assert not shutdown_returned.is_set(), "shutdown(wait=True) did not wait"
            assert not running.done()
        finally:
            gate.open_all()
            t.join(BOUND)
        assert shutdown_returned.is_set()
        assert running.result(timeout=0) == "ran"


def test_shutdown_no_wait(tmp_path: Path) -> None:
    """test_shutdown.py ProcessPoolShutdownTest.test_shutdown_no_wait:
    ``shutdown(wait=False)`` returns at once; queued work still runs to
    completion and the workers then exit."""
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        pid = pool.submit(os.getpid).result(timeout=BOUND)
        busy = pool.submit(gated, *gate.paths, "busy")
        res = pool.map(abs, range(-5, 5))
        gate.wait_started(1)
        call_bounded(lambda: pool.shutdown(wait=False), timeout=5)
        assert not busy.done()
        gate.release()
        assert busy.result(timeout=BOUND) == "busy"
        assert list(res) == [abs(v) for v in range(-5, 5)]
        psutil.Process(pid).wait(timeout=BOUND)  # the worker exits by itself
        pool.shutdown(wait=True)


def test_processes_terminate() -> None:
    """test_shutdown.py ProcessPoolShutdownTest.test_processes_terminate: after
    ``shutdown()`` the worker processes are gone."""
    pool = ProcQueue(max_workers=1)
    try:
        pid = pool.submit(os.getpid).result(timeout=BOUND)
        assert psutil.pid_exists(pid)
    finally:
        pool.shutdown()
    assert not psutil.pid_exists(pid)


def test_context_manager_shutdown() -> None:
    """test_shutdown.py ProcessPoolShutdownTest.test_context_manager_shutdown:
    ``__enter__`` returns the pool; leaving the block shuts it down after all
    submitted work is done."""
    with ProcQueue(max_workers=2) as pool:
        entered = pool
        assert list(pool.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        pid = pool.submit(os.getpid).result(timeout=BOUND)
        fs = [pool.submit(pow, i, 2) for i in range(10)]
    assert isinstance(entered, ProcQueue)
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == [i * i for i in range(10)]
    assert not psutil.pid_exists(pid)
    with pytest.raises(RuntimeError):
        entered.submit(pow, 2, 2)


def test_context_manager_propagates_exception_and_waits() -> None:
    """``__exit__`` returns a false value: the body's exception propagates; the
    pool is still shut down and the submitted work done (shutdown(wait=True))."""
    with pytest.raises(KeyError), ProcQueue(max_workers=1) as pool:
        fut = pool.submit(pow, 2, 2)
        raise KeyError("boom")
    assert fut.result(timeout=0) == 4
    with pytest.raises(RuntimeError):
        pool.submit(pow, 2, 2)


def test_hang_gh94440() -> None:
    """test_shutdown.py ExecutorShutdownTest.test_hang_gh94440: shutdown(wait=True)
    does not hang when a future was submitted and cancelled right before."""
    pool = ProcQueue(max_workers=1)
    try:
        pool.submit(int).result(timeout=BOUND)
        pool.submit(int).cancel()
        call_bounded(pool.shutdown, timeout=BOUND)
    finally:
        pool.shutdown(wait=True, cancel_futures=True, timeout=0)


def test_del_shutdown() -> None:
    """test_shutdown.py ProcessPoolShutdownTest.test_del_shutdown: dropping the
    last reference to an executor that was never shut down lets its workers
    exit once the submitted work is done, and the results are all computed."""
    before = set(threading.enumerate())
    pool = ProcQueue(max_workers=1)
    engine_ref = None
    pid = None
    try:
        fut = pool.submit(os.getpid)
        engine_ref = getattr(fut, "_engine_ref", None)  # only to clean up on failure
        pid = fut.result(timeout=BOUND)
        res = pool.map(abs, range(-5, 5))
        pool_ref = weakref.ref(pool)
        del pool, fut
        gc.collect()
        assert pool_ref() is None
        assert list(res) == [abs(v) for v in range(-5, 5)]
        try:
            psutil.Process(pid).wait(timeout=HANG_BOUND)
        except psutil.NoSuchProcess:
            pass  # already exited and reaped: what this test wants
        except psutil.TimeoutExpired:
            pytest.fail("the worker of a garbage-collected ProcQueue is still running")
        # Its coordinator thread ends too, once it has reaped the worker (on a
        # loaded machine that can come a little after the worker's exit).
        for t in set(threading.enumerate()) - before:
            if t.name.startswith("procqueue"):
                t.join(HANG_BOUND)
                assert not t.is_alive(), f"{t.name} of a garbage-collected ProcQueue still runs"
    finally:
        engine = engine_ref() if engine_ref is not None else None
        if engine is not None:
            engine.request_stop(cancel_pending=True, timeout=0)
            engine.wait_stopped(BOUND)


def test_interpreter_exit_runs_submitted_work(tmp_path: Path) -> None:
    """test_shutdown.py ExecutorShutdownTest.test_interpreter_shutdown: a script
    that submits work and ends without shutdown() still gets the work done
    ("the program will not exit until all pending futures are done"), and
    nothing is written to stderr."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            from procqueue import ProcQueue

            def say(msg):
                print(msg, flush=True)

            if __name__ == "__main__":
                t = ProcQueue(2)
                t.submit(say, "apple")
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, timeout=BOUND, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    assert proc.stdout.strip() == b"apple"


# ======================================================================================
# test_wait.py: WaitTests
# ======================================================================================


def test_wait_duplicate_futures_issue20369() -> None:
    """test_wait.py WaitTests.test_20369."""
    with ProcQueue(max_workers=1) as pool:
        future = pool.submit(mul, 1, 2)
        done, not_done = futures.wait([future, future], return_when=ALL_COMPLETED)
        assert done == {future}
        assert not_done == set()


def test_wait_first_completed(tmp_path: Path) -> None:
    """test_wait.py WaitTests.test_first_completed."""
    cancelled = cancelled_future(notified=False)
    with ProcQueue(max_workers=2) as pool, Gate(tmp_path) as gate:
        future1 = pool.submit(mul, 21, 2)
        future2 = pool.submit(gated, *gate.paths)
        done, not_done = futures.wait(
            [cancelled, future1, future2], timeout=BOUND, return_when=FIRST_COMPLETED
        )
        assert done == {future1}
        assert not_done == {cancelled, future2}
        gate.release()
        future2.result(timeout=BOUND)


def test_wait_first_completed_some_already_completed(tmp_path: Path) -> None:
    """test_wait.py WaitTests.test_first_completed_some_already_completed."""
    cancelled_notified = cancelled_future(notified=True)
    successful = finished_future(42)
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        future1 = pool.submit(gated, *gate.paths)
        finished, pending = futures.wait(
            [cancelled_notified, successful, future1], timeout=BOUND, return_when=FIRST_COMPLETED
        )
        assert finished == {cancelled_notified, successful}
        assert pending == {future1}
        gate.release()
        future1.result(timeout=BOUND)


def test_wait_first_exception(tmp_path: Path) -> None:
    """test_wait.py WaitTests.test_first_exception: the exception arrives while
    wait() is waiting, after future1 has completed."""
    with (
        ProcQueue(max_workers=2) as pool,
        Gate(tmp_path / "a") as gate1,
        Gate(tmp_path / "b") as gate2,
    ):
        future1 = pool.submit(mul, 2, 21)
        future2 = pool.submit(gated_raise, *gate1.paths, Exception("this is an exception"))
        future3 = pool.submit(gated, *gate2.paths)

        def release_after_future1() -> None:
            future1.result(timeout=BOUND)
            gate1.release()

        t = threading.Thread(target=release_after_future1, name="conformance-release")
        t.start()
        try:
            finished, pending = futures.wait(
                [future1, future2, future3], timeout=BOUND, return_when=FIRST_EXCEPTION
            )
        finally:
            t.join(BOUND)
        assert finished == {future1, future2}
        assert pending == {future3}
        with pytest.raises(Exception, match="this is an exception"):
            future2.result(timeout=0)
        gate2.release()
        future3.result(timeout=BOUND)


def test_wait_first_exception_some_already_complete(tmp_path: Path) -> None:
    """test_wait.py WaitTests.test_first_exception_some_already_complete."""
    successful = finished_future(42)
    cancelled = cancelled_future(notified=False)
    cancelled_notified = cancelled_future(notified=True)
    with ProcQueue(max_workers=2) as pool, Gate(tmp_path) as gate:
        future1 = pool.submit(divmod, 21, 0)
        future2 = pool.submit(gated, *gate.paths)
        finished, pending = futures.wait(
            [successful, cancelled, cancelled_notified, future1, future2],
            timeout=BOUND,
            return_when=FIRST_EXCEPTION,
        )
        assert finished == {successful, cancelled_notified, future1}
        assert pending == {cancelled, future2}
        gate.release()
        future2.result(timeout=BOUND)


def test_wait_first_exception_one_already_failed(tmp_path: Path) -> None:
    """test_wait.py WaitTests.test_first_exception_one_already_failed."""
    failed = finished_future(exception=OSError())
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        future1 = pool.submit(gated, *gate.paths)
        finished, pending = futures.wait(
            [failed, future1], timeout=BOUND, return_when=FIRST_EXCEPTION
        )
        assert finished == {failed}
        assert pending == {future1}
        gate.release()
        future1.result(timeout=BOUND)


def test_wait_all_completed() -> None:
    """test_wait.py WaitTests.test_all_completed."""
    successful = finished_future(42)
    cancelled_notified = cancelled_future(notified=True)
    failed = finished_future(exception=OSError())
    with ProcQueue(max_workers=2) as pool:
        future1 = pool.submit(divmod, 2, 0)
        future2 = pool.submit(mul, 2, 21)
        finished, pending = futures.wait(
            [successful, cancelled_notified, failed, future1, future2],
            timeout=BOUND,
            return_when=ALL_COMPLETED,
        )
        assert finished == {successful, cancelled_notified, failed, future1, future2}
        assert pending == set()
        assert isinstance(future1.exception(), ZeroDivisionError)
        assert future2.result() == 42


def test_wait_timeout(tmp_path: Path) -> None:
    """test_wait.py WaitTests.test_timeout."""
    cancelled_notified = cancelled_future(notified=True)
    failed = finished_future(exception=OSError())
    successful = finished_future(42)
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        future = pool.submit(gated, *gate.paths)
        finished, pending = futures.wait(
            [cancelled_notified, failed, successful, future],
            timeout=0.05,
            return_when=ALL_COMPLETED,
        )
        assert finished == {cancelled_notified, failed, successful}
        assert pending == {future}
        gate.release()
        future.result(timeout=BOUND)


# ======================================================================================
# test_as_completed.py: AsCompletedTests
# ======================================================================================


def test_as_completed_no_timeout() -> None:
    """test_as_completed.py AsCompletedTests.test_no_timeout."""
    premade = {
        cancelled_future(notified=True),
        finished_future(exception=OSError()),
        finished_future(42),
    }
    with ProcQueue(max_workers=2) as pool:
        future1 = pool.submit(mul, 2, 21)
        future2 = pool.submit(mul, 7, 6)
        completed = set(futures.as_completed([*premade, future1, future2], timeout=BOUND))
        assert completed == premade | {future1, future2}


def test_as_completed_future_times_out(tmp_path: Path) -> None:
    """test_as_completed.py AsCompletedTests.test_future_times_out, for
    ``timeout=0`` and a short timeout."""
    already_completed = {
        cancelled_future(notified=True),
        finished_future(exception=OSError()),
        finished_future(42),
    }
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        future = pool.submit(gated, *gate.paths)
        for timeout in (0, 0.1):
            completed = set()
            with pytest.raises(futures.TimeoutError):
                for f in futures.as_completed(already_completed | {future}, timeout):
                    completed.add(f)
            assert completed == already_completed
        gate.release()
        future.result(timeout=BOUND)


def test_as_completed_duplicate_futures() -> None:
    """test_as_completed.py AsCompletedTests.test_duplicate_futures (issues
    20367, 31641): duplicates are yielded once; any iterable is accepted."""
    with ProcQueue(max_workers=1) as pool:
        future1 = pool.submit(pow, 2, 2)
        completed = list(futures.as_completed(itertools.repeat(future1, 3), timeout=BOUND))
        assert completed == [future1]


def test_as_completed_timeout_message(tmp_path: Path) -> None:
    """test_as_completed.py AsCompletedTests.test_correct_timeout_exception_msg."""
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        running = pool.submit(gated, *gate.paths)
        queued = pool.submit(gated, *gate.paths)
        fs = [cancelled_future(notified=True), running, queued, finished_future(42)]
        with pytest.raises(futures.TimeoutError) as info:
            list(futures.as_completed(fs, timeout=0))
        assert str(info.value) == "2 (of 4) futures unfinished"
        gate.release(2)
        running.result(timeout=BOUND)
        queued.result(timeout=BOUND)


def test_as_completed_yields_in_completion_order(tmp_path: Path) -> None:
    """as_completed yields a procqueue future when *it* completes, not in
    submission order."""
    with ProcQueue(max_workers=2) as pool, Gate(tmp_path) as gate:
        slow = pool.submit(gated, *gate.paths, "slow")
        it = futures.as_completed([slow, pool.submit(mul, 6, 7)], timeout=BOUND)
        first = next(it)
        assert first.result() == 42
        gate.release()
        assert next(it) is slow
        assert slow.result() == "slow"


# ======================================================================================
# test_init.py: InitializerMixin / FailingInitializerMixin
# ======================================================================================


def test_initializer(tmp_path: Path) -> None:
    """test_init.py InitializerMixin.test_initializer: the initializer runs, with
    ``initargs``, in every worker before it runs a task. Two tasks that block
    until both have started must run in two distinct workers."""
    log = str(tmp_path / "init.log")
    with (
        ProcQueue(
            max_workers=2, initializer=init, initargs=("initialized", log), prefetch=0
        ) as pool,
        Gate(tmp_path / "gate") as gate,
    ):
        fs = [pool.submit(gated_init_status, *gate.paths) for _ in range(2)]
        gate.wait_started(2)
        gate.release(2)
        results = [f.result(timeout=BOUND) for f in fs]
        assert [status for _, status in results] == ["initialized", "initialized"]
        pids = {pid for pid, _ in results}
        assert len(pids) == 2
        assert [pool.submit(get_init_status).result(timeout=BOUND) for _ in range(4)] == [
            "initialized"
        ] * 4
    with open(log) as f:
        init_pids = {int(line) for line in f}
    assert pids <= init_pids


def test_failing_initializer() -> None:
    """test_init.py FailingInitializerMixin.test_initializer: a failing
    initializer breaks the executor instead of hanging: futures fail with
    BrokenExecutor (BrokenProcessPool), the error is reported, and from then
    on submit() raises BrokenExecutor."""
    with ProcQueue(max_workers=2, initializer=init_fail) as pool:
        try:
            future = pool.submit(get_init_status)
        except BrokenExecutor:
            pass  # already broken
        else:
            with pytest.raises(BrokenProcessPool) as info:
                future.result(timeout=BOUND)
            assert "error in initializer" in str(info.value)
        with pytest.raises(BrokenExecutor):
            pool.submit(get_init_status)


def test_failing_initializer_shutdown_does_not_hang() -> None:
    """test_init.py FailingInitializerMixin, with ``shutdown(wait=False)`` called
    right after submit (before the pool has noticed the failure): the queued
    future must still fail with BrokenProcessPool, and shutdown complete."""
    pool = ProcQueue(max_workers=1, initializer=init_fail)
    try:
        future = pool.submit(get_init_status)
        pool.shutdown(wait=False)
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=HANG_BOUND)
        call_bounded(pool.shutdown, timeout=HANG_BOUND)
    finally:
        pool.shutdown(wait=True, cancel_futures=True, timeout=0)


def test_initializer_with_mp_context() -> None:
    """util.py's ProcessPoolSpawnMixin: an ``mp_context`` picks the start method."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcQueue(max_workers=1, mp_context=ctx, initializer=init, initargs=("spawned",)) as pool:
        assert pool.submit(get_init_status).result(timeout=BOUND) == "spawned"


# ======================================================================================
# test_process_pool.py: exceptions, tracebacks, crashed workers
# ======================================================================================


def test_traceback() -> None:
    """test_process_pool.py ProcessPoolExecutorTest.test_traceback: the task's
    exception is re-raised as is, with the worker's traceback as ``__cause__``."""
    with ProcQueue(max_workers=1) as pool:
        future = pool.submit(raise_runtime_error)
        with pytest.raises(RuntimeError) as info:
            future.result(timeout=BOUND)
    exc = info.value
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    cause = exc.__cause__
    assert type(cause) is RemoteTraceback
    assert "raise RuntimeError(123)  # some comment" in cause.tb
    assert "raise RuntimeError(123)  # some comment" in str(cause)

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            raise exc
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
    assert "raise RuntimeError(123)  # some comment" in stderr.getvalue()
    assert "raise RuntimeError(123)  # some comment" in "".join(traceback.format_exception(exc))


def test_exception_types_are_preserved() -> None:
    """test_deadlock.py test_error_during_func_exec_on_worker /
    test_exit_during_func_exec_on_worker: the task's own exception class is
    re-raised, SystemExit included; the pool goes on."""
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(CustomError, match="custom"):
            pool.submit(raise_custom, "custom").result(timeout=BOUND)
        with pytest.raises(ZeroDivisionError):
            pool.submit(divmod, 1, 0).result(timeout=BOUND)
        assert isinstance(pool.submit(divmod, 1, 0).exception(timeout=BOUND), ZeroDivisionError)
        with pytest.raises(SystemExit):
            pool.submit(sys_exit, 1).result(timeout=BOUND)
        assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256


def test_worker_exit_fails_only_its_task() -> None:
    """test_process_pool.py test_traceback_when_child_process_terminates_abruptly
    and test_killed_child. Deliberate difference: the future fails with
    WorkerCrashedError, a BrokenProcessPool that names the exit code, and the
    pool stays usable."""
    with ProcQueue(max_workers=1) as pool:
        future = pool.submit(os._exit, 99)
        with pytest.raises(BrokenProcessPool) as info:
            future.result(timeout=BOUND)
        assert isinstance(info.value, WorkerCrashedError)
        assert info.value.exitcode == 99
        assert "exit code 99" in str(info.value)
        with pytest.raises(BrokenProcessPool):
            pool.submit(kill_self).result(timeout=BOUND)
        assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256


def test_shutdown_deadlock(tmp_path: Path) -> None:
    """test_deadlock.py test_shutdown_deadlock: a worker that dies after
    shutdown() was called does not deadlock the shutdown; its future gets
    BrokenProcessPool."""
    with ProcQueue(max_workers=2) as pool, Gate(tmp_path) as gate:
        f = pool.submit(gated_exit, *gate.paths, 1)
        gate.wait_started()

        def shutdown_then_release() -> None:
            gate.release()
            pool.shutdown(wait=True)

        call_bounded(shutdown_then_release)
        with pytest.raises(BrokenProcessPool):
            f.result(timeout=0)


def test_crash_while_task_data_is_being_written(tmp_path: Path) -> None:
    """test_deadlock.py test_crash_big_data (gh-94777): a worker that dies while
    a large task is still being written to it must give a clean error, not a
    deadlock. procqueue: only the crashed task fails; the big one, which never
    started, runs on the replacement worker, and the pool stays usable."""
    data = b"x" * (8 * 1024 * 1024)  # far above the 1 MiB pipe buffer
    # prefetch=1: hand the big task to the busy worker (adaptive prefetch holds
    # back a callable it has not timed yet).
    with ProcQueue(max_workers=1, prefetch=1) as pool, Gate(tmp_path) as gate:
        crasher = pool.submit(gated_exit, *gate.paths, 1)
        gate.wait_started()
        handed_over = threading.Event()

        def listener(status: procqueue.TaskStatus) -> None:
            if status.name == "len" and status.state == "running":
                handed_over.set()

        unsubscribe = pool.subscribe(listener)
        big = pool.submit(len, data)
        # The big task is prefetched into the busy worker's pipe (which fills up).
        assert handed_over.wait(BOUND)
        unsubscribe()
        gate.release()  # the worker now dies with most of the big task unread
        with pytest.raises(BrokenProcessPool):
            crasher.result(timeout=BOUND)
        assert big.result(timeout=BOUND) == len(data)
        assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256


def test_crash_big_data_map() -> None:
    """test_deadlock.py test_crash_big_data: map over crashing tasks with
    large arguments raises BrokenProcessPool rather than deadlocking."""
    data = "a" * (2 * 1024 * 1024)
    with ProcQueue(max_workers=2) as pool:
        with pytest.raises(BrokenProcessPool):
            list(pool.map(exit_with_data, [data] * 4))
        assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256


# ======================================================================================
# test_deadlock.py: errors while (un)pickling calls and results
# ======================================================================================


def test_error_at_task_pickle() -> None:
    """test_deadlock.py test_error_at_task_pickle. Deliberate difference: the
    PicklingError (SerializationError) is raised by submit itself."""
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(SerializationError) as info:
            pool.submit(id, ErrorAtPickle())
        assert isinstance(info.value, pickle.PicklingError)
        with pytest.raises(pickle.PicklingError):
            pool.submit(id, threading.Lock())
        assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (ErrorAtUnpickle, (BrokenProcessPool, pickle.UnpicklingError)),
        (ExitAtUnpickle, (BrokenProcessPool, SystemExit)),
    ],
    ids=["error", "exit"],
)
def test_error_at_task_unpickle(bad: type, expected: tuple[type[BaseException], ...]) -> None:
    """test_deadlock.py test_error_at_task_unpickle / test_exit_at_task_unpickle:
    a call whose arguments cannot be unpickled in the worker fails its future
    (CPython: BrokenProcessPool; procqueue reports the error itself) and
    does not deadlock the pool."""
    with ProcQueue(max_workers=2) as pool:
        with pytest.raises(expected):
            pool.submit(id, bad()).result(timeout=BOUND)
        assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256


def test_error_during_result_pickle_on_worker() -> None:
    """test_deadlock.py test_error_during_result_pickle_on_worker."""
    with ProcQueue(max_workers=2) as pool:
        with pytest.raises(pickle.PicklingError):
            pool.submit(return_instance, ErrorAtPickle).result(timeout=BOUND)
        assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256


def test_exit_during_result_pickle_on_worker() -> None:
    """test_deadlock.py test_exit_during_result_pickle_on_worker: SystemExit
    raised while the worker pickles the result is the task's exception."""
    with ProcQueue(max_workers=2) as pool:
        with pytest.raises(SystemExit):
            pool.submit(return_instance, ExitAtPickle).result(timeout=BOUND)
        assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256


def test_error_during_result_unpickle_in_result_handler() -> None:
    """test_deadlock.py test_error_during_result_unpickle_in_result_handler:
    the future fails (CPython: BrokenProcessPool; procqueue:
    ResultSerializationError), no deadlock."""
    with ProcQueue(max_workers=2) as pool:
        with pytest.raises((BrokenProcessPool, pickle.PickleError)):
            pool.submit(return_instance, ErrorAtUnpickle).result(timeout=BOUND)
        assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256


def test_exit_during_result_unpickle_in_result_handler() -> None:
    """test_deadlock.py test_exit_during_result_unpickle_in_result_handler:
    SystemExit raised while the *parent* unpickles a result must fail that
    future (CPython: BrokenProcessPool; procqueue: ResultSerializationError,
    and the pool goes on), not leave it pending forever."""
    pool = ProcQueue(max_workers=2)
    try:
        future = pool.submit(return_instance, ExitAtUnpickle)
        with pytest.raises((BrokenProcessPool, pickle.PickleError)) as info:
            future.result(timeout=HANG_BOUND)
        if not isinstance(info.value, BrokenProcessPool):
            assert pool.submit(pow, 2, 8).result(timeout=BOUND) == 256
    finally:
        pool.shutdown(wait=True, cancel_futures=True, timeout=0)


# ======================================================================================
# test_future.py semantics on executor futures: cancel(), callbacks
# ======================================================================================


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "after_tiny_tasks"])
def test_cancel_not_yet_started_future(tmp_path: Path, warm: bool) -> None:
    """test_future.py FutureTests.test_cancel, on a future the executor has not
    started: cancel() returns True, the future is cancelled, result() raises
    CancelledError, done-callbacks run once, and the task never runs. A running
    future cannot be cancelled. With one worker, the third queued call is
    still pending (ProcessPoolExecutor queues one call beyond those running),
    also after very short calls of the same function (``warm``)."""
    # prefetch=1 when warm: see test_cancel_futures.
    with ProcQueue(max_workers=1, prefetch=1 if warm else None) as pool, Gate(tmp_path) as gate:
        if warm:
            run_tiny_tasks(pool, gate)
        running = pool.submit(maybe_gated, "running", *gate.paths)
        prefetched = pool.submit(maybe_gated, "second", *gate.paths)
        target = pool.submit(maybe_gated, "never", *gate.paths)
        gate.wait_started(1)
        calls: list[Future[Any]] = []
        target.add_done_callback(calls.append)

        assert target.cancel() is True
        assert target.cancelled()
        assert target.done()
        assert not target.running()
        with pytest.raises(CancelledError):
            target.result(timeout=0)
        with pytest.raises(CancelledError):
            target.exception(timeout=0)
        assert target.cancel() is True  # cancelling again is still True
        assert calls == [target]

        assert running.running()
        assert running.cancel() is False

        gate.open_all()
        assert running.result(timeout=BOUND) == "running"
        assert prefetched.result(timeout=BOUND) == "second"
        pool.shutdown(wait=True)
        assert gate.count_started() == 2, "a cancelled task ran"
        done, _ = futures.wait([target], timeout=0)
        assert done == {target}
        assert running.cancel() is False  # done futures cannot be cancelled
        assert calls == [target]


def test_done_callbacks_run_once() -> None:
    """test_future.py FutureTests.test_done_callback_*: callbacks added before
    completion run once with the future; added after, they run at once."""
    with ProcQueue(max_workers=1) as pool:
        seen: list[tuple[str, Any]] = []
        ok = pool.submit(pow, 2, 8)
        ok.add_done_callback(lambda f: seen.append(("ok", f.result())))
        bad = pool.submit(divmod, 1, 0)
        bad.add_done_callback(lambda f: seen.append(("bad", type(f.exception()).__name__)))
        ok.result(timeout=BOUND)
        with pytest.raises(ZeroDivisionError):
            bad.result(timeout=BOUND)
        pool.shutdown(wait=True)
        late: list[Future[Any]] = []
        ok.add_done_callback(late.append)
    assert sorted(seen) == [("bad", "ZeroDivisionError"), ("ok", 256)]
    assert late == [ok]


def test_future_result_timeout(tmp_path: Path) -> None:
    """test_future.py FutureTests.test_result_with_timeout on an executor
    future: result(timeout) raises TimeoutError while it runs."""
    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        f = pool.submit(gated, *gate.paths, 5)
        with pytest.raises(futures.TimeoutError):
            f.result(timeout=0.05)
        with pytest.raises(futures.TimeoutError):
            f.exception(timeout=0)
        gate.release()
        assert f.result(timeout=BOUND) == 5


# ======================================================================================
# asyncio interoperability (asyncio.wrap_future, loop.run_in_executor)
# ======================================================================================


def test_asyncio_wrap_future() -> None:
    """Futures returned by submit work with asyncio.wrap_future and with
    loop.run_in_executor, results and exceptions alike."""

    async def main(pool: ProcQueue) -> None:
        assert await asyncio.wrap_future(pool.submit(pow, 2, 8)) == 256
        with pytest.raises(ZeroDivisionError):
            await asyncio.wrap_future(pool.submit(divmod, 1, 0))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(pool, mul, 6, 7) == 42
        results = await asyncio.gather(
            *(asyncio.wrap_future(pool.submit(pow, i, 2)) for i in range(6))
        )
        assert results == [i * i for i in range(6)]

    with ProcQueue(max_workers=2) as pool:
        asyncio.run(main(pool))


def test_asyncio_wrap_future_cancel_propagates(tmp_path: Path) -> None:
    """asyncio.wrap_future chains cancellation to the concurrent future: a
    wrapped future that has not started is cancelled and its task never runs."""

    async def main(pool: ProcQueue, gate: Gate) -> Future[Any]:
        pool.submit(gated, *gate.paths, 1)
        pool.submit(gated, *gate.paths, 2)
        cf = pool.submit(gated, *gate.paths, 3)
        af = asyncio.wrap_future(cf)
        await asyncio.get_running_loop().run_in_executor(None, gate.wait_started, 1)
        af.cancel()
        with pytest.raises(asyncio.CancelledError):
            await af
        return cf

    with ProcQueue(max_workers=1) as pool, Gate(tmp_path) as gate:
        cf = asyncio.run(main(pool, gate))
        assert cf.cancelled()
        gate.open_all()
        pool.shutdown(wait=True)
        assert gate.count_started() == 2
