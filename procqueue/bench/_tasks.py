"""The importable functions every contestant runs.

They live in an importable module, so that every pool (pickle or cloudpickle,
fork, forkserver or spawn) sends the same small by-reference pickle. The tiny
and map workloads also run a tiny task defined in the script's ``__main__``
(pickled by value under cloudpickle, by reference under pickle), in rows of
their own: see :mod:`._task_fns`.

Each returns something the coordinator can check: ``x + 1`` for the counting
tasks, the payload itself for the echo, ``(x + 1, pid, start time)`` for the
tagged task that the kill workload uses to see where and when a task ran.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


def add_one(x: int) -> int:
    """The tiny task: pure per-task overhead."""
    return x + 1


def spin(iterations: int) -> int:
    """Pure-Python CPU work; deterministic, so its value can be checked."""
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


def cpu_task(index: int, iterations: int) -> int:
    """``index + spin(iterations)``: a CPU-bound task with a checkable answer."""
    return index + spin(iterations)


def io_task(index: int, seconds: float) -> int:
    """An I/O-bound task: sleeps (the GIL is released), then ``index + 1``."""
    time.sleep(seconds)
    return index + 1


async def io_task_async(index: int, seconds: float) -> int:
    """:func:`io_task` for the event loop."""
    await asyncio.sleep(seconds)
    return index + 1


def echo(data: bytes) -> bytes:
    """The large-payload task: bytes in, the same bytes out (pickled afresh)."""
    return data


def make_payload(index: int, size: int) -> bytes:
    """``size`` bytes that name ``index`` in their first 8 and last 8, so that a
    result handed to the wrong caller, or cut short, does not compare equal."""
    tag = index.to_bytes(8, "little")
    return b"".join((tag, bytes([index % 251]) * (size - 16), tag))


#: What :func:`built_once` built, by key: one object per process and key.
_BUILT: dict[Hashable, Any] = {}

#: The index :func:`payload_result`'s bytes are made with: not 0, whose
#: payload is all zero bytes, as a zero-filled buffer handed back by mistake
#: would be.
RESULT_INDEX = 1


def built_once(key: Hashable, build: Callable[..., T], *args: Any) -> tuple[T, bool]:
    """``build(*args)`` the first time this process sees ``key``, the same
    object every time after; and whether this call built it.

    For results-only payload tasks: the payload is built once per worker (by a
    prime step, before the timing) so that what is timed is the result's trip,
    not its making. Kept here, in an importable module, because a task function
    defined in a script's ``__main__`` may travel by value (cloudpickle), and
    then its own globals are a copy that need not outlive the call.
    """
    if key in _BUILT:
        return _BUILT[key], False
    value = _BUILT[key] = build(*args)
    return value, True


def payload_result(index: int, size: int) -> tuple[int, bytes]:
    """The results-only payload task: a few bytes in, ``(index,
    make_payload(RESULT_INDEX, size))`` out. The bytes are built once per
    worker process and size, then returned again by every task, so that what is
    timed is the result's trip and not its making (building 4 MB costs more
    than pickling it)."""
    data, _ = built_once(("payload_result", size), make_payload, RESULT_INDEX, size)
    return index, data


def prime_payload_result(size: int, delay: float) -> int:
    """Build :func:`payload_result`'s bytes in this worker, sleep ``delay`` s (so
    that the other workers take the next calls) and return the pid."""
    payload_result(-1, size)
    time.sleep(delay)
    return os.getpid()


def payload_digest(data: bytes) -> tuple[int, bytes, int, bytes]:
    """The arguments-only payload task: a large payload in, a few bytes out
    (its length, first 8 bytes, middle byte and last 8 bytes), enough to tell
    one :func:`make_payload` from another or from a truncated one."""
    return len(data), data[:8], data[len(data) // 2], data[-8:]


def worker_pid(delay: float) -> int:
    """Sleep ``delay`` seconds and name the worker: used to see every worker
    answer once before timing starts."""
    time.sleep(delay)
    return os.getpid()


def tagged_sleep(index: int, seconds: float) -> tuple[int, int, float]:
    """``(index + 1, worker pid, wall-clock start)``: the kill workload reads
    where and when each task (and each re-run) started."""
    started = time.time()
    time.sleep(seconds)
    return index + 1, os.getpid(), started


def wait_for_release(started_fifo: str, release_fifo: str) -> int:
    """Block a worker: announce the start on one FIFO (a line with the pid),
    then wait for one byte on the other. Returns the pid.

    No sleeping or polling on either side: the coordinator selects on the
    *started* FIFO and writes one byte per blocker to the *release* FIFO.
    """
    fd = os.open(started_fifo, os.O_WRONLY)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    fd = os.open(release_fifo, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    return os.getpid()


def serve_slices(conn: Any) -> None:
    """A bare worker for the CPU ceiling: receive ``(fn, calls)``, answer with
    ``[fn(*c) for c in calls]``; ``None`` ends it."""
    while True:
        job = conn.recv()
        if job is None:
            conn.close()
            return
        fn, calls = job
        conn.send([fn(*c) for c in calls])
