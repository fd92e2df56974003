"""Regressions for bugs a review found in the coordinator's process plumbing:
an exit hidden by a task's forked child, a lifeline copied into the
application's own forks, memory limits that charged shared pages many times,
running out of fds while starting a worker, and a task's background processes
outliving their worker."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from _tasks import Gate, add, gated

from procqueue import ProcQueue, WorkerCrashedError, WorkerLimits
from procqueue._runtime import _shm, processes, worker
from procqueue._runtime.processes import ProcessFigures, kill_children, kill_tree

MB = 1 << 20

# --- tasks (imported by the workers by every start method) ---------------------------


def fork_then_crash(pidfile: str) -> None:
    """Fork a child that outlives us (out of our process group, so that no
    group kill takes it), then die."""
    child = os.fork()
    if child == 0:
        os.setsid()
        time.sleep(30)
        os._exit(0)
    Path(pidfile).write_text(str(child))
    os._exit(7)


def start_in_background(pidfile: str) -> None:
    """A shell's ``cmd &``: re-parented away from the worker at once."""
    subprocess.run(f"sleep 30 & echo $! > {pidfile}", shell=True, check=True)


def fork_helpers_holding(size: int, helpers: int, hold: float) -> int:
    """Touch ``size`` bytes, then fork ``helpers`` idle copies for ``hold`` s."""
    data = bytearray(size)
    for i in range(0, size, 4096):
        data[i] = 1
    kids = []
    for _ in range(helpers):
        pid = os.fork()
        if pid == 0:
            time.sleep(hold)
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    return len(data)


# --- helpers --------------------------------------------------------------------------


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _gone_within(pid: int, timeout: float) -> bool:
    """Poll for a process's death (no event to wait on for a non-child)."""
    deadline = time.monotonic() + timeout
    while not _dead(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


# --- 1: a task's forked child does not hide its worker's crash ------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_crash_is_seen_while_a_child_the_task_forked_lives(method: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    with ProcQueue(max_workers=1, start_method=method) as pool:
        fut = pool.submit_task(fork_then_crash, str(pidfile), max_retries=0)
        try:
            # multiprocessing's sentinel pipe, copied into the child, would
            # not report the exit before the child's end.
            exc = fut.exception(timeout=10)
        finally:
            if pidfile.exists():
                _kill(int(pidfile.read_text()))
        assert isinstance(exc, WorkerCrashedError) and exc.exitcode == 7


# --- 5: what a task left in its worker's group goes with the worker ------------------


def test_a_tasks_background_process_goes_with_its_worker_on_a_clean_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The coordinator's own guarantee: without the worker's watchdog process
    # (which kills the group too), in workers forked from here.
    monkeypatch.setattr(worker, "_start_watchdog", lambda lifeline: False, raising=False)
    pidfile = tmp_path / "background"
    with ProcQueue(max_workers=1, start_method="fork") as pool:
        pool.submit(start_in_background, str(pidfile)).result(timeout=30)
    background = int(pidfile.read_text())
    try:
        assert _gone_within(background, 5), "a task's background process outlived the pool"
    finally:
        _kill(background)


# --- 2: the lifeline's write end stays in the coordinator -------------------------------


def test_a_process_forked_by_the_application_does_not_hold_the_lifeline(gate: Gate) -> None:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(gated, gate.paths, "done")
        gate.wait_started()
        transport: Any = pool._engine.transport
        lifeline = transport._lifeline_w
        worker_fds = [transport._procs[0].tasks_fd, transport._procs[0].results_fd]
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            still_open = []
            for fd in (lifeline, *worker_fds):
                try:
                    os.fstat(fd)
                    still_open.append(fd)
                except OSError:
                    pass
            os._exit(1 if still_open else 0)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the forked child held coordinator fds"
        # The coordinator's own copies are untouched.
        os.fstat(lifeline)
        gate.release()
        assert fut.result(timeout=30) == "done"


def test_fork_started_workers_still_start_and_serve() -> None:
    with ProcQueue(max_workers=2, start_method="fork") as pool:
        assert list(pool.map(add, range(8), range(8))) == [2 * i for i in range(8)]


# --- 3: memory limits count a shared page once ------------------------------------------


def test_a_task_that_forks_helpers_is_not_charged_their_shared_pages() -> None:
    # RSS summed over the tree: ~4 x 100 MB, over the limit; PSS: ~100 MB.
    limits = WorkerLimits(memory_hard=250 * MB, memory_check_interval=0.05)
    with ProcQueue(max_workers=1, limits=limits) as pool:
        fut = pool.submit_task(fork_helpers_holding, 100 * MB, 3, 1.0, max_retries=0)
        assert fut.result(timeout=30) == 100 * MB


def test_memory_figures_rss_below_the_limit_pss_above() -> None:
    figures = ProcessFigures(os.getpid())
    rss = figures.rss()
    assert rss is not None
    assert figures.memory(None) == pytest.approx(rss, rel=0.2)
    pss = figures.memory(0)
    assert pss is not None and 0 < pss <= figures.rss()  # type: ignore[operator]


# --- 4: out of fds while starting a worker ----------------------------------------------


def test_running_out_of_fds_while_starting_a_worker_is_a_start_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _shm.create
    calls = []

    def create(name: str) -> int:
        calls.append(name)
        if len(calls) == 1:  # after the pipes were made
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(name)

    monkeypatch.setattr(_shm, "create", create)
    with ProcQueue(max_workers=1) as pool:
        # Retried after a backoff; the failed start's pipes are closed (the
        # leak check of conftest counts them).
        assert pool.submit(add, 1, 2).result(timeout=30) == 3
    assert len(calls) >= 3


def test_killing_a_tree_survives_running_out_of_fds(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fds(pid: int) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(processes.psutil, "Process", no_fds)
    kill_children(os.getpid())
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    kill_tree(child.pid)
    assert child.wait(timeout=10) == -signal.SIGKILL


# --- an idle worker killed as it was handed work -------------------------------------


def test_batches_a_dead_worker_never_read_whole_are_unsent() -> None:
    """What the worker read is what was queued less what is still in the
    pipe, in the writer, or dropped on EPIPE; only batches read to their
    last byte may have started (the reviewer's r19: 40 of 40 such tasks were
    charged a crash they never saw)."""
    from collections import deque
    from types import SimpleNamespace

    from procqueue._runtime import local, wire

    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        writer = wire._FrameWriter(w)
        p = SimpleNamespace(tasks_fd=w, writer=writer, queued=0, batches=deque())

        def send(ids: tuple[int, ...], size: int) -> None:
            buffers = [b"x" * size]
            p.queued += size
            p.batches.append((p.queued, ids))
            writer.write(buffers)

        send((1,), 100)
        send((2, 3), 50)
        assert local._unsent(p) == {1, 2, 3}  # nothing read yet
        os.read(r, 100)  # the worker read batch 1 whole
        assert local._unsent(p) == {2, 3}
        os.read(r, 20)  # and part of batch 2: none of it could start
        assert local._unsent(p) == {2, 3}
        os.read(r, 30)
        assert local._unsent(p) == set()
        os.close(r)  # the worker is gone: the next batch is dropped (EPIPE)
        r = -1
        send((4,), 10)
        assert writer.dropped == 10 and local._unsent(p) == {4}
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
