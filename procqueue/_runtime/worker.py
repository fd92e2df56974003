"""The worker process: read a batch of calls, run each, send each result back.

The worker never decides anything: retries, timeouts and ordering belong to the
coordinator. It guards three things itself:

* a task that forks (``os.fork()``) must not let its child run the worker loop:
  the child leaves with ``os._exit`` as soon as control comes back to us;
* exceptions of any kind raised by task code (``SystemExit`` and
  ``KeyboardInterrupt`` included) end that attempt, not the worker (as in
  CPython's ``concurrent.futures.process._process_worker``);
* the worker does not outlive the coordinator: a *watchdog* process
  (:func:`_start_watchdog`), which needs nothing of the worker, not even its
  GIL, kills the worker's whole process group when the coordinator is gone
  (EOF on the *lifeline* pipe, whose write end only the coordinator holds);
  a lifeline thread and Linux's parent-death signal back it up. What a task
  left in the group when the worker ends goes with it: the coordinator kills
  the group once it has handled the worker's exit.

The worker leaves with ``os._exit``, never through multiprocessing's
bootstrap, which would wait for any non-daemon thread a task left behind.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from ..errors import OptionTypeError, ResultSerializationError
from . import _calls, _shm
from . import wire as _wire
from .processes import (
    close_fds,
    keep_freed_memory,
    kill_children,
    kill_own_group_and_exit,
    set_parent_death_signal,
)

# The worker's own log lines; task code logs through its own loggers.
_log = logging.getLogger("procqueue.worker")


class _Sender:
    """Writes frames to the result pipe; serialised because task threads log too.

    Re-entrant: a task's signal handler that logs runs in the main thread,
    possibly while that thread is inside :meth:`send`. Its frame is queued
    and written by the outer call once its own frame is complete, so frames
    never interleave and the thread never waits on itself.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # An RLock, so that a signal handler may take it in the thread that
        # holds it; ``busy`` (read and written only under the lock) says an
        # outer call is mid-frame.
        self.lock = threading.RLock()
        self.busy = False
        self.queued: deque[list[Any]] = deque()

    def send(self, msg: _wire.WireMessage, blobs: Sequence[Any] = ()) -> None:
        buffers = _wire.encode(msg, blobs)
        with self.lock:
            queued = self.queued
            queued.append(buffers)
            if self.busy:
                return  # the outer call, mid-frame in this thread, writes it
            # Until nothing is queued: a handler may queue a frame after the
            # inner loop has emptied the queue but before ``busy`` drops.
            while queued:
                self.busy = True
                try:
                    while queued:
                        _wire.write_all(self.fd, queued[0])
                        queued.popleft()
                except OSError:
                    # EPIPE: the coordinator is gone. Leave quietly, with our
                    # children, instead of printing a traceback into the terminal.
                    kill_own_group_and_exit()
                finally:
                    self.busy = False


class _ForwardHandler(logging.Handler):
    """Sends every record to the coordinator, which hands it to its own loggers."""

    def __init__(self, sender: _Sender) -> None:
        super().__init__()
        self.sender = sender
        self.pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self.pid:
            return  # a forked child of a task: the pipe is not its to write
        try:
            d = dict(record.__dict__)
            d["msg"] = record.getMessage()
            d["args"] = None
            if record.exc_info:
                d["exc_text"] = logging.Formatter().formatException(record.exc_info)
            d["exc_info"] = None
            d.pop("message", None)
            self.sender.send(_wire.LogMessage(d))
        except Exception:
            self.handleError(record)


class _Reporter:
    """``report_progress`` inside this worker: the running task and when it
    last reported (reports are throttled to :data:`_REPORT_EVERY` per task)."""

    __slots__ = ("sender", "task_id", "last", "pid")

    def __init__(self, sender: _Sender) -> None:
        self.sender = sender
        self.task_id = 0
        self.last = 0.0
        self.pid = os.getpid()


#: Seconds between two progress reports of one task (~10 Hz): a task reporting
#: from a tight loop costs a clock read per call, not a pipe write.
_REPORT_EVERY = 0.1
_reporter: _Reporter | None = None


def report_progress(done: float, total: float | None = None, message: str = "") -> bool:
    """Tell the coordinator how far the running task has come.

    Call it from inside a task (any thread of the task's process): the latest
    report shows as ``TaskStatus.progress`` (``get_task_status``, listeners, the
    dashboard). Reports are throttled to about ten a second per task: one that
    comes too soon after the previous is dropped, except a final one
    (``done >= total``). Returns whether this report was sent; outside a
    worker (the task called directly, in the coordinator's process) it does
    nothing and returns ``False``.

    >>> def crunch(paths):                                   # doctest: +SKIP
    ...     for i, path in enumerate(paths, 1):
    ...         process(path)
    ...         procqueue.report_progress(i, len(paths), message=path)
    """
    for name, value in (("done", done), ("total", total)):
        if value is None and name == "total":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionTypeError(f"report_progress: {name} must be a number, got {value!r}")
    if not isinstance(message, str):
        raise OptionTypeError(f"report_progress: message must be a str, got {message!r}")
    rep = _reporter
    if rep is None or rep.task_id == 0 or os.getpid() != rep.pid:
        return False
    now = time.monotonic()
    final = total is not None and done >= total
    if now - rep.last < _REPORT_EVERY and not final:
        return False
    rep.last = now
    rep.sender.send(_wire.Progress(rep.task_id, float(done), total, message[:1000]))
    return True


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _format(exc: BaseException, tb: Any) -> tuple[str, str, str]:
    """``(qualified type name, message, traceback text)`` of ``exc``; each
    guarded, since formatting runs the exception's own code (``__str__``,
    a ``__notes__`` property) and must not end the worker."""
    try:
        name = _qualname(exc)
    except BaseException:
        name = "<unknown exception type>"
    try:
        message = str(exc)
    except BaseException:
        message = f"<unprintable {name}>"
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException as e:
        try:
            head = "".join(traceback.format_tb(tb))
        except BaseException:
            head = ""
        text = f"{head}{name}: {message}\n(the rest could not be formatted: {type(e).__name__})\n"
    return name, message, text


def _error_info(exc: BaseException) -> bytes:
    tb = exc.__traceback__
    # Skip our own frame so the traceback starts in the user's code.
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name, message, text = _format(exc, tb)
    data: bytes | None
    try:
        data = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(data)  # an __init__ that needs more args fails only here
    except BaseException:  # a hostile __reduce__ may raise anything
        data = None
    return pickle.dumps(_wire.ErrorInfo(data, name, message, text), protocol=5)


def _watch_lifeline(fd: int) -> None:
    """Block until the coordinator's end of the lifeline closes, then leave
    (a thread, beside the watchdog process, which needs no GIL)."""
    while True:
        try:
            data = os.read(fd, 1)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            kill_own_group_and_exit()


#: The watchdog: a shell reading the lifeline (its stdin) until EOF, then
#: SIGKILLing its process group, the worker's (``kill 0``).
_WATCHDOG = ("/bin/sh", "-c", "read _; kill -9 0")
#: Its ``Popen``, kept for the worker's life (dropped, it would warn).
_watchdog: subprocess.Popen[bytes] | None = None


def _start_watchdog(lifeline: int) -> bool:
    """Start the watchdog process; False if it could not be started.

    A thread watching the lifeline needs the GIL, which a task in C code
    (a regex, a long numpy call) may hold for hours; the parent-death signal
    needs it too (its handler is Python), and under forkserver it follows the
    server, not the coordinator. So the watch is a process of its own: a
    shell, spawned (``vfork`` and ``exec``: ~0.3 ms, ~1 MB, no copy of the
    worker's memory to keep alive) into the worker's process group with the
    lifeline as its stdin and no other fd. When the coordinator is gone (the
    lifeline's EOF) it SIGKILLs the whole group, the worker and what its tasks
    started, needing nothing of the worker. It is the worker's child, so a
    deliberate kill of the worker's tree takes it first, and when the worker
    ends the coordinator kills what is left of its group (``local.py``).
    """
    global _watchdog
    if os.getpgrp() != os.getpid():  # not our own group: "kill 0" would hit another
        return False
    try:
        _watchdog = subprocess.Popen(
            _WATCHDOG,
            stdin=lifeline,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError:  # no /bin/sh, out of processes or fds: the thread watches alone
        return False
    return True


#: Seconds a leaving worker gives multiprocessing's exit finalizers.
_FINALIZE_S = 5.0


def _leave(code: int) -> None:
    """Exit now, with ``code``: not through multiprocessing's bootstrap,
    which waits for every non-daemon thread a task or initializer left
    running (forever, for a thread that never ends). What stays in the
    group goes when the coordinator handles our exit. Multiprocessing's own
    exit finalizers do run, for at most ``_FINALIZE_S``: a ``Queue`` a task
    put into flushes its feeder thread there (without them a reader in
    another process was left waiting on half a message)."""
    kill_children(os.getpid())
    finalizing = threading.Thread(target=_run_mp_finalizers, daemon=True)
    finalizing.start()
    finalizing.join(_FINALIZE_S)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            pass
    os._exit(code)


def _run_mp_finalizers() -> None:
    # What multiprocessing.util._exit_function runs, less its joins of child
    # processes (killed above) and its wait for non-daemon threads.
    from multiprocessing import util

    run: Callable[..., None] | None = getattr(util, "_run_finalizers", None)  # private, stable
    if run is None:
        return
    try:
        run(0)
        run()
    except BaseException:  # user objects' finalizers: never the worker's end
        pass


def _on_sigterm(signum: int, frame: object) -> None:
    kill_own_group_and_exit()


def _take_fd(conn: Any) -> int:
    """The raw fd behind a ``Connection`` (which has no ``detach``); -1 for ``None``."""
    if conn is None:
        return -1
    fd = os.dup(conn.fileno())
    conn.close()
    return fd


def worker_main(
    tasks_fd: Any,
    results_fd: Any,
    lifeline_fd: Any,
    side_fds: tuple[Any, Any],
    inherited: tuple[int, ...],
    init_blob: bytes | None,
    log_level: int | None,
    parent_pid: int,
) -> None:
    """Entry point of a worker process (the ``target`` of its ``Process``).

    ``*_fd`` arrive as ``multiprocessing.connection.Connection`` objects so that
    every start method can pass them; we take their raw fds. ``side_fds``: the
    side files for large buffers (``_shm.py``), tasks then results, each
    ``None`` where there is none. ``inherited`` lists the coordinator's own fds
    that a forked child must close.
    """
    close_fds(*inherited)
    tasks, results, lifeline = (_take_fd(c) for c in (tasks_fd, results_fd, lifeline_fd))
    tasks_side, results_side = (_take_fd(c) for c in side_fds)
    # Own process group: a terminal's Ctrl-C goes to the coordinator, which stops
    # us cleanly, instead of raising KeyboardInterrupt in every running task.
    try:
        os.setpgrp()
    except OSError:
        pass
    # When the coordinator dies, the kernel sends SIGTERM (Linux), and we take our
    # whole process group down with us: a SIGKILL here would orphan the task's
    # own children. The lifeline watchdog below covers other platforms.
    # The watchdog process, and the lifeline thread all the same (the watch
    # where no shell could be started, and what ends a worker whose
    # coordinator is gone without waiting for SIGKILL from the watchdog).
    _start_watchdog(lifeline)
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True, name="lifeline").start()
    signal.signal(signal.SIGTERM, _on_sigterm)
    set_parent_death_signal(parent_pid, signal.SIGTERM)
    keep_freed_memory()

    sender = _Sender(results)
    if log_level is not None:
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(_ForwardHandler(sender))
        root.setLevel(log_level)

    if init_blob is not None:
        try:
            initializer, initargs = cloudpickle.loads(init_blob)
            _calls.run_initializer(initializer, initargs)
        except BaseException as e:
            sender.send(_wire.InitFailed(*_format(e, e.__traceback__)))
            _leave(3)

    global _reporter
    _reporter = _Reporter(sender)
    me = os.getpid()
    sender.send(_wire.Hello(_wire.PROTOCOL_VERSION, me))
    inbox = _shm.Inbox(tasks_side) if tasks_side >= 0 else None
    outbox = _shm.Outbox(results_side) if results_side >= 0 else None
    _serve(tasks, sender, me, inbox, outbox)
    _leave(0)


def _serve(
    tasks: int, sender: _Sender, me: int, inbox: _shm.Inbox | None, outbox: _shm.Outbox | None
) -> None:
    read_exact = _wire.read_exact
    decode = _wire.decode
    load = _calls.CallLoader(inbox).load
    acked = 0
    now = time.time
    Result = _wire.Result
    send = sender.send
    reporter = _reporter
    assert reporter is not None
    getsignal, SIGTERM = signal.getsignal, signal.SIGTERM
    while True:
        try:
            (body_len,) = struct.unpack("<Q", read_exact(tasks, 8))
            msg, blob = decode(read_exact(tasks, body_len))
        except EOFError:
            return
        if not isinstance(msg, _wire.RunBatch):
            return  # Shutdown: the caller leaves, and no process a task started stays
        task_ids, sizes, fids, read = msg
        if read != acked and outbox is not None:
            acked = read
            outbox.release_through(acked)  # the coordinator has read those results
        pos = 0
        for i, task_id in enumerate(task_ids):
            fn_size = sizes[2 * i]
            arg_size = sizes[2 * i + 1]
            started = now()
            reporter.task_id = task_id
            reporter.last = 0.0
            ok, segments = _run_call(
                load,
                blob[pos : pos + fn_size],
                blob[pos + fn_size : pos + fn_size + arg_size],
                fids[i],
                me,
            )
            pos += fn_size + arg_size
            reporter.task_id = 0
            if getsignal(SIGTERM) is not _on_sigterm:
                # The task reset it (a library restoring defaults): without ours,
                # a SIGTERM would kill the worker and orphan its children.
                signal.signal(SIGTERM, _on_sigterm)
            if len(segments) > 2 and outbox is not None:
                segments = outbox.spill(segments)
            send(Result(task_id, ok, started, now()), segments)
            # A result's out-of-band buffers are views of the value.
            del segments
        # Out-of-band arguments (numpy arrays) are views of the batch frame.
        del msg, blob


def _run_call(
    load: Callable[[memoryview, memoryview, int], tuple[Any, Any, Any]],
    fn_blob: memoryview,
    arg_blob: memoryview,
    fid: int,
    me: int,
) -> tuple[bool, Sequence[Any]]:
    """Run one call; its outcome as ``(ok, value-blob segments)``.

    One frame per call, so that its callable, arguments, result and exception
    (whose traceback's frames hold the arguments) all go when it returns: an idle
    worker must not keep a finished task's 2 GB argument alive. CPython's pool
    frees them too (``test_ressources_gced_in_workers``). ``except ... as e``
    unbinds ``e`` on the way out, so no cycle is left for the garbage collector.
    """
    try:
        fn, args, kwargs = load(fn_blob, arg_blob, fid)
        value = fn(*args, **kwargs)
    except BaseException as e:  # task code may raise anything
        if os.getpid() != me:
            os._exit(1)  # a child forked by the task
        return False, [_error_info(e)]
    if os.getpid() != me:
        os._exit(0)
    try:
        return True, _calls.dump_value(value)
    except Exception as e:
        err = ResultSerializationError(
            f"result of type {type(value).__qualname__} cannot be pickled: {e}"
        )
        return False, [_error_info(err)]
    except BaseException as e:
        # SystemExit & co. raised while pickling the result end the task,
        # as in CPython's process pool, not the worker.
        return False, [_error_info(e)]
