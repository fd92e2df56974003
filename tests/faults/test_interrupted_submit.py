"""A Ctrl-C that lands inside a submit, in the main thread, while the engine
is mid-step (``procqueue/_runtime/_sigint.py``): the submit raises
``KeyboardInterrupt`` once the engine is consistent again, the task it
admitted still runs, and the pool keeps serving. Before, the interrupt cut
the step in two: a task the scheduler believed sent was never written, and
waited forever (a notebook's interrupt button does exactly this).

The signal is raised at a chosen point (``signal.raise_signal`` runs the
Python handler before the next bytecode), so the test is deterministic.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _tasks import Gate, gated

from procqueue import ProcQueue, TaskState
from procqueue._runtime import _sigint

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="Python raises KeyboardInterrupt in the main thread only",
)


def add_one(x: int) -> int:
    return x + 1


def _interrupt_once(real: Callable[..., Any]) -> Callable[..., Any]:
    fired = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGINT)  # the handler runs right here
        return real(*args, **kwargs)

    return wrapper


@pytest.fixture
def pool() -> Iterator[ProcQueue]:
    with ProcQueue(max_workers=1, start_method="fork") as pool:
        assert pool.submit(add_one, 0).result(timeout=30) == 1  # warm, idle
        yield pool


@pytest.mark.parametrize("where", ["send", "admit", "send, after a notebook cell"])
def test_an_interrupt_mid_submit_loses_nothing(
    pool: ProcQueue, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = pool._engine
    if where.endswith("cell"):
        # ipykernel puts Python's default handler back before every cell;
        # the pool was made in an earlier one.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if where.startswith("send"):  # inside the direct step, writing to the worker
        monkeypatch.setattr(engine.transport, "send", _interrupt_once(engine.transport.send))
    else:  # under the engine lock, admitting the task
        monkeypatch.setattr(engine.core, "admit", _interrupt_once(engine.core.admit))
    before = pool.get_stats().submitted
    with pytest.raises(KeyboardInterrupt):
        pool.submit(add_one, 1)
    monkeypatch.undo()
    task_id = before + 1  # ids follow submission order
    # The interrupted task was admitted and runs; the pool still serves.
    # One worker, FIFO: the later task's result means the earlier one ended.
    assert pool.submit(add_one, 2).result(timeout=30) == 3
    status = pool.get_task_status(task_id)
    assert status.state is TaskState.COMPLETED and status.attempts == 1
    stats = pool.get_stats()
    assert stats.completed == before + 2 and stats.running == stats.pending == 0


def test_outside_the_engine_ctrl_c_is_raised_at_once(pool: ProcQueue) -> None:
    assert signal.getsignal(signal.SIGINT) is _sigint._on_sigint
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert pool.submit(add_one, 5).result(timeout=30) == 6


def test_the_default_handler_comes_back_and_ones_own_are_left_alone() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with ProcQueue(max_workers=1, start_method="fork") as pool:
        assert signal.getsignal(signal.SIGINT) is _sigint._on_sigint
        pool.submit(add_one, 1).result(timeout=30)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def mine(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, mine)
    try:
        with ProcQueue(max_workers=1, start_method="fork") as pool:
            assert signal.getsignal(signal.SIGINT) is mine
            pool.submit(add_one, 1).result(timeout=30)
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_submit_waiting_for_room_is_still_interrupted(gate: Gate) -> None:
    # The hold begins once there is room: a submit blocked by max_pending
    # must end at a Ctrl-C, as any wait does.
    with ProcQueue(max_workers=1, start_method="fork", max_pending=1) as pool:
        running = pool.submit(gated, gate.paths, "done")
        gate.wait_started()
        space = pool._engine._space
        main = threading.get_ident()

        def interrupt_once_blocked() -> None:
            while not space._waiters:  # type: ignore[attr-defined]
                threading.Event().wait(0.001)  # polling the waiter list, not timing it
            signal.pthread_kill(main, signal.SIGINT)

        threading.Thread(target=interrupt_once_blocked).start()
        with pytest.raises(KeyboardInterrupt):
            pool.submit(add_one, 1)
        gate.release()
        assert running.result(timeout=30) == "done"
        assert pool.submit(add_one, 2).result(timeout=30) == 3
        assert pool.get_stats().submitted == 2  # the interrupted one never got in


def test_a_queue_stopped_without_waiting_still_gives_the_handler_back() -> None:
    first = ProcQueue(max_workers=1, start_method="fork")
    first.submit(add_one, 1).result(timeout=30)
    first.shutdown(wait=False)
    assert first._engine._stopped.wait(30)  # stopped, with no one waiting in the main thread
    with ProcQueue(max_workers=1, start_method="fork") as second:
        second.submit(add_one, 2).result(timeout=30)
    # The first queue's count went with its coordinator, not with a wait.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
