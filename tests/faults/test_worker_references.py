"""An idle worker holds nothing of the tasks it finished.

Once a task's outcome is back, the worker must have dropped its arguments, its
result and its exception's traceback (whose frames hold the arguments), as
CPython's process pool does (``test_ressources_gced_in_workers`` in
``Lib/test/test_concurrent_futures``): a worker kept waiting for its next task
would otherwise keep, say, a 2 GB argument alive indefinitely.

Each test submits one call whose object carries a finaliser that, run in a
worker, writes a byte to a FIFO; once the outcome is back, and without
submitting anything else, the test waits (bounded) for that byte.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from procqueue import ProcQueue, ResultSerializationError, TaskQueue

_WAIT = 10.0


def _define() -> tuple[Any, ...]:
    # Defined in a function so that cloudpickle carries them by value: workers
    # need not import this module, whatever the start method.

    class Finalised:
        """Writes a byte to ``fifo`` when collected in any process but ``home``."""

        def __init__(self, fifo: str, home: int) -> None:
            self.fifo = fifo
            self.home = home

        def __del__(self) -> None:
            if os.getpid() == self.home:
                return  # the test's own copy
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)

    class Unpicklable(Finalised):
        def __reduce__(self) -> Any:
            raise TypeError("not picklable on purpose")

    def ignore(*args: object, **kwargs: object) -> None:
        return None

    def make(cls: type, fifo: str, home: int) -> object:
        return cls(fifo, home)

    def fail(*args: object, **kwargs: object) -> None:
        raise ValueError("planned failure")

    def fail_holding(fifo: str, home: int) -> None:
        held = Finalised(fifo, home)  # referenced by this frame, so by the traceback
        raise ValueError(f"planned failure holding {type(held).__name__}")

    return Finalised, Unpicklable, ignore, make, fail, fail_holding


Finalised, Unpicklable, ignore, make, fail, fail_holding = _define()


class Signal:
    """The test's end of the FIFO that finalisers write to."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "finalised.fifo")
        os.mkfifo(self.path)
        # O_RDWR never blocks on a FIFO and keeps a reader for the workers' writes.
        self._fd = os.open(self.path, os.O_RDWR)
        self.home = os.getpid()
        self.expected = 0

    def obj(self) -> Any:
        """An object to send to a worker, which must free it."""
        self.expected += 1
        return Finalised(self.path, self.home)

    def expect(self) -> None:
        """One more object, made in the worker, must be freed there."""
        self.expected += 1

    def wait(self) -> None:
        """Every expected byte; once the queue closes, its worker's exit would
        free everything, so this runs while the queue is open and idle."""
        for _ in range(self.expected):
            ready, _, _ = select.select([self._fd], [], [], _WAIT)
            if not ready:
                raise AssertionError(f"the idle worker still holds an object after {_WAIT}s")
            assert os.read(self._fd, 1) == b"x"

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def signal(tmp_path: Path) -> Iterator[Signal]:
    s = Signal(tmp_path)
    yield s
    s.close()


def _executor(sig: Signal, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> object:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(fn, *args, **kwargs)
        outcome = fut.exception() or fut.result()
        sig.wait()  # the worker is idle: nothing else was submitted
    return outcome


def _asyncio(sig: Signal, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> object:
    async def main() -> object:
        async with TaskQueue(num_workers=1) as q:
            tid = await q.submit(fn, *args, **kwargs)
            outcome: object
            try:
                outcome = await q.result(tid)
            except Exception as e:
                outcome = e
            sig.wait()  # blocks the loop on purpose: nothing else may run
        return outcome

    return asyncio.run(main())


@pytest.fixture(params=[_executor, _asyncio], ids=["ProcQueue", "TaskQueue"])
def call_then_wait(request: pytest.FixtureRequest) -> Callable[..., object]:
    """Run one call on a one-worker queue; once its outcome is back, wait for
    the finaliser's byte; return the value or the exception."""
    door: Callable[..., object] = request.param
    return door


def test_positional_argument_is_freed(signal: Signal, call_then_wait: Any) -> None:
    assert call_then_wait(signal, ignore, signal.obj()) is None


def test_keyword_argument_is_freed(signal: Signal, call_then_wait: Any) -> None:
    assert call_then_wait(signal, ignore, 1, payload=signal.obj()) is None


def test_result_is_freed_once_sent(signal: Signal, call_then_wait: Any) -> None:
    signal.expect()
    value = call_then_wait(signal, make, Finalised, signal.path, signal.home)
    assert type(value).__name__ == "Finalised"


def test_unpicklable_result_is_freed(signal: Signal, call_then_wait: Any) -> None:
    signal.expect()
    err = call_then_wait(signal, make, Unpicklable, signal.path, signal.home)
    assert isinstance(err, ResultSerializationError)


def test_arguments_of_a_failed_task_are_freed(signal: Signal, call_then_wait: Any) -> None:
    err = call_then_wait(signal, fail, signal.obj(), payload=[signal.obj()])
    assert isinstance(err, ValueError)


def test_traceback_frames_are_freed(signal: Signal, call_then_wait: Any) -> None:
    # The object lives only in the failed task's frame, which its traceback holds.
    signal.expect()
    err = call_then_wait(signal, fail_holding, signal.path, signal.home)
    assert isinstance(err, ValueError)
