"""Start-up faults: a worker killed by a signal from outside while it boots is
respawned (with backoff), not taken for a broken initializer; a deterministic
start-up failure still breaks the pool fast.

The worker is held in start-up by the ``gated`` initializer from ``_tasks``: it
announces its pid on the gate and blocks until the test releases it, so the
test knows exactly which process is booting. ``_tasks`` is importable by every
start method, so these run under the default one (forkserver on Linux), the one
the defect was seen with.

What a deterministic failure raises is covered in test_crashes.py
(``test_broken_initializer_breaks_the_pool_without_a_respawn_storm``,
``test_initializer_that_exits_breaks_the_pool_with_its_exit_code``,
``test_a_script_without_main_guard_gets_a_clear_error``) and in
test_executor_conformance.py (``test_failing_initializer``). Here only what the
respawn-with-backoff fix could change: it must stay fast and must not be counted
as a start-up death.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future

import pytest
from _tasks import (
    Gate,
    add,
    broken_initializer,
    exiting_initializer,
    gated,
    pid,
)

from procqueue import ProcQueue, RetryPolicy, WorkerStartupError

#: More than the three start-up deaths in a row the pool used to allow.
KILLS = 5

#: How long one replacement may take to boot: backoff (capped near 1 s) plus a
#: forkserver start on a loaded two-core machine.
BOOT_TIMEOUT = 10.0


def _next_announced(gate: Gate, watched: Future[object]) -> int:
    """The pid of the next process to pass the gate. Waits on the FIFO in short
    slices so that a pool that broke meanwhile fails the test with its own
    error (raised by ``watched.result()``) rather than a bare timeout."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        try:
            return gate.wait_started(timeout=0.25)
        except TimeoutError:
            pass
        if watched.done():
            value = watched.result()  # raises, e.g. WorkerStartupError
            raise AssertionError(f"the task returned {value!r} while its worker was held")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no worker reached its initializer within {BOOT_TIMEOUT} s")


def test_five_kills_during_start_up_do_not_break_the_pool(gate: Gate) -> None:
    with ProcQueue(max_workers=1, initializer=gated, initargs=(gate.paths,)) as pool:
        before = pool.submit(add, 1, 2)  # workers start on demand: this boots one
        killed = []
        for _ in range(KILLS):
            booting = _next_announced(gate, before)
            os.kill(booting, signal.SIGKILL)
            killed.append(booting)
        survivor = _next_announced(gate, before)
        assert survivor not in killed
        gate.release()  # let the sixth worker finish its start-up
        assert before.result(timeout=BOOT_TIMEOUT) == 3
        after = [pool.submit(add, i, 1) for i in range(10)]
        assert [f.result(timeout=BOOT_TIMEOUT) for f in after] == [i + 1 for i in range(10)]
        assert pool.submit(pid).result(timeout=BOOT_TIMEOUT) == survivor
        stats = pool.get_stats()
    assert stats.startup_deaths == KILLS
    assert sum(w.restarts for w in stats.workers) >= KILLS
    assert stats.completed == 12 and stats.failed == 0


def test_a_kill_after_start_up_is_no_start_up_death(gate: Gate) -> None:
    """``startup_deaths`` counts only workers killed before their hello: one
    killed while running a task is an ordinary crash (the task is retried)."""
    retry = RetryPolicy(max_retries=1, backoff_base=0)
    with ProcQueue(max_workers=1, retry=retry, initializer=gated, initargs=(gate.paths,)) as pool:
        task = pool.submit(gated, gate.paths, "done")
        first = _next_announced(gate, task)  # the first worker, in its initializer
        gate.release()
        assert _next_announced(gate, task) == first  # the task, running on it
        os.kill(first, signal.SIGKILL)
        second = _next_announced(gate, task)  # the replacement, in its initializer
        assert second != first
        gate.release()
        assert _next_announced(gate, task) == second  # the retry, running on it
        gate.release()
        assert task.result(timeout=BOOT_TIMEOUT) == "done"
        stats = pool.get_stats()
    assert stats.startup_deaths == 0
    assert stats.retried == 1
    assert sum(w.restarts for w in stats.workers) >= 1


@pytest.mark.parametrize(
    ("initializer", "cause"),
    [(broken_initializer, "initializer refuses"), (exiting_initializer, "exit code 4")],
    ids=["raises", "exits"],
)
def test_a_deterministic_start_up_failure_still_fails_fast(
    initializer: Callable[[], None], cause: str
) -> None:
    """No backoff for a failure that would repeat: WorkerStartupError after the
    three tries, in seconds, and none of them is a start-up death."""
    pool = ProcQueue(max_workers=2, initializer=initializer)
    try:
        started = time.monotonic()
        fut = pool.submit(add, 1)
        with pytest.raises(WorkerStartupError, match=cause):
            fut.result(timeout=30)
        elapsed = time.monotonic() - started
        stats = pool.get_stats()
    finally:
        pool.shutdown()
    assert elapsed < 5, f"took {elapsed:.1f} s to give up on a broken start-up"
    assert stats.startup_deaths == 0
