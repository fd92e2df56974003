"""OS plumbing: starting worker processes, killing process trees, psutil figures.

Kept apart from the engine (as loky keeps ``loky/backend``) so the coordinator
reads as policy, not syscalls.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

import psutil

_log = logging.getLogger("procqueue.processes")

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(parent_pid: int, signum: int) -> None:
    """Linux: have the kernel send ``signum`` when our parent dies.

    The parent is the thread that forked us (the coordinator thread, or the
    forkserver), so this fires exactly when the coordinator is gone. If the parent
    died before we could ask, leave now. Elsewhere the lifeline pipe does the job.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        # dlopen(NULL): the process's own symbols, libc's prctl among them.
        # (ctypes.util.find_library would run ldconfig in a subprocess.)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid and parent_pid != 0:
        # Under forkserver our parent is the server, not the coordinator.
        try:
            psutil.Process(parent_pid)
        except psutil.NoSuchProcess:
            os._exit(1)


#: glibc ``mallopt`` parameters, and what a worker sets them to (see below).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED = 32 << 20
MMAP_ABOVE = 16 << 20


def keep_freed_memory() -> None:
    """glibc: serve blocks under 16 MiB from the heap, and keep up to 32 MiB
    of freed memory at its top instead of handing it back at once.

    A fresh worker (forkserver, spawn) starts at glibc's defaults: a 4 MB
    ``bytes`` is ``mmap``-ed, or its heap is trimmed right after the task
    frees it, so every large argument, result or temporary is faulted in page
    by page again, task after task. Measured, 4 MB results built in the worker
    on forkserver: 7.5 ms of worker CPU per task before, 1.9 ms after. glibc's
    own dynamic thresholds can grow to twice these (32 MiB / 64 MiB) after
    one large free; these are set up front instead. Elsewhere (musl, macOS)
    nothing happens.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_ABOVE)
    mallopt(_M_TRIM_THRESHOLD, KEEP_FREED)


def kill_own_group_and_exit() -> None:
    """Kill this worker, its children and anything else in its process group,
    at once. Only a group leader (every worker is) may use its group: otherwise
    the group would be the coordinator's."""
    me = os.getpid()
    if os.getpgrp() == me:
        kill_children(me)
        os.killpg(me, signal.SIGKILL)
    kill_children(me)
    os._exit(1)


def kill_children(pid: int) -> None:
    """SIGKILL every descendant of ``pid`` (not ``pid`` itself)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except (psutil.Error, OSError):  # OSError: out of fds (EMFILE) reading /proc
        return
    for child in children:
        try:
            child.kill()
        except (psutil.Error, OSError):
            pass


def kill_tree(pid: int, pidfd: int = -1) -> None:
    """SIGKILL a worker and all its descendants.

    Descendants first: once the worker is dead they are re-parented and can no
    longer be found through it. The worker leads its own process group, so the
    group is signalled too, catching grandchildren that were already orphaned.
    ``pidfd`` (:func:`open_pidfd`): a worker that already exited is left alone,
    since its pid may be another process's by now (the forkserver, not we,
    reaps its workers); its group goes when its exit is handled
    (:func:`kill_group`).
    """
    if pidfd >= 0:
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            return
        except OSError:
            pass
    kill_children(pid)
    try:
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    kill_group(pid)


def kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` (a worker's: it leads its own),
    if any member is left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:  # ESRCH: none left; EPERM: not ours
        pass


def open_pidfd(pid: int) -> int:
    """A pidfd for ``pid`` (Linux >= 5.3), or -1. It becomes readable when the
    process exits, whoever else holds its pipes (multiprocessing's sentinel is
    a pipe that a process the task forked inherits), and it signals that very
    process, never a later one given the same pid."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return -1
    try:
        return int(pidfd_open(pid))
    except OSError:  # ESRCH (gone already), ENOSYS (old kernel), EMFILE
        return -1


def close_fds(*fds: int) -> None:
    """Close each fd that is open (>= 0), ignoring one already closed."""
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def start_process(
    ctx: BaseContext,
    target: Any,
    args: tuple[Any, ...],
    name: str,
) -> Any:
    """Start one worker process with the chosen context (not daemonic, so tasks
    may start processes of their own; procqueue reaps it itself)."""
    proc = ctx.Process(target=target, args=args, name=name, daemon=False)  # type: ignore[attr-defined]
    proc.start()
    return proc


def child_conn(fd: int, readable: bool) -> Connection:
    """Wrap a raw fd so multiprocessing can pass it to a child by any start method."""
    return Connection(fd, readable=readable, writable=not readable)


class ProcessFigures:
    """Memory and CPU% of a worker's whole process tree, read from the OS by psutil.

    Two memory figures. ``rss()``, shown in stats: resident memory summed over
    the tree, cheap (``/proc/<pid>/statm``, ~10 us a process) but it counts a
    copy-on-write page once in every process that maps it. ``memory()``, what
    the limits are checked against: the proportional set size (PSS, a page
    shared by n processes counts 1/n in each) summed over the tree, so a task's
    forked helpers, or under ``fork`` the coordinator's pages, are not charged
    over and over. PSS costs a page-table walk (``smaps_rollup``: 0.35 ms for a
    fresh worker, 2.5 ms at 200 MB, here), so it is read only when the RSS sum,
    an upper bound of it, is over the limit.
    """

    __slots__ = ("_proc",)

    def __init__(self, pid: int) -> None:
        try:
            self._proc: psutil.Process | None = psutil.Process(pid)
            self._proc.cpu_percent(None)  # first call primes the delta
        except (psutil.Error, OSError):  # OSError: out of fds (EMFILE)
            self._proc = None

    def _tree(self) -> list[psutil.Process] | None:
        proc = self._proc
        if proc is None:
            return None
        try:
            return [proc, *proc.children(recursive=True)]
        except (psutil.Error, OSError):
            return None

    def rss(self) -> int | None:
        """Resident memory of the worker and all its descendants, in bytes."""
        tree = self._tree()
        if tree is None:
            return None
        return _sum(tree, lambda p: int(p.memory_info().rss))

    def memory(self, limit: int | None) -> int | None:
        """The tree's memory as the limits see it: its RSS sum while that is at
        most ``limit``, else its PSS sum (see the class)."""
        tree = self._tree()
        if tree is None:
            return None
        rss = _sum(tree, lambda p: int(p.memory_info().rss))
        if rss is None or limit is None or rss <= limit:
            return rss
        return _sum(tree, lambda p: int(p.memory_full_info().pss))

    def read(self) -> tuple[int | None, float | None]:
        """``(rss of the tree, CPU% of the worker since the last read)``."""
        proc = self._proc
        if proc is None:
            return None, None
        try:
            cpu = proc.cpu_percent(None)
        except (psutil.Error, OSError):
            return None, None
        return self.rss(), cpu


def _sum(tree: list[psutil.Process], figure: Any) -> int | None:
    """``figure`` summed over ``tree``; a descendant that is gone counts 0,
    the worker itself gone gives ``None``."""
    total = 0
    for i, proc in enumerate(tree):
        try:
            total += figure(proc)
        except (psutil.Error, OSError):
            if i == 0:
                return None
    return total


class FiguresCache:
    """Worker figures for ``get_stats()``: read at most every ``max_age``
    seconds per worker, by whichever thread asks, under this cache's own lock
    and never under the engine's (psutil walks ``/proc``: a dashboard polling
    stats must not stall dispatch)."""

    def __init__(self, max_age: float = 0.25) -> None:
        self._max_age = max_age
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[float, ProcessFigures, int | None, float | None]] = {}

    def read(self, pid: int | None) -> tuple[int | None, float | None]:
        if pid is None:
            return None, None
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(pid)
            if entry is not None and now - entry[0] < self._max_age:
                return entry[2], entry[3]
            figures = entry[1] if entry is not None else ProcessFigures(pid)
            rss, cpu = figures.read()
            if entry is None and len(self._entries) > 64:
                # Forget workers not asked about lately (they are gone).
                self._entries = {
                    k: v for k, v in self._entries.items() if now - v[0] < 10 * self._max_age
                }
            self._entries[pid] = (now, figures, rss, cpu)
            return rss, cpu
