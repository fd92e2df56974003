"""A submit that finds the coordinator asleep, with a worker waiting for work,
takes the coordinator's step in its own thread (``Engine._step_here``)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
from _tasks import Gate, add, gated, hang

from procqueue import ProcQueue, TaskTimeoutError
from procqueue._runtime.engine import Engine


def _asleep(engine: Engine) -> None:
    """Wait (bounded) until the coordinator sits in its select with every
    worker serving: the state a direct step needs."""
    deadline = time.monotonic() + 10
    while not (engine._sleeping and engine._direct_ok):
        assert time.monotonic() < deadline, "the coordinator never went to sleep"
        time.sleep(0.001)  # polling a state flag, with a deadline


def _steps_by_thread(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []
    step = engine._step

    def counted(events: list[Any], **kw: Any) -> Any:
        names.append(threading.current_thread().name)
        return step(events, **kw)

    monkeypatch.setattr(engine, "_step", counted)
    return names


def test_an_idle_pool_dispatches_in_the_submitting_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ProcQueue(1) as pool:
        assert pool.submit(add, 0, 0).result(timeout=30) == 0
        engine = pool._engine
        _asleep(engine)
        names = _steps_by_thread(engine, monkeypatch)
        fut = pool.submit(add, 1, 2)
        assert names[:1] == [threading.current_thread().name]  # dispatched right here
        assert fut.result(timeout=30) == 3


def test_a_deadline_set_by_a_direct_step_wakes_the_coordinator() -> None:
    with ProcQueue(1) as pool:
        pool.submit(add, 0, 0).result(timeout=30)
        _asleep(pool._engine)
        # The coordinator slept with no deadline; the timeout must still fire.
        with pytest.raises(TaskTimeoutError):
            pool.submit_task(hang, timeout=0.2, max_retries=0).result(timeout=30)
        assert pool.submit(add, 2, 2).result(timeout=30) == 4


def test_a_done_callback_may_submit() -> None:
    with ProcQueue(1) as pool:
        pool.submit(add, 0, 0).result(timeout=30)
        _asleep(pool._engine)
        chained: Future[Future[int]] = Future()
        first = pool.submit(add, 1, 1)
        first.add_done_callback(lambda f: chained.set_result(pool.submit(add, f.result(), 1)))
        assert chained.result(timeout=30).result(timeout=30) == 3


def test_large_frames_while_the_coordinator_flushes_a_full_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submitter's step and the coordinator's flush of a full pipe never
    write to one worker's pipe at once (frames would interleave): 4 MB
    arguments through the pipes alone (side files off), one by one."""
    from procqueue._runtime import _shm

    monkeypatch.setattr(_shm, "_HAVE_MEMFD", False)
    data = bytes(4 << 20)
    with ProcQueue(2, start_method="fork") as pool:
        pool.submit(add, 0, 0).result(timeout=30)
        for _ in range(40):  # without the lock, a run of 12 failed one time in 3
            futs = [pool.submit(len, data) for _ in range(4)]
            assert [f.result(timeout=60) for f in futs] == [4 << 20] * 4


def test_a_pool_not_grown_to_full_size_dispatches_in_the_submitting_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workers start on demand: one-at-a-time trips on a pool of 2 start
    one worker, and the other slot stays empty. That empty slot must not
    turn direct steps off (it did: every idle round trip then paid the hop
    to the coordinator thread and back)."""
    with ProcQueue(2) as pool:
        assert pool.submit(add, 0, 0).result(timeout=30) == 0
        engine = pool._engine
        assert sum(s.serving for s in engine.core.slots) == 1  # one slot still empty
        _asleep(engine)
        names = _steps_by_thread(engine, monkeypatch)
        fut = pool.submit(add, 1, 2)
        assert names[:1] == [threading.current_thread().name]
        assert fut.result(timeout=30) == 3


def test_a_direct_step_leaves_worker_starts_to_the_coordinator(
    monkeypatch: pytest.MonkeyPatch, gate: Gate
) -> None:
    """A second task while the one worker is busy, on a pool with an empty
    slot: the submitter's step decides to start a worker, and the
    coordinator thread starts it."""
    with ProcQueue(2, start_method="fork", prefetch=0) as pool:
        assert pool.submit(add, 0, 0).result(timeout=30) == 0
        engine = pool._engine
        _asleep(engine)
        first = pool.submit(gated, gate.paths, "first")
        gate.wait_started()
        _asleep(engine)
        starters: list[str] = []
        start = engine.transport.start_worker

        def counted(slot: Any) -> Any:
            starters.append(threading.current_thread().name)
            return start(slot)

        monkeypatch.setattr(engine.transport, "start_worker", counted)
        names = _steps_by_thread(engine, monkeypatch)
        second = pool.submit(add, 2, 2)
        assert names[:1] == [threading.current_thread().name]  # the step that wants a worker
        assert second.result(timeout=30) == 4  # on the new worker: the first is gated
        assert starters == ["procqueue-coordinator"]
        gate.release()
        assert first.result(timeout=30) == "first"


def test_a_direct_step_defers_only_the_starts_and_what_follows_on_their_slots() -> None:
    """A task for an idle worker goes out in the submitter's step even when
    that step also starts a worker: deferred behind the start, it could meet
    its worker already reaped by the coordinator (which broke the pool)."""
    from procqueue._core.events import KillWorker, ReadMemory, SendTasks, StartWorker
    from procqueue._core.slots import KillReason

    with ProcQueue(1) as pool:
        engine = pool._engine
        send0 = SendTasks(0, [])
        kill1 = KillWorker(1, KillReason.TIMEOUT)
        actions = [send0, StartWorker(1), SendTasks(2, []), kill1, ReadMemory((0, 1))]
        now = engine._defer_starts(list(actions))
        assert now == [send0, SendTasks(2, [])]
        assert engine._deferred == [StartWorker(1), kill1, ReadMemory((0, 1))]
        engine._deferred = []  # nothing to start in this pool


def test_a_start_deferred_by_a_step_that_raised_still_happens(gate: Gate) -> None:
    """A BaseException out of a submitter's step (a Ctrl-C in the main
    thread, a done-callback's SystemExit) after it deferred a worker start:
    the coordinator must still be woken to start it. The step had also
    marked the pool as not short of work, so no later submit would."""
    with ProcQueue(2, start_method="fork", prefetch=0) as pool:
        engine = pool._engine
        assert pool.submit(add, 0, 0).result(timeout=30) == 0
        _asleep(engine)
        first = pool.submit(gated, gate.paths, "first")
        gate.wait_started()
        _asleep(engine)
        publish = engine._publish
        raised: list[bool] = []

        def interrupted(pub: Any) -> None:
            if engine._deferred and not raised:
                raised.append(True)
                raise KeyboardInterrupt("in the submitter's step")
            publish(pub)

        engine._publish = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            pool.submit(add, 2, 2)
        assert raised
        # The first worker is gated: this one can only run on the deferred one.
        assert pool.submit(add, 3, 3).result(timeout=30) == 6
        gate.release()
        assert first.result(timeout=30) == "first"
