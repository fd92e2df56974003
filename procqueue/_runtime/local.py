"""The local transport: one OS process per slot, on this machine.

Each worker has two one-way pipes (tasks in, results out; ``wire.py``), two
side files for large buffers, one per direction (``_shm.py``; they vanish with
the last process that holds them, so a crash leaks none), a
process sentinel that becomes readable when it exits (a pidfd where the OS has
them), and a read end of the *lifeline* pipe whose write end only the
coordinator holds (EOF there tells a worker its coordinator is gone;
``worker.py``; a process forked here later closes its copy, see
:func:`_close_in_forked_child`). Everything the loop waits on
is registered with the :class:`~.transport.Poller`, so one ``select`` covers
every worker. Results are decoded (unpickled) here, in the coordinator thread
but outside the engine lock.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import multiprocessing
import multiprocessing.spawn
import os
import pickle
import select
import struct
import termios
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

import cloudpickle

from .._core.config import QueueConfig
from .._core.events import (
    Done,
    Event,
    Exited,
    InitFailed,
    Memory,
    Progressed,
    Ready,
    Started,
    StartFailed,
)
from .._core.records import _TaskRecord
from ..errors import (
    InvalidArgumentError,
    RemoteTraceback,
    ResultSerializationError,
    SerializationError,
    UnpicklableTaskError,
    _safe_str,
)
from . import _calls, _shm, wire
from .processes import (
    FiguresCache,
    ProcessFigures,
    child_conn,
    close_fds,
    kill_group,
    kill_tree,
    open_pidfd,
    start_process,
)
from .transport import Poller, Transport
from .worker import worker_main

_log = logging.getLogger("procqueue.coordinator")

#: Numbers the side files of workers, across every pool of the process.
_worker_numbers = itertools.count(1)
#: Every open transport of this process: a worker forked for one pool closes
#: the fds of all of them (fork copies them all, and a copy held by another
#: pool's worker would outlive this pool's shutdown).
_live: weakref.WeakSet[LocalTransport] = weakref.WeakSet()
_live_lock = threading.Lock()
#: ``worker`` is set by the thread forking one of our workers (``fork`` start
#: method), so that :func:`_close_in_forked_child` knows the child it runs in.
_forking = threading.local()

START_METHODS = ("fork", "forkserver", "spawn")


def default_start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``.

    Not ``fork``: the coordinator is a thread, so every replacement worker would
    be forked from a multi-threaded process, which can deadlock the child on a
    lock some other thread held (the reason CPython 3.14 moved its own default).
    The forkserver forks from a clean single-threaded process and costs a few
    milliseconds per worker (it has imported procqueue already: see
    :func:`_preload_in_forkserver`), paid once per worker, not per task.
    """
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


#: The module a worker runs, which the forkserver imports before it forks any
#: (beside the stdlib's default, the main module). Without it each worker it
#: forked imported procqueue afresh: about 120 ms of a 150 ms worker start on
#: a 2-core box, against 9 ms under fork.
_WORKER_MODULE = "procqueue._runtime.worker"


def _preload_in_forkserver(ctx: Any) -> None:
    """Add the worker's module to the forkserver's preload list, keeping what
    is there. It takes effect only if the server has not started yet (it is
    one per process, shared with any other user of the forkserver, who then
    gets a server that has imported procqueue too); importing it costs the
    server once what it saves every worker."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    current = getattr(server, "_preload_modules", None)
    if not isinstance(current, list) or _WORKER_MODULE in current:
        return  # not CPython's forkserver as we know it, or done already
    ctx.set_forkserver_preload([*current, _WORKER_MODULE])


def check_start_method(method: str) -> None:
    if method not in START_METHODS:
        raise InvalidArgumentError(f"start_method must be one of {START_METHODS}, got {method!r}")
    if method not in multiprocessing.get_all_start_methods():
        raise InvalidArgumentError(f"start method {method!r} is not available here")


class _Proc:
    """One live worker process and its pipe ends (coordinator side)."""

    __slots__ = ("slot", "proc", "pid", "tasks_fd", "results_fd", "pidfd", "sentinel",
                 "writer", "reader", "writing", "figures", "closed", "holds", "outbox", "inbox",
                 "spilled", "queued", "batches")  # fmt: skip

    def __init__(
        self, slot: int, proc: Any, tasks_fd: int, results_fd: int, side: tuple[int, int]
    ) -> None:
        self.slot = slot
        self.proc = proc
        self.pid: int = proc.pid
        self.tasks_fd = tasks_fd
        self.results_fd = results_fd
        # multiprocessing's sentinel (under fork and spawn) is a pipe whose
        # write end a process the task forks inherits: it would report the exit
        # only once that one is gone too. A pidfd reports the worker's own.
        # (Under forkserver the pid could in theory be reaped and reused before
        # this line; pids are handed out cyclically, so only after a wrap.)
        self.pidfd = open_pidfd(self.pid)
        self.sentinel: int = self.pidfd if self.pidfd >= 0 else proc.sentinel
        self.writer = wire._FrameWriter(tasks_fd)
        self.reader = wire._FrameReader(results_fd)
        self.writing = False
        self.figures: ProcessFigures | None = None
        self.closed = False
        # The callable ids this worker keeps (_calls.CallRefs), oldest first.
        self.holds: dict[int, None] = {}
        # Side files (-1: none): arguments out, results in.
        self.outbox = _shm.Outbox(side[0]) if side[0] >= 0 else None
        self.inbox = _shm.Inbox(side[1], kept=True)
        # Task id -> its arguments' regions in the tasks side file, until its
        # result says the worker has read them. Always empty without one.
        self.spilled = self.outbox.held if self.outbox is not None else {}
        #: Bytes of frames given to the writer, and the last batches sent:
        #: ``(queued after it, its task ids)``; a worker holds at most
        #: 1 + prefetch (<= 256) tasks, so the batches it holds are among these.
        self.queued = 0
        self.batches: deque[tuple[int, tuple[int, ...]]] = deque(maxlen=512)


class LocalTransport(Transport):
    """Worker processes started with a ``multiprocessing`` context."""

    def __init__(self, config: QueueConfig) -> None:
        method = config.start_method or default_start_method()
        check_start_method(method)
        self.start_method = method
        self._ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            _preload_in_forkserver(self._ctx)
        self._forward_logs = config.forward_logs
        self._procs: dict[int, _Proc] = {}
        self._poller: Poller | None = None
        self._lifeline_r = self._lifeline_w = -1
        self._figures = FiguresCache()
        self._refs = _calls.CallRefs()
        self._started = 0
        self._init_blob: bytes | None = None
        # Memory is read for the limits only; below the lower one, RSS will do.
        lim = config.limits
        floor = [x for x in (lim.memory_soft, lim.memory_hard) if x is not None]
        self._memory_floor = min(floor) if floor else None
        if config.initializer is not None:
            try:
                self._init_blob = cloudpickle.dumps((config.initializer, config.initargs))
            except Exception as e:
                raise SerializationError(f"cannot pickle the initializer: {e}") from e

    def check_main(self) -> None:
        """A script without ``if __name__ == "__main__":`` re-runs in every
        spawned worker; say so in the caller's thread, as the stdlib does
        (``multiprocessing.spawn._check_not_importing_main``)."""
        if self.start_method != "fork":
            check = getattr(multiprocessing.spawn, "_check_not_importing_main", None)
            if check is not None:
                check()

    def open(self, poller: Poller) -> None:
        self._poller = poller
        self._lifeline_r, self._lifeline_w = os.pipe()
        with _live_lock:
            _live.add(self)

    # ------------------------------------------------------------------ starting

    def start_worker(self, slot: int) -> list[Event]:
        poller = self._poller
        assert poller is not None
        # Named for /proc/<pid>/fd readers (and the leak tests): our pid, then
        # a count of workers started by every pool of this process, never reused.
        self._started += 1
        name = f"procqueue-{os.getpid()}-{next(_worker_numbers)}"
        level = logging.getLogger().getEffectiveLevel() if self._forward_logs else None
        ours: list[int] = []  # the coordinator's ends: closed again if the start fails
        # The child's ends travel as Connection objects (any start method can pass
        # those); each is wrapped as soon as it exists, and closed (by its
        # Connection, never twice) once the child has it, or the start failed.
        theirs: list[Any] = []
        try:
            # Any of these may fail for want of fds (EMFILE) or processes
            # (EAGAIN): a start failure like any other, which the supervisor
            # retries after a backoff.
            tasks_r, tasks_w = os.pipe()
            ours.append(tasks_w)
            theirs.append(child_conn(tasks_r, readable=True))
            results_r, results_w = os.pipe()
            ours.append(results_r)
            theirs.append(child_conn(results_w, readable=False))
            for fd in (tasks_w, results_r):
                wire.enlarge_pipe(fd)
            theirs.append(child_conn(os.dup(self._lifeline_r), readable=True))
            side: list[int] = []
            side_ends: list[Any] = []
            for direction in ("tasks", "results"):
                fd = _shm.create(f"{name}-{direction}")
                ours.append(fd)
                side.append(fd)
                end = child_conn(os.dup(fd), readable=True) if fd >= 0 else None
                theirs.append(end)
                side_ends.append(end)
            inherited: tuple[int, ...] = ()
            if self.start_method == "fork":
                keep = {c.fileno() for c in theirs if c is not None}
                parents = (*_every_pool_fds(), *ours)
                inherited = tuple(fd for fd in dict.fromkeys(parents) if fd >= 0 and fd not in keep)
            args = (*theirs[:3], tuple(side_ends), inherited, self._init_blob, level, os.getpid())
            _forking.worker = True
            try:
                proc = start_process(self._ctx, worker_main, args, f"procqueue-worker-{slot}")
            finally:
                _forking.worker = False
        except Exception as e:
            close_fds(*ours)
            return [StartFailed(slot, f"{type(e).__name__}: {e}")]
        finally:
            for conn in theirs:
                if conn is not None:
                    conn.close()
        os.set_blocking(tasks_w, False)
        os.set_blocking(results_r, False)
        p = _Proc(slot, proc, tasks_w, results_r, (side[0], side[1]))
        self._procs[slot] = p
        poller.watch(results_r, lambda: self._on_readable(p))
        poller.watch(p.sentinel, lambda: self._on_exit(p))
        _log.debug("started worker %d in slot %d (%s)", p.pid, slot, self.start_method)
        return [Started(slot, p.pid)]

    def _fds(self) -> list[int]:
        fds = [self._lifeline_r]
        for p in list(self._procs.values()):
            fds += (p.tasks_fd, p.results_fd, p.inbox.fd, p.pidfd)
            if p.outbox is not None:
                fds.append(p.outbox.fd)
        return fds

    # ------------------------------------------------------------------ traffic

    def send(self, slot: int, tasks: Sequence[_TaskRecord]) -> None:
        p = self._procs[slot]
        payloads = [r.payload for r in tasks]
        ids = tuple(r.task_id for r in tasks)
        blobs, sizes, fids = self._refs.pack(p.holds, payloads, ids, p.outbox)  # type: ignore[arg-type]
        msg = wire.RunBatch(ids, sizes, fids, p.inbox.read)
        self._write(p, wire.encode(msg, blobs))
        p.batches.append((p.queued, ids))  # see _unsent

    def retire(self, slot: int) -> None:
        self._write(self._procs[slot], wire.encode(wire.Shutdown()))

    def _write(self, p: _Proc, buffers: list[Any]) -> None:
        p.queued += sum(map(len, buffers))  # every byte given the writer (_unsent)
        if not p.writer.write(buffers) and not p.writing:
            p.writing = True
            assert self._poller is not None
            self._poller.watch_writable(p.tasks_fd, lambda: self._on_writable(p))

    def _on_writable(self, p: _Proc) -> list[Event]:
        if not p.closed and p.writer.flush():
            p.writing = False
            assert self._poller is not None
            self._poller.unwatch(p.tasks_fd)
        return []

    def _on_readable(self, p: _Proc) -> list[Event]:
        if p.closed:
            return []
        try:
            frames = p.reader.read_frames()
        except (EOFError, OSError):
            frames = None
        if frames is None:
            return []  # EOF: the sentinel reports the exit
        events: list[Event] = []
        for frame in frames:
            try:
                msg, blob = wire.decode(frame)  # a Result is read by struct: never raises
            except Exception as e:
                # A log record whose extras do not unpickle here (an exception
                # class with its own __init__): user data, never the pool's end.
                _log.warning("worker %d: a message that does not unpickle here was dropped "
                             "(%s: %s)", p.pid, type(e).__name__, _safe_str(e))  # fmt: skip
                continue
            if type(msg) is wire.Result:
                events.append(_done(p, msg, blob, frame))
            elif type(msg) is wire.LogMessage:
                _forward_log(msg.record)
            elif type(msg) is wire.Progress:
                events.append(Progressed(p.slot, *msg))
            elif type(msg) is wire.Hello:
                err = None
                if msg.version != wire.PROTOCOL_VERSION:
                    err = f"worker speaks protocol {msg.version}, expected {wire.PROTOCOL_VERSION}"
                else:
                    p.figures = ProcessFigures(p.pid)
                events.append(Ready(p.slot, err))
            elif type(msg) is wire.InitFailed:
                detail = f"{msg.exc_type}: {msg.message}\n{msg.traceback}"
                events.append(InitFailed(p.slot, detail))
        return events

    def _on_exit(self, p: _Proc) -> list[Event]:
        if p.closed:
            return []
        events = self._on_readable(p)  # what it wrote before dying comes first
        # What a task started and left behind, re-parented away from the worker
        # (a shell's ``cmd &``, a double fork), is still in the worker's process
        # group. Its id is the worker's pid, which cannot be another's yet:
        # under fork and spawn the worker is not reaped before the line below;
        # under forkserver it may be, but the id stays taken while any member
        # of the group lives, and a free pid comes round again only after a
        # wrap of the pid space.
        kill_group(p.pid)
        if p.proc.exitcode is None:  # a zombie child is reaped here at once
            p.proc.join(1.0)  # forkserver: until the server has reaped it
        events.append(Exited(p.slot, p.proc.exitcode, _unsent(p)))
        self._release(p)
        return events

    def _release(self, p: _Proc) -> None:
        """Forget a dead worker's fds and reap it."""
        p.closed = True
        poller = self._poller
        assert poller is not None
        for fd in (p.results_fd, p.sentinel, p.tasks_fd):
            poller.unwatch(fd)
        # The side files' pages go once the dead worker's copies are gone too.
        close_fds(p.tasks_fd, p.results_fd, p.inbox.fd, p.outbox.fd if p.outbox else -1, p.pidfd)
        try:
            p.proc.close()
        except ValueError:
            pass  # still running: only possible if join timed out
        if self._procs.get(p.slot) is p:
            del self._procs[p.slot]

    # ------------------------------------------------------------------ control

    def kill(self, slot: int) -> None:
        p = self._procs.get(slot)
        if p is not None and not p.closed:
            kill_tree(p.pid, p.pidfd)

    def read_memory(self, slot: int) -> Event:
        p = self._procs.get(slot)
        figures = p.figures if p is not None else None
        return Memory(slot, figures.memory(self._memory_floor) if figures is not None else None)

    def figures(self, slot: int, pid: int | None) -> tuple[int | None, float | None]:
        return self._figures.read(pid)

    def wait_all(self, grace: float) -> list[Event]:
        events: list[Event] = []
        deadline = time.monotonic() + grace
        for p in list(self._procs.values()):
            # Waited on, not joined: _on_exit kills its group before reaping it.
            if not _wait_readable(p.sentinel, max(0.0, deadline - time.monotonic())):
                _log.warning("worker %d did not exit in time; killing it", p.pid)
                kill_tree(p.pid, p.pidfd)
                _wait_readable(p.sentinel, 1.0)
            events += self._on_exit(p)
        return events

    def close(self) -> None:
        with _live_lock:
            _live.discard(self)
        close_fds(self._lifeline_r, self._lifeline_w)
        self._lifeline_r = self._lifeline_w = -1

    def _open_fds(self) -> list[int]:
        """This transport's fds and its engine's, for a forked child to close."""
        poller = self._poller
        own = list(poller.own_fds()) if poller is not None else []
        return [*own, *self._fds(), self._lifeline_w]


def _wait_readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` (a process sentinel) became readable within ``timeout``."""
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    while True:
        try:
            return bool(poll.poll(max(0, int(timeout * 1000))))
        except InterruptedError:  # pragma: no cover - PEP 475 retries it
            continue


def _close_in_forked_child() -> None:
    """``os.fork`` hook: a process forked from this one (``os.fork``, the
    ``fork`` context of multiprocessing) closes its copies of every pool's
    coordinator fds. Above all the lifeline's write end: while a copy of it
    lives, a worker never learns that its coordinator died (the fds are
    close-on-exec, so only a fork without exec inherits them). The side files
    go too: a copy keeps their pages alive. Not in our own workers, which
    close these themselves once they have taken their own ends (``inherited``
    in ``worker_main``): an fd closed here could be reused before that, and
    then closed again. No lock is taken: another thread may have held it at
    the fork, and only this thread lives here."""
    global _live, _live_lock
    transports = [] if getattr(_forking, "worker", False) else list(_live)
    # The pools of the parent are not this process's (and its lock may have
    # been held by a thread that does not exist here).
    _live, _live_lock = weakref.WeakSet(), threading.Lock()
    for t in transports:
        fds = [*t._fds(), t._lifeline_w]
        # The copies here are dead: nothing may use or close their numbers again.
        t._lifeline_r = t._lifeline_w = -1
        t._procs = {}
        close_fds(*fds)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_forked_child)


def _every_pool_fds() -> list[int]:
    """The fds of every open transport (this one's included). Another pool's
    coordinator may be starting or ending a worker meanwhile: its table is
    read again then. A number it closes meanwhile and the child's own ends
    reuse is left out by the caller; any other is closed in the child only."""
    with _live_lock:
        transports = list(_live)
    fds: list[int] = []
    for t in transports:
        for _ in range(5):
            try:
                fds += t._open_fds()
                break
            except RuntimeError:  # its worker table changed size under us
                continue
    return fds


def _unsent(p: _Proc) -> frozenset[int]:
    """Tasks of a dead worker whose batch it never read whole, so none of
    which started: an idle worker killed (SIGKILL, the OOM killer) just as it
    was handed work is not the crash of that work. What it read is what was
    queued less what is still in the pipe (``FIONREAD``), still in the writer,
    or was dropped (EPIPE); a batch is read only when its last byte is."""
    if not p.batches:
        return frozenset()
    try:
        in_pipe = struct.unpack("i", fcntl.ioctl(p.tasks_fd, termios.FIONREAD, b"\0" * 4))[0]
    except OSError:
        return frozenset()  # not knowable here: the head is charged, as before
    read = p.queued - in_pipe - p.writer.pending_bytes - p.writer.dropped
    unsent: set[int] = set()
    for end, ids in reversed(p.batches):
        if end <= read:
            break
        unsent.update(ids)
    return frozenset(unsent)


def _done(p: _Proc, msg: wire.Result, blob: memoryview, frame: bytes | bytearray) -> Done:
    tb = ""
    if p.spilled:
        p.spilled.pop(msg.task_id, None)  # the worker has read its arguments
    if msg.ok:
        try:
            value: Any = _calls.load_value(blob, p.inbox)
        except BaseException as e:  # user data: __setstate__ may raise anything
            value = ResultSerializationError(
                f"the result of task {msg.task_id} could not be unpickled: "
                f"{type(e).__name__}: {_safe_str(e)}"
            )
            return Done(p.slot, msg.task_id, False, value, tb, msg.started, msg.finished)
        # The frame itself goes on to the dependents' workers, unless its
        # buffers came through the side file (whose space the worker reuses).
        sent = None if blob[3] & 0x80 else frame  # _shm.SPILLED
        return Done(p.slot, msg.task_id, True, value, tb, msg.started, msg.finished, sent)
    value, tb = _rebuild_error(blob)
    return Done(p.slot, msg.task_id, False, value, tb, msg.started, msg.finished)


def _rebuild_error(blob: memoryview) -> tuple[BaseException, str]:
    """The task's exception from an ErrorInfo blob, remote traceback attached."""
    info: wire.ErrorInfo = pickle.loads(blob)
    exc: BaseException | None = None
    if info.exc is not None:
        try:
            exc = pickle.loads(info.exc)
        except BaseException:  # user data: its __setstate__ may raise anything
            exc = None
    if not isinstance(exc, BaseException):  # a __reduce__ that rebuilds something else
        exc = UnpicklableTaskError(info.exc_type, info.message)
    try:
        exc.__cause__ = RemoteTraceback(f'\n"""\n{info.traceback}"""')
    except BaseException:  # a class that guards its attributes: keep it, untraced
        _log.debug("task exception %s takes no __cause__", info.exc_type, exc_info=True)
    return exc, info.traceback


def _forward_log(d: dict[str, object]) -> None:
    try:
        record = logging.makeLogRecord(d)
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    except Exception:  # a user's filter or odd record: logging's failure, not the pool's
        _log.warning("a worker's log record could not be handled here", exc_info=True)
