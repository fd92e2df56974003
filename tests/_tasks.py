"""Task functions for the tests; importable in workers by every start method.

Synchronisation with the test process goes through FIFOs (no sleeps): a task
announces it started by writing its pid to the *started* FIFO, and blocks on the
*release* FIFO until the test writes a byte for it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import sys
import threading
from pathlib import Path
from typing import Any


class Gate:
    """Test-side handle of a started/release FIFO pair."""

    def __init__(self, directory: Path) -> None:
        self.started_path = str(directory / "started.fifo")
        self.release_path = str(directory / "release.fifo")
        os.mkfifo(self.started_path)
        os.mkfifo(self.release_path)
        # O_RDWR never blocks on a FIFO and keeps both ends alive for the tasks.
        self._started_fd = os.open(self.started_path, os.O_RDWR)
        self._release_fd = os.open(self.release_path, os.O_RDWR)

    @property
    def paths(self) -> tuple[str, str]:
        return self.started_path, self.release_path

    def wait_started(self, timeout: float = 30.0) -> int:
        """Block until one gated task has started; returns its worker's pid."""
        buf = b""
        while not buf.endswith(b"\n"):
            ready, _, _ = select.select([self._started_fd], [], [], timeout)
            if not ready:
                raise TimeoutError("no gated task started")
            buf += os.read(self._started_fd, 1)
        return int(buf)

    def release(self, n: int = 1) -> None:
        os.write(self._release_fd, b"x" * n)

    def close(self) -> None:
        os.close(self._started_fd)
        os.close(self._release_fd)


def gated(paths: tuple[str, str], value: object = None) -> object:
    """Announce start, wait for release, return ``value``."""
    started, release = paths
    fd = os.open(started, os.O_WRONLY)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    fd = os.open(release, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    return value


def announce(paths: tuple[str, str], value: object = None) -> object:
    """Announce start and return at once."""
    fd = os.open(paths[0], os.O_WRONLY)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    return value


def add(a: int, b: int = 0) -> int:
    return a + b


def ident(x: object) -> object:
    return x


def pid() -> int:
    return os.getpid()


def echo_kwargs(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    return args, kwargs


def fail_times(counter: str, n: int, value: object = "ok") -> object:
    """Raise ValueError on the first ``n`` calls sharing ``counter``, then return."""
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"x")
    os.close(fd)
    calls = os.path.getsize(counter)
    if calls <= n:
        raise ValueError(f"planned failure {calls} of {n}")
    return value


def crash_times(counter: str, n: int, value: object = "ok") -> object:
    """``os._exit(7)`` on the first ``n`` calls sharing ``counter``, then return."""
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"x")
    os.close(fd)
    if os.path.getsize(counter) <= n:
        os._exit(7)
    return value


def exit_now(code: int) -> None:
    os._exit(code)


def sys_exit(code: int) -> None:
    sys.exit(code)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def segfault() -> None:
    ctypes.string_at(0)


def hang() -> None:
    threading.Event().wait()


def return_lock() -> object:
    return threading.Lock()


def return_lambda() -> object:
    return lambda: 42


class NeedsTwoArgs(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_needs_two_args() -> None:
    raise NeedsTwoArgs("x", "y")


def raise_value_error(msg: str) -> None:
    raise ValueError(msg)


def log_warning(msg: str) -> str:
    logging.getLogger("tests.in_worker").warning("from task: %s", msg)
    return msg


def broken_initializer() -> None:
    raise RuntimeError("initializer refuses")


_init_value: list[object] = []


def set_init_value(value: object) -> None:
    _init_value.append(value)


def get_init_value() -> object:
    return _init_value[-1] if _init_value else None


def spawn_child_and_hang(paths: tuple[str, str]) -> None:
    """Start a grandchild process, announce both pids, hang."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"])
    fd = os.open(paths[0], os.O_WRONLY)
    os.write(fd, f"{child.pid}\n".encode())
    os.close(fd)
    threading.Event().wait()


_executed: list[int] = []


def record_order(tag: int) -> tuple[int, int]:
    """Returns (tag, position of this call among the calls this worker ran)."""
    _executed.append(tag)
    return tag, len(_executed)


def flaky(counter: str, fail_first: int, crash: bool, value: int) -> int:
    """Fail the first ``fail_first`` calls (by exception, or by crashing the
    worker when ``crash``), then return ``value``."""
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"x")
    os.close(fd)
    if os.path.getsize(counter) <= fail_first:
        if crash:
            os._exit(5)
        raise ValueError("planned")
    return value


def allocate_and_hold(mb: int, paths: tuple[str, str] | None = None) -> int:
    """Allocate ``mb`` MiB (touching every page), optionally announce and wait."""
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    if paths is not None:
        gated(paths)
    return len(block)


def allocate_and_return(mb: int) -> int:
    """Grow this worker by ``mb`` MiB and keep it (module-level), then return."""
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _kept.append(block)
    return os.getpid()


_kept: list[bytearray] = []


def big_result(mb: int) -> bytes:
    return b"x" * (mb * 2**20)


def recurse(n: int) -> int:
    return recurse(n + 1) + 1


def close_stdio() -> str:
    os.close(1)
    os.close(2)
    return "closed"


def fork_in_task() -> int:
    pid = os.fork()
    if pid == 0:
        return -1  # the child returns into the worker loop, which must drop it
    os.waitpid(pid, 0)
    return pid


def stop_self() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGSTOP)


def raise_unpicklable_exception() -> None:
    class Local(Exception):
        pass

    err = Local("local class")
    err.lock = threading.Lock()  # type: ignore[attr-defined]
    raise err


def spawn_tree_and_hang(paths: tuple[str, str]) -> None:
    """Start a child that starts a grandchild; announce every pid; hang."""
    import subprocess

    code = (
        "import subprocess, sys, threading;"
        "p = subprocess.Popen("
        "[sys.executable, '-c', 'import threading; threading.Event().wait()']);"
        "print(p.pid, flush=True);"
        "threading.Event().wait()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    fd = os.open(paths[0], os.O_WRONLY)
    os.write(fd, f"{child.pid}\n{grandchild}\n".encode())
    os.close(fd)
    threading.Event().wait()


def square_slowly(x: int) -> int:
    """About a millisecond of arithmetic, so a chaos test has tasks in flight."""
    total = 0
    for i in range(20_000):
        total += i & 1
    return x * x + (total - 10_000)


def exiting_initializer() -> None:
    os._exit(4)


def gated_pid(paths: tuple[str, str]) -> int:
    """``gated``, returning the pid of the worker that ran it."""
    gated(paths)
    return os.getpid()


def report_then_gate(paths: tuple[str, str], total: int) -> int:
    """Report 1/total, wait at the gate, then report every step up to
    ``total`` as fast as it can; return how many reports were sent."""
    import procqueue

    sent = int(procqueue.report_progress(1, total, message="first"))
    gated(paths)
    for i in range(2, total + 1):
        sent += procqueue.report_progress(i, total)
    return sent


def report_then_fail(counter: str) -> str:
    """Report progress, then fail on the first call; the second call returns."""
    import procqueue

    procqueue.report_progress(5, 10, message="halfway")
    return str(fail_times(counter, 1, "done"))


def _load_only_in(pid: int) -> object:
    if os.getpid() != pid:
        raise RuntimeError("this callable cannot be loaded in a worker")
    return add


class LoadsOnlyHere:
    """A callable that unpickles only in the process that made it."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return _load_only_in, (os.getpid(),)

    def __call__(self) -> int:
        return 0


class BadStrError(Exception):
    """An exception whose ``str()`` raises: the coordinator must not."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def raise_bad_str() -> None:
    raise BadStrError("x")


class RebuildsAsStrError(Exception):
    """Unpickles as something that is not an exception at all."""

    def __reduce__(self) -> tuple[object, ...]:
        return (str, ("not an exception",))


def raise_rebuilds_as_str() -> None:
    raise RebuildsAsStrError("x")


class CodeError(Exception):
    """Pickles (args = the message) but does not unpickle: two required arguments."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def log_unloadable_extra() -> str:
    logging.getLogger("tests.tasks").warning("failed", extra={"error": CodeError(404, "nf")})
    return "done"


def report_bracketed(x: int) -> int:
    """Report a message a markup language would read as a closing tag."""
    import procqueue

    procqueue.report_progress(1, 1, message="[/tmp] step")
    return x


#: A ``multiprocessing.Queue`` set by a test before a fork pool starts (a
#: queue crosses to a process only by inheritance).
MP_QUEUE: Any = None


def put_big(i: int) -> int:
    """Put ``(i, 4 MB)`` on :data:`MP_QUEUE`: more than a pipe holds, so its
    feeder thread is still writing when the task returns."""
    MP_QUEUE.put((i, b"x" * 4_000_000))
    return i
