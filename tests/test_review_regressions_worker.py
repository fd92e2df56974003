"""Regressions for bugs an independent review found in the worker process:
threads and processes a task leaves behind, hostile exceptions, re-entrant
sends, read-only results, in-band bytearrays, a reset SIGTERM handler and a
coordinator killed while a task holds the GIL."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from _tasks import Gate, add, exit_now, hang, ident

from procqueue import ProcQueue, TaskTimeoutError, WorkerCrashedError, WorkerStartupError
from procqueue._runtime import _calls

# --- tasks (importable by name in the workers: the tests folder is on sys.path) --------


def leave_non_daemon_thread() -> int:
    """Return, leaving a thread (not a daemon) that never ends."""
    threading.Thread(target=threading.Event().wait, daemon=False).start()
    return os.getpid()


def start_background_process() -> int:
    """``cmd &`` in a shell: re-parented away at once, still in our group."""
    out = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, check=True
    )
    return int(out.stdout)


def helper_then_raise(pids_file: str) -> None:
    """An initializer that starts a background process and a thread, then fails."""
    with open(pids_file, "a") as f:
        f.write(f"{start_background_process()}\n")
    threading.Thread(target=threading.Event().wait, daemon=False).start()
    raise RuntimeError("init failed after starting a helper")


class NotesRaise(Exception):
    @property
    def __notes__(self) -> list[str]:
        raise RuntimeError("notes")


def raise_notes_raise() -> None:
    raise NotesRaise("x")


def log_from_a_signal_handler_mid_send() -> str:
    """Have a signal handler log while this thread is inside the worker's
    ``_Sender.send``, holding its lock (deterministically: the handler runs
    as the first write of a frame starts)."""
    from procqueue._runtime import wire

    real = wire.write_all
    log = logging.getLogger("review.worker")

    def write_all(fd: int, buffers: list[bytes]) -> None:
        wire.write_all = real  # once
        signal.raise_signal(signal.SIGUSR1)  # the handler runs before this returns
        real(fd, buffers)

    previous = signal.signal(signal.SIGUSR1, lambda *_: log.warning("from the handler"))
    wire.write_all = write_all
    try:
        log.warning("from the task")
    finally:
        wire.write_all = real
        signal.signal(signal.SIGUSR1, previous)
    return "done"


def _writable(buf: memoryview) -> bool:
    return not memoryview(buf).readonly


class OutOfBand:
    """A small value with an out-of-band buffer, as a numpy array has."""

    def __reduce_ex__(self, protocol: object) -> object:
        return _writable, (pickle.PickleBuffer(bytearray(b"abc")),)


def return_out_of_band() -> OutOfBand:
    return OutOfBand()


def reset_sigterm() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return os.getpid()


def sigterm_handler() -> tuple[int, str]:
    handler = signal.getsignal(signal.SIGTERM)
    return os.getpid(), getattr(handler, "__qualname__", repr(handler))


# --- helpers ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group(pgid: int) -> list[int]:
    """Living processes in process group ``pgid``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getpgid(int(name)) == pgid and _alive(int(name)):
                    out.append(int(name))
            except OSError:
                pass
    return out


def _until(done: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``done`` (the OS gives no event for another process's death)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# --- A: the worker leaves by os._exit ----------------------------------------------------


def test_a_recycled_worker_exits_though_a_task_left_a_non_daemon_thread() -> None:
    with ProcQueue(max_workers=1, max_tasks_per_child=1) as pool:
        first = pool.submit(leave_non_daemon_thread).result(timeout=30)
        # The slot is refilled only once the recycled worker has exited.
        assert pool.submit(os.getpid).result(timeout=10) != first


# --- B: what a task or initializer left in the worker's group goes with it -------------


@pytest.mark.parametrize("recycle", [True, False], ids=["recycled", "shut-down"])
def test_a_background_process_a_task_started_goes_with_its_worker(recycle: bool) -> None:
    pool = ProcQueue(max_workers=1, max_tasks_per_child=1 if recycle else None)
    try:
        bg = pool.submit(start_background_process).result(timeout=30)
        assert _alive(bg)
        if recycle:
            assert pool.submit(add, 1, 2).result(timeout=30) == 3
            assert _until(lambda: not _alive(bg))
    finally:
        pool.shutdown(wait=True)
    try:
        assert _until(lambda: not _alive(bg))
    finally:
        _kill([bg])


def test_a_failing_initializer_leaves_no_helper_and_no_hung_worker(tmp_path: Path) -> None:
    pids_file = str(tmp_path / "helpers")
    Path(pids_file).touch()
    pool = ProcQueue(max_workers=1, initializer=helper_then_raise, initargs=(pids_file,))
    try:
        # Each failed worker exits (code 3) despite its initializer's thread.
        with pytest.raises(WorkerStartupError):
            pool.submit(add, 1, 2).result(timeout=30)
    finally:
        pool.shutdown(wait=True)
    helpers = [int(p) for p in Path(pids_file).read_text().split()]
    assert helpers
    try:
        assert _until(lambda: not any(map(_alive, helpers)))
    finally:
        _kill(helpers)


# --- C: an exception whose formatting raises ---------------------------------------------


def test_an_exception_whose_notes_raise_fails_its_task_alone() -> None:
    with ProcQueue(max_workers=1) as pool:
        exc = pool.submit(raise_notes_raise).exception(timeout=30)
        assert type(exc).__name__ == "NotesRaise"
        assert pool.submit(add, 20, 22).result(timeout=30) == 42


# --- D: a signal handler that logs while the worker is sending ----------------------------


def test_a_signal_handler_that_logs_mid_send_does_not_deadlock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING), ProcQueue(max_workers=1) as pool:
        fut = pool.submit_task(log_from_a_signal_handler_mid_send, timeout=10, max_retries=0)
        assert fut.result(timeout=30) == "done"
        assert pool.submit(add, 1, 2).result(timeout=30) == 3  # the stream is intact
    messages = [r.getMessage() for r in caplog.records if r.name == "review.worker"]
    assert messages == ["from the task", "from the handler"]


# --- E: small results with out-of-band buffers arrive writable ---------------------------


def test_a_small_out_of_band_result_arrives_writable() -> None:
    with ProcQueue(max_workers=1) as pool:
        assert pool.submit(return_out_of_band).result(timeout=30) is True


# --- F: a large bytearray travels out of band, and stays a bytearray ----------------------


def test_a_large_bytearray_travels_out_of_band_as_a_bytearray() -> None:
    data = bytearray(os.urandom(1 << 17))
    args = _calls.dump_arguments((data,), {})
    value = _calls.dump_value(data)
    assert len(args) == 3 and len(value) == 3  # header, pickle, the buffer itself
    back = _calls.load_value(memoryview(b"".join(value)))
    assert type(back) is bytearray and back == data
    (got,), _ = _calls.load_value(memoryview(b"".join(args)))
    assert type(got) is bytearray and got == data
    with ProcQueue(max_workers=1) as pool:
        out = pool.submit(ident, data).result(timeout=30)
        assert type(out) is bytearray and out == data


# --- G: a task that resets SIGTERM does not disarm the worker for good --------------------


def test_the_worker_restores_its_sigterm_handler_after_a_task_resets_it() -> None:
    with ProcQueue(max_workers=1) as pool:
        pid = pool.submit(reset_sigterm).result(timeout=30)
        assert pool.submit(sigterm_handler).result(timeout=30) == (pid, "_on_sigterm")


# --- H: a coordinator SIGKILLed while a task holds the GIL -----------------------------------

_COORDINATOR = r"""
import os, re, sys
from procqueue import ProcQueue

def hog(started):
    fd = os.open(started, os.O_WRONLY)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    re.match(r"(a+)+$", "a" * 40 + "b")  # C code holding the GIL for hours

if __name__ == "__main__":
    pool = ProcQueue(max_workers=1)
    pool.submit(hog, sys.argv[1])
    sys.stdin.read()
"""


def test_workers_go_when_the_coordinator_is_killed_while_a_task_holds_the_gil(
    gate: Gate,
) -> None:
    coordinator = subprocess.Popen(
        [sys.executable, "-c", _COORDINATOR, gate.started_path], stdin=subprocess.PIPE
    )
    worker = -1
    try:
        worker = gate.wait_started()
        coordinator.kill()
        coordinator.wait()
        assert _until(lambda: not _group(worker))
    finally:
        coordinator.kill()
        coordinator.wait()
        if worker > 0 and _group(worker):
            os.killpg(worker, signal.SIGKILL)


# --- H: the watchdog goes with its worker, however the worker ends ------------------------


@pytest.mark.parametrize("end", ["shutdown", "recycle", "crash", "timeout"])
def test_no_watchdog_outlives_its_worker(end: str) -> None:
    pool = ProcQueue(max_workers=1, max_tasks_per_child=1 if end == "recycle" else None)
    try:
        worker = pool.submit(os.getpid).result(timeout=30)
        if end != "recycle":  # (a recycled worker may be gone already)
            assert len(_group(worker)) == 2  # the worker and its watchdog
        if end == "crash":
            with pytest.raises(WorkerCrashedError):
                pool.submit_task(exit_now, 7, max_retries=0).result(timeout=30)
        elif end == "timeout":
            with pytest.raises(TaskTimeoutError):
                pool.submit_task(hang, timeout=0.5, max_retries=0).result(timeout=30)
        elif end == "recycle":
            assert pool.submit(add, 1, 2).result(timeout=30) == 3
        if end != "shutdown":
            assert _until(lambda: not _group(worker))
    finally:
        pool.shutdown(wait=True)
    assert _until(lambda: not _group(worker))


def test_a_leaving_worker_flushes_a_multiprocessing_queue_a_task_fed() -> None:
    """Leaving by os._exit skipped multiprocessing's exit finalizers, among
    them a Queue's feeder flush: a recycled worker cut a 4 MB put short and
    the reader in the coordinator's process waited on half a message."""
    import multiprocessing

    import _tasks

    ctx = multiprocessing.get_context("fork")
    _tasks.MP_QUEUE = queue = ctx.Queue()
    try:
        with ProcQueue(1, ctx, max_tasks_per_child=1) as pool:
            futures = [pool.submit(_tasks.put_big, i) for i in range(3)]
            got = sorted(queue.get(timeout=30)[0] for _ in range(3))
            assert [f.result(timeout=30) for f in futures] == [0, 1, 2]
        assert got == [0, 1, 2]
    finally:
        _tasks.MP_QUEUE = None
        queue.close()
