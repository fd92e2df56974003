"""The engine: one coordinator thread that owns every task and every worker.

How a task travels::

    front door (any thread)                coordinator thread                     worker process
    -----------------------                ------------------                     --------------
    submit(fn, *args) -- cloudpickle -->  command deque --+
                         (at the call,     + wake-up pipe  |
                          so bad input                     v
                          fails here)              ready heap (-priority, id)
                                           delayed heap (retry due time) --+
                                                           |               |
                                                  dispatch: RunBatch ---+--> tasks pipe --> run fn
                                                        ^                                     |
    Future / TaskStatus <-- resolve <-- result/crash <--+------- results pipe <-- Result -----+
                                           |                                 (process sentinel)
                                           +--> retry? RETRYING -> delayed heap

**Front doors** (``ProcQueue``, ``TaskQueue``) validate and pickle in the caller's
thread, append a record to the command deque and, if the coordinator sleeps,
write one byte to the wake-up pipe. They never touch the heap or the workers.

**The coordinator thread** waits in one ``selector.select`` on the wake-up pipe,
every worker's results pipe, every worker's process sentinel and (when a write
is pending) its tasks pipe, with a timeout equal to the next timer (retry due,
task deadline). No polling. It alone applies state transitions, and does so
under ``_lock`` so that ``get_task_status``/``get_stats`` see consistent
snapshots. Futures are resolved after the lock is released, so user callbacks
never run under it.

**Workers** (``_worker.py``) run what they are sent, in order, and answer with
one ``Result`` per call. A worker holds at most ``1 + prefetch`` tasks; the first
of its in-flight deque is the one executing. When a worker dies, that first task
is charged a crashed attempt; the others never started and go back to the heap
uncharged.
"""

from __future__ import annotations

import enum
import itertools
import logging
import multiprocessing
import multiprocessing.spawn
import os
import pickle
import selectors
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures._base import PENDING as _PENDING
from dataclasses import dataclass, field, replace
from typing import Any

import cloudpickle

from ._core.deadletters import DeadLetter, _DeadLetterStore
from ._core.heaps import _DelayedHeap, _ReadyHeap
from ._core.records import AttemptError, TaskState, TaskStatus, _TaskRecord
from ._policy import RetryPolicy, WorkerLimits
from ._runtime import wire as _wire
from ._runtime.processes import (
    ProcessFigures,
    child_conn,
    describe_exit,
    kill_tree,
    start_process,
)
from ._runtime.worker import worker_main
from .errors import (
    InvalidArgumentError,
    InvalidCallableError,
    MemoryLimitExceeded,
    PoolBrokenError,
    QueueClosedError,
    QueueFullError,
    RemoteTraceback,
    ResultSerializationError,
    SerializationError,
    TaskCancelledError,
    TaskNotFoundError,
    TaskTimeoutError,
    UnpicklableTaskError,
    WorkerCrashedError,
    WorkerStartupError,
)
from .stats import QueueStats, WorkerStats, _Counters

_log = logging.getLogger("procqueue.coordinator")

#: Workers that die before saying hello, in a row, before the pool gives up.
_MAX_STARTUP_FAILURES = 3
#: Seconds a worker gets to exit after ``Shutdown`` before it is killed.
_EXIT_GRACE = 5.0
#: Automatic prefetch: seconds of queued work a worker may hold beyond the task
#: it runs, and a hard cap on the count.
_PREFETCH_BUDGET = 0.002
_MAX_PREFETCH = 256

START_METHODS = ("fork", "forkserver", "spawn")


def default_start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``.

    Not ``fork``: the coordinator is a thread, so every replacement worker would
    be forked from a multi-threaded process, which can deadlock the child on a
    lock some other thread held (the reason CPython 3.14 moved its own default).
    The forkserver forks from a clean single-threaded process and costs a few
    milliseconds per worker, paid once per worker, not per task.
    """
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


@dataclass(frozen=True)
class EngineConfig:
    """Queue-wide settings; the front doors build one from their keywords."""

    num_workers: int
    start_method: str = field(default_factory=default_start_method)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    prefetch: int | None = None
    retain_finished: int = 10_000
    keep_unclaimed: bool = True
    limits: WorkerLimits = field(default_factory=WorkerLimits)
    dead_letters: int = 1000
    max_pending: int | None = None
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    forward_logs: bool = True
    rand: Callable[[], float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int):
            raise InvalidCallableError(f"num_workers must be an int, got {self.num_workers!r}")
        if self.num_workers < 1:
            raise InvalidArgumentError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.start_method not in START_METHODS:
            raise InvalidArgumentError(
                f"start_method must be one of {START_METHODS}, got {self.start_method!r}"
            )
        if self.start_method not in multiprocessing.get_all_start_methods():
            raise InvalidArgumentError(f"start method {self.start_method!r} is not available here")
        if not isinstance(self.retry, RetryPolicy):
            raise InvalidCallableError("retry must be a RetryPolicy")
        check_timeout(self.timeout)
        if self.prefetch is not None and (
            isinstance(self.prefetch, bool)
            or not isinstance(self.prefetch, int)
            or self.prefetch < 0
        ):
            raise InvalidArgumentError(f"prefetch must be an int >= 0, got {self.prefetch!r}")
        if not isinstance(self.retain_finished, int) or self.retain_finished < 0:
            raise InvalidArgumentError(
                f"retain_finished must be an int >= 0, got {self.retain_finished!r}"
            )
        if not isinstance(self.limits, WorkerLimits):
            raise InvalidCallableError("limits must be a WorkerLimits")
        if isinstance(self.dead_letters, bool) or not isinstance(self.dead_letters, int):
            raise InvalidCallableError("dead_letters must be an int (0 turns the DLQ off)")
        if self.dead_letters < 0:
            raise InvalidArgumentError("dead_letters must be >= 0")
        if self.max_pending is not None and (
            isinstance(self.max_pending, bool)
            or not isinstance(self.max_pending, int)
            or self.max_pending < 1
        ):
            raise InvalidArgumentError(f"max_pending must be an int >= 1, got {self.max_pending!r}")
        if self.initializer is not None and not callable(self.initializer):
            raise InvalidCallableError("initializer must be callable")


def check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidCallableError(f"timeout must be a number of seconds, got {timeout!r}")
    if not timeout > 0:
        raise InvalidArgumentError(f"timeout must be > 0, got {timeout!r}")


class WorkerState(str, enum.Enum):
    """Life of one worker process, as the coordinator sees it."""

    STARTING = "starting"
    """Spawned; waiting for its Hello (initializer still running)."""
    READY = "ready"
    """Serving: takes tasks up to ``1 + prefetch`` at a time."""
    STOPPING = "stopping"
    """Told to exit (Shutdown sent) or being killed; takes no task."""
    DEAD = "dead"
    """Exited and reaped; its slot is being refilled or the pool is closing."""


_WORKER_MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.STOPPING, WorkerState.DEAD}),
    WorkerState.READY: frozenset({WorkerState.STOPPING, WorkerState.DEAD}),
    WorkerState.STOPPING: frozenset({WorkerState.DEAD}),
    WorkerState.DEAD: frozenset(),
}


class EngineState(str, enum.Enum):
    """Life of the engine (and so of a queue)."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    BROKEN = "broken"


class _Worker:
    __slots__ = (
        "slot",
        "proc",
        "pid",
        "tasks_fd",
        "results_fd",
        "sentinel",
        "writer",
        "reader",
        "state",
        "inflight",
        "deadline",
        "kill_reason",
        "tasks_done",
        "init_error",
        "figures",
        "writing",
        "dispatched",
        "retiring",
        "idle_since",
    )

    def __init__(self, slot: int, proc: Any, tasks_fd: int, results_fd: int) -> None:
        self.slot = slot
        self.proc = proc
        self.pid: int = proc.pid
        self.tasks_fd = tasks_fd
        self.results_fd = results_fd
        self.sentinel: int = proc.sentinel
        self.writer = _wire._FrameWriter(tasks_fd)
        self.reader = _wire._FrameReader(results_fd)
        self.state = WorkerState.STARTING
        self.inflight: deque[_TaskRecord] = deque()
        self.deadline: float | None = None
        # Why the coordinator killed it; None if it died on its own.
        self.kill_reason: _Kill | None = None
        self.tasks_done = 0
        self.init_error: str | None = None
        self.figures: ProcessFigures | None = None
        self.writing = False
        # Tasks handed to this worker in its life (max_tasks_per_child).
        self.dispatched = 0
        # Takes no more tasks; replaced once those it holds are done.
        self.retiring = False
        self.idle_since = time.monotonic()

    def move(self, new: WorkerState) -> None:
        if new not in _WORKER_MOVES[self.state]:
            raise RuntimeError(f"worker {self.pid}: {self.state.value} -> {new.value}")
        self.state = new


class _Cancel:
    __slots__ = ("task_id",)

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id


class _Stop:
    __slots__ = ("cancel_pending", "deadline")

    def __init__(self, cancel_pending: bool, deadline: float | None) -> None:
        self.cancel_pending = cancel_pending
        self.deadline = deadline


class _TaskFuture(Future[Any]):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also tells the engine,
    so the stats and the task table learn of it at once.

    Its ``threading.Condition`` (an RLock, a deque and five bound methods:
    about 1.3 KB, most of a Future's size) is made on first use, which for a
    task is when it is dispatched: a million pending tasks do not carry a
    million idle Conditions. ``__init__`` sets the same fields as
    ``Future.__init__`` (unchanged from 3.10 to 3.14) minus the Condition.
    """

    _engine_ref: weakref.ref[Engine] | None = None
    _task_id = -1
    _cancel_notified = False

    def __init__(self) -> None:  # deliberately not Future.__init__: see above
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond: threading.Condition | None = self.__dict__.get("_lazy_condition")
        if cond is None:
            # setdefault is atomic: two threads racing here share one Condition.
            cond = self.__dict__.setdefault("_lazy_condition", threading.Condition())
        return cond

    def set_running_or_notify_cancel(self) -> bool:
        running = super().set_running_or_notify_cancel()
        if not running:
            self._cancel_notified = True
        return running

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            engine = self._engine_ref() if self._engine_ref is not None else None
            if engine is not None:
                engine.request_cancel(self._task_id)
        return cancelled


def _auto_prefetch(mean: float) -> int:
    """Tasks to queue behind the running one for a callable whose mean run time
    is ``mean``: enough for ``_PREFETCH_BUDGET``, at most ``_MAX_PREFETCH``.
    0 for tasks over the budget: a pipe round trip (~0.1-0.2 ms) is lost in
    them, and a task queued behind a long one could not go to a worker that
    frees up first (the tail of a batch would be unbalanced)."""
    return min(_MAX_PREFETCH, int(_PREFETCH_BUDGET / max(mean, 1e-7)))


def _cannot_pickle(name: str, e: Exception) -> SerializationError:
    return SerializationError(f"cannot pickle the call {name}(...): {type(e).__name__}: {e}")


def dumps_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bytes, list[Any]]:
    """Pickle a call: the callable's blob and the arguments' value-blob
    segments; a typed error if anything refuses."""
    try:
        return _wire.dump_callable(fn), _wire.dump_arguments(args, kwargs)
    except Exception as e:
        raise _cannot_pickle(_name_of(fn), e) from e


def _name_of(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        func = getattr(fn, "func", None)  # functools.partial
        name = getattr(func, "__qualname__", None) or type(fn).__qualname__
    return str(name)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Engine:
    """The one engine behind both front doors. Thread-safe public methods:
    :meth:`start`, :meth:`submit`, :meth:`request_cancel`, :meth:`request_stop`,
    :meth:`status`, :meth:`stats`, :meth:`future_for`."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._ctx = multiprocessing.get_context(config.start_method)
        self._rand = config.rand
        if self._rand is None:
            import random

            self._rand = random.Random().random
        self._lock = threading.RLock()
        self._commands: deque[_TaskRecord | _Cancel | _Stop] = deque()
        self._sleeping = False
        self._ids = itertools.count(1)
        self._submitted = 0
        self._tasks: dict[int, _TaskRecord] = {}
        self._finished: deque[int] = deque()
        self._heap = _ReadyHeap()
        self._delayed = _DelayedHeap()
        self._workers: list[_Worker | None] = [None] * config.num_workers
        self._restarts = [0] * config.num_workers
        self._recycled = [0] * config.num_workers
        self._dlq = _DeadLetterStore(config.dead_letters)
        # Back-pressure (max_pending): sync submitters wait on the condition,
        # async ones on futures; both are woken as tasks become final.
        self._space = threading.Condition(self._lock)
        self._space_waiters: list[Future[None]] = []
        self._next_memory_check = 0.0
        self._counters = _Counters()
        self._to_resolve: list[tuple[Future[Any], int, Any]] = []
        self._listeners: list[Callable[[TaskStatus], None]] = []
        self._startup_failures = 0
        self._broken: PoolBrokenError | None = None
        self.state = EngineState.NEW
        self._stop: _Stop | None = None
        self._stopped = threading.Event()
        #: Resolved (``None``) once the coordinator thread has finished.
        self.stopped_future: Future[None] = Future()
        self._idle_waiters: list[Future[None]] = []
        # Exponential moving average of run times per callable (keyed by its
        # pickled bytes), for automatic prefetch.
        self._mean_run: dict[bytes, float] = {}
        # Whether a submit must wake the coordinator: only when some worker is
        # short of work. Otherwise the next result wakes it anyway.
        self._wake_on_submit = True
        self._wake_pending = False
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = self._lifeline_r = self._lifeline_w = -1
        self._init_blob: bytes | None = None
        if config.initializer is not None:
            try:
                self._init_blob = cloudpickle.dumps((config.initializer, config.initargs))
            except Exception as e:
                raise SerializationError(f"cannot pickle the initializer: {e}") from e

    # ------------------------------------------------------------------ front-door API

    def start(self) -> None:
        if self.config.start_method != "fork":
            # A script without ``if __name__ == "__main__":`` re-runs in every
            # spawned worker; say so here, in the caller's thread, as the stdlib
            # does at submit (multiprocessing.spawn._check_not_importing_main),
            # rather than fail later in our coordinator thread.
            check = getattr(multiprocessing.spawn, "_check_not_importing_main", None)
            if check is not None:
                check()
        with self._lock:
            if self.state is not EngineState.NEW:
                raise QueueClosedError("a queue can be started only once")
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._lifeline_r, self._lifeline_w = os.pipe()
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            self.state = EngineState.RUNNING
            self._counters = _Counters()
            self._thread = threading.Thread(
                target=self._run, name="procqueue-coordinator", daemon=True
            )
            _live_engines.add(self)
            self._thread.start()

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        priority: int = 0,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,
        future: _TaskFuture | None = None,
        block: bool = True,
        wait: float | None = None,
    ) -> int:
        """Validate, pickle and enqueue one call; returns its task id.

        With ``max_pending`` set and the queue full, waits up to ``wait``
        seconds for room (``block=False``: not at all), then raises
        ``QueueFullError``."""
        return self.enqueue(
            self.prepare(fn, args, kwargs, priority, policy, timeout, future),
            block=block,
            wait=wait,
        )

    def prepare(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        priority: int = 0,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,
        future: _TaskFuture | None = None,
    ) -> _TaskRecord:
        """Validate and pickle a call into a record (not queued yet)."""
        if not callable(fn):
            raise InvalidCallableError(f"{fn!r} is not callable")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidCallableError(f"priority must be an int, got {priority!r}")
        self._check_open()
        return self._record(
            _name_of(fn), priority, dumps_call(fn, args, kwargs), policy, timeout, future
        )

    def _record(
        self,
        name: str,
        priority: int,
        payload: tuple[bytes, list[Any]],
        policy: RetryPolicy | None,
        timeout: float | None,
        future: _TaskFuture | None,
    ) -> _TaskRecord:
        task_id = next(self._ids)
        rec = _TaskRecord(
            task_id,
            name,
            priority,
            payload,
            policy if policy is not None else self.config.retry,
            timeout if timeout is not None else self.config.timeout,
            time.time(),
            future,
        )
        if future is not None:
            future._engine_ref = weakref.ref(self)
            future._task_id = task_id
            rec.external = True
        return rec

    def submit_many(
        self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], futures: list[_TaskFuture]
    ) -> None:
        """``map``'s fast path: one validation of ``fn``, one pickling of it, and
        one lock round for the whole batch (``max_pending`` unset)."""
        if not callable(fn):
            raise InvalidCallableError(f"{fn!r} is not callable")
        self._check_open()
        name = _name_of(fn)
        try:
            fn_blob = _wire.dump_callable(fn)
        except Exception as e:
            raise _cannot_pickle(name, e) from e
        records = []
        for args, fut in zip(calls, futures):
            try:
                segments = _wire.dump_arguments(args, {})
            except Exception as e:
                raise _cannot_pickle(name, e) from e
            records.append(self._record(name, 0, (fn_blob, segments), None, None, fut))
        with self._lock:
            self._check_open()
            tasks = self._tasks
            for rec in records:
                tasks[rec.task_id] = rec
            self._submitted += len(records)
            self._commands.extend(records)
        if self._sleeping and self._wake_on_submit and not self._wake_pending:
            self._wake()

    def enqueue(self, rec: _TaskRecord, *, block: bool = True, wait: float | None = None) -> int:
        """Queue a prepared record, honouring ``max_pending``."""
        limit = self.config.max_pending
        with self._lock:
            if limit is not None and self._unfinished() >= limit:
                if not block:
                    raise QueueFullError(f"{limit} tasks are already pending (max_pending)")
                deadline = None if wait is None else time.monotonic() + wait
                while self._unfinished() >= limit and self.state is EngineState.RUNNING:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise QueueFullError(f"no room under max_pending={limit} within {wait}s")
                    self._space.wait(remaining)
            # Checked under the lock: stop() may have begun since.
            self._check_open()
            self._tasks[rec.task_id] = rec
            self._submitted += 1
            self._commands.append(rec)
        if self._sleeping and self._wake_on_submit and not self._wake_pending:
            self._wake()
        return rec.task_id

    def _unfinished(self) -> int:
        c = self._counters
        return self._submitted - c.completed - c.failed - c.cancelled

    def has_room(self) -> bool:
        limit = self.config.max_pending
        return limit is None or self._unfinished() < limit

    def space_future(self) -> Future[None]:
        """Resolved when ``max_pending`` leaves room (or the queue stops)."""
        fut: Future[None] = Future()
        with self._lock:
            if self.has_room() or self.state is not EngineState.RUNNING:
                fut.set_result(None)
            else:
                self._space_waiters.append(fut)
        return fut

    # --- the dead letter queue (front doors wrap these in DeadLetterQueue)

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            return [e.letter for e in self._dlq.entries.values()]

    def dead_letter(self, task_id: int) -> DeadLetter:
        with self._lock:
            entry = self._dlq.entries.get(task_id)
            if entry is None:
                raise TaskNotFoundError(task_id)
            return entry.letter

    def requeue_dead_letter(
        self, task_id: int, max_retries: int | None = None, priority: int | None = None
    ) -> int:
        """Run a dead letter again as a new task with a fresh retry budget."""
        with self._lock:
            self._check_open()
            entry = self._dlq.entries.pop(task_id, None)
        if entry is None:
            raise TaskNotFoundError(task_id)
        letter = entry.letter
        policy = entry.policy
        if max_retries is not None:
            policy = replace(policy, max_retries=max_retries)
        rec = self._record(
            letter.name,
            letter.priority if priority is None else priority,
            entry.payload,
            policy,
            entry.timeout,
            None,
        )
        try:
            return self.enqueue(rec)
        except BaseException:
            with self._lock:
                self._dlq.entries[task_id] = entry  # not lost if it cannot be queued
            raise

    def purge_dead_letters(self, task_ids: Iterable[int] | None = None) -> int:
        with self._lock:
            if task_ids is None:
                n = len(self._dlq.entries)
                self._dlq.entries.clear()
                return n
            return sum(self._dlq.entries.pop(t, None) is not None for t in task_ids)

    @property
    def dead_letters_dropped(self) -> int:
        return self._dlq.dropped

    def request_cancel(self, task_id: int) -> bool:
        """Ask the coordinator to cancel; True if the task was not final yet."""
        with self._lock:
            rec = self._tasks.get(task_id)
            if rec is None:
                raise TaskNotFoundError(task_id)
            if rec.state.is_final:
                return False
            self._commands.append(_Cancel(task_id))
        self._wake()
        return True

    def request_stop(self, *, cancel_pending: bool, timeout: float | None) -> None:
        """Begin stopping (idempotent). ``timeout``: seconds after which running
        tasks' workers are killed; ``None`` waits for them."""
        with self._lock:
            if self.state is EngineState.NEW:
                self.state = EngineState.STOPPED
                self._stopped.set()
                self.stopped_future.set_result(None)
                return
            if self.state in (EngineState.RUNNING, EngineState.BROKEN):
                if self.state is EngineState.RUNNING:
                    self.state = EngineState.STOPPING
                deadline = None if timeout is None else time.monotonic() + timeout
                self._commands.append(_Stop(cancel_pending, deadline))
                self._space.notify_all()
                for fut in self._space_waiters:
                    fut.set_result(None)
                self._space_waiters = []
            elif cancel_pending or timeout is not None:
                deadline = None if timeout is None else time.monotonic() + timeout
                self._commands.append(_Stop(cancel_pending, deadline))
            else:
                return
        self._wake()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        if not self._stopped.wait(timeout):
            return False
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        return True

    def status(self, task_id: int) -> TaskStatus:
        with self._lock:
            rec = self._tasks.get(task_id)
            if rec is None:
                raise TaskNotFoundError(task_id)
            return rec.snapshot()

    def future_for(self, task_id: int) -> Future[Any]:
        """The task's future (made on demand; already resolved if it is final)."""
        with self._lock:
            rec = self._tasks.get(task_id)
            if rec is None:
                raise TaskNotFoundError(task_id)
            fut = rec.future
            if fut is None:
                fut = rec.future = _TaskFuture()
                fut._engine_ref = weakref.ref(self)
                fut._task_id = task_id
                if rec.state.is_final:
                    _resolve_now(fut, rec)
                    if self.config.keep_unclaimed:
                        self._make_evictable(task_id)
            return fut

    def idle_future(self) -> Future[None]:
        """Resolved once every task submitted so far is final."""
        fut: Future[None] = Future()
        with self._lock:
            if self._is_idle() or self._stopped.is_set():
                fut.set_result(None)
            else:
                self._idle_waiters.append(fut)
        return fut

    def _is_idle(self) -> bool:
        c = self._counters
        return self._submitted == c.completed + c.failed + c.cancelled

    def stats(self) -> QueueStats:
        with self._lock:
            workers = []
            for slot, w in enumerate(self._workers):
                if w is None:
                    workers.append(
                        WorkerStats(
                            slot,
                            None,
                            "stopped",
                            0,
                            self._restarts[slot],
                            self._recycled[slot],
                            None,
                            None,
                            None,
                        )
                    )
                    continue
                rss, cpu = w.figures.read() if w.figures is not None else (None, None)
                head = w.inflight[0].task_id if w.inflight else None
                workers.append(
                    WorkerStats(
                        slot,
                        w.pid,
                        w.state.value,
                        w.tasks_done,
                        self._restarts[slot],
                        self._recycled[slot],
                        head,
                        rss,
                        cpu,
                    )
                )
            return self._counters.snapshot(
                self._submitted, tuple(workers), len(self._dlq), self._dlq.dropped
            )

    def subscribe(self, listener: Callable[[TaskStatus], None]) -> Callable[[], None]:
        """Call ``listener(status)`` (in the coordinator thread) on every state
        change. Returns a function that unsubscribes. A listener that raises is
        logged and kept; it never stops the engine."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = [x for x in self._listeners if x is not listener]

        return unsubscribe

    def _check_open(self) -> None:
        state = self.state
        if state is EngineState.RUNNING:
            return
        if state is EngineState.BROKEN and self._broken is not None:
            raise self._broken
        if state is EngineState.NEW:
            raise QueueClosedError("the queue is not started")
        raise QueueClosedError("cannot submit new tasks: the queue is stopping or stopped")

    def _wake(self) -> None:
        # One byte per sleep is enough: a burst of submits costs one syscall.
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (already awake) or closed (already stopped)

    # -------------------------------------------------------------- coordinator thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            _log.exception("procqueue coordinator crashed; failing every task")
            with self._lock:
                self._break(PoolBrokenError("the procqueue coordinator thread crashed"))
        finally:
            try:
                self._shutdown_workers()
            finally:
                self._close_fds()
                with self._lock:
                    if self.state is not EngineState.BROKEN:
                        self.state = EngineState.STOPPED
                with self._lock:
                    self._release_idle_waiters()
                self._flush_resolutions()
                _live_engines.discard(self)
                self._stopped.set()
                self.stopped_future.set_result(None)
                _log.debug("coordinator stopped")

    def _loop(self) -> None:
        selector = self._selector
        assert selector is not None
        monotonic = time.monotonic
        while True:
            with self._lock:
                self._drain_commands()
                now = monotonic()
                self._fire_timers(now)
                self._dispatch()
                if self._stop is not None and self._finished_stopping():
                    return
                # Commands and timers can finish tasks too (a cancel, a stop
                # deadline): join() waiters must not wait for an event that may
                # never come (all tasks cancelled before any worker started).
                if self._idle_waiters and self._is_idle():
                    self._release_idle_waiters()
                timeout = self._next_timer(now)
            self._flush_resolutions()
            self._wake_on_submit = self._short_of_work()
            self._sleeping = True
            if self._commands:
                timeout = 0.0
            events = selector.select(timeout)
            self._sleeping = False
            with self._lock:
                for key, _ in events:
                    data = key.data
                    if data is None:
                        self._drain_wake()
                        continue
                    kind, w = data
                    if kind == "r":
                        self._read_results(w)
                    elif kind == "x":
                        self._read_results(w)
                        self._on_exit(w)
                    elif kind == "w" and w.state is not WorkerState.DEAD and w.writer.flush():
                        self._set_writing(w, False)
                if self._idle_waiters and self._is_idle():
                    self._release_idle_waiters()
            self._flush_resolutions()

    def _short_of_work(self) -> bool:
        """True if a new task could be handed to a worker now, so a submit
        must wake us. Otherwise every worker is as full as prefetch allows,
        and the next result wakes us anyway (no wake-up per submit)."""
        fixed = self.config.prefetch
        if fixed is not None:
            depth = 1 + fixed
        elif self._mean_run:
            depth = 1 + _auto_prefetch(min(self._mean_run.values()))  # the deepest
        else:
            depth = 1
        any_ready = False
        for w in self._workers:
            if w is None:
                return True  # an empty slot: a submit must start a worker
            if w.state is WorkerState.READY and not w.retiring:
                any_ready = True
                if len(w.inflight) < depth:
                    return True
        return not any_ready

    def _drain_wake(self) -> None:
        self._wake_pending = False
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _drain_commands(self) -> None:
        commands = self._commands
        push = self._heap.push
        while commands:
            cmd = commands.popleft()
            if type(cmd) is _TaskRecord:
                if cmd.state is TaskState.PENDING:
                    if cmd.future is not None and cmd.future.cancelled():
                        self._finish_cancelled(cmd)
                    else:
                        push(cmd)
                        if self._listeners:
                            self._emit(cmd)
            elif type(cmd) is _Cancel:
                self._cancel(cmd.task_id)
            elif type(cmd) is _Stop:
                self._begin_stop(cmd)

    # ----- dispatch

    def _dispatch(self) -> None:
        heap = self._heap
        if not heap.live:
            return
        if self._broken is None:
            self._spawn_on_demand()
        # A worker still booting: no prefetching, or a short queue would pile
        # onto the first worker up while the next one is moments from ready.
        booting = any(w is not None and w.state is WorkerState.STARTING for w in self._workers)
        per_child = self.config.limits.max_tasks_per_child
        ready = [
            w
            for w in self._workers
            if w is not None
            and w.state is WorkerState.READY
            and not w.retiring
            and (per_child is None or w.dispatched < per_child)
        ]
        # Fill the least loaded workers first, one task each per round, so that a
        # short queue is spread over every worker instead of piled on the first.
        ready.sort(key=lambda w: len(w.inflight))
        batches: dict[int, list[_TaskRecord]] = {}
        while heap.live and ready:
            for w in list(ready):
                rec = heap.pop()
                if rec is None:
                    break
                depth = 1 if booting else 1 + self._prefetch(rec)
                if per_child is not None:
                    depth = min(depth, per_child - w.dispatched + len(w.inflight))
                if len(w.inflight) >= depth:
                    # Full for this task: it goes back (same priority and
                    # sequence, so the same place) and this worker is done.
                    heap.push(rec)
                    ready.remove(w)
                    continue
                if not self._start_attempt(rec, w):
                    continue
                batches.setdefault(w.slot, []).append(rec)
        now = time.monotonic()
        for slot, recs in batches.items():
            worker = self._workers[slot]
            assert worker is not None
            w = worker
            if w.deadline is None and w.inflight[0] is recs[0] and recs[0].timeout:
                w.deadline = now + recs[0].timeout
            blobs: list[Any] = []
            sizes: list[int] = []
            for r in recs:
                assert r.payload is not None
                fn_blob, arg_segments = r.payload
                blobs.append(fn_blob)
                blobs += arg_segments
                sizes.append(len(fn_blob))
                sizes.append(sum(memoryview(seg).nbytes for seg in arg_segments))
            msg = _wire.RunBatch(tuple(r.task_id for r in recs), tuple(sizes))
            if not w.writer.write(_wire.encode(msg, blobs)):
                self._set_writing(w, True)

    def _prefetch(self, rec: _TaskRecord) -> int:
        """How many tasks a worker may hold beyond the one it runs, for ``rec``
        to join them. Fixed when configured; otherwise enough to cover
        ``_PREFETCH_BUDGET`` seconds at the mean run time of ``rec``'s own
        callable: deep pipelines for tiny tasks (the pipe round trip would
        dominate them), none for long ones, and none for a callable not seen
        yet (so a burst of unknown, maybe slow, tasks is not piled onto one
        worker where cancellation could no longer reach them)."""
        fixed = self.config.prefetch
        if fixed is not None:
            return fixed
        mean = self._mean_run.get(rec.payload[0]) if rec.payload is not None else None
        if mean is None:
            return 0
        return _auto_prefetch(mean)

    def _start_attempt(self, rec: _TaskRecord, w: _Worker) -> bool:
        fut = rec.future
        if fut is not None and not rec.dispatched and not fut.set_running_or_notify_cancel():
            self._finish_cancelled(rec, notified=True)
            return False
        rec.dispatched = True
        rec.move(TaskState.RUNNING)
        rec.attempts += 1
        rec.worker_pid = w.pid
        rec.started_at = time.time()
        w.inflight.append(rec)
        w.dispatched += 1
        self._counters.running += 1
        if self._listeners:
            self._emit(rec)
        return True

    def _set_writing(self, w: _Worker, on: bool) -> None:
        if w.writing == on:
            return
        w.writing = on
        assert self._selector is not None
        if on:
            self._selector.register(w.tasks_fd, selectors.EVENT_WRITE, ("w", w))
        else:
            self._selector.unregister(w.tasks_fd)

    # ----- results

    def _read_results(self, w: _Worker) -> None:
        if w.state is WorkerState.DEAD:
            return
        try:
            frames = w.reader.read_frames()
        except (EOFError, OSError):
            frames = None
        if frames is None:
            return  # EOF: the sentinel will report the exit
        for frame in frames:
            msg, blob = _wire.decode(frame)
            if type(msg) is _wire.Result:
                self._on_result(w, msg, blob)
            elif type(msg) is _wire.LogMessage:
                _forward_log(msg.record)
            elif type(msg) is _wire.Hello:
                self._on_hello(w, msg)
            elif type(msg) is _wire.InitFailed:
                w.init_error = f"{msg.exc_type}: {msg.message}\n{msg.traceback}"

    def _on_hello(self, w: _Worker, msg: _wire.Hello) -> None:
        if msg.version != _wire.PROTOCOL_VERSION:
            w.init_error = (
                f"worker speaks protocol {msg.version}, expected {_wire.PROTOCOL_VERSION}"
            )
            self._kill(w, _Kill("broken"))
            return
        if w.state is WorkerState.STARTING:
            w.move(WorkerState.READY)
            w.idle_since = time.monotonic()
            self._startup_failures = 0
            w.figures = ProcessFigures(w.pid)
            _log.debug("worker %d (slot %d) ready", w.pid, w.slot)

    def _on_result(self, w: _Worker, msg: _wire.Result, blob: memoryview) -> None:
        inflight = w.inflight
        rec = inflight.popleft()
        if rec.task_id != msg.task_id:  # pragma: no cover - protocol violation
            raise RuntimeError(f"worker {w.pid} answered {msg.task_id}, expected {rec.task_id}")
        w.tasks_done += 1
        now = time.monotonic()
        if inflight:
            head_timeout = inflight[0].timeout
            w.deadline = now + head_timeout if head_timeout else None
        else:
            w.deadline = None
            w.idle_since = now
        self._check_recycle(w)
        counters = self._counters
        counters.running -= 1
        rec.started_at = msg.started
        rec.finished_at = msg.finished
        run = msg.finished - msg.started
        counters.run_samples.append(run)
        if rec.payload is not None:
            means = self._mean_run
            key = rec.payload[0]
            mean = means.get(key)
            if mean is None and len(means) >= 1024:
                means.clear()
            means[key] = run if mean is None else mean + 0.1 * (run - mean)
        counters.wait_samples.append(max(0.0, msg.started - rec.submitted_at))
        if msg.ok:
            try:
                value = _wire.load_value(blob)
            except BaseException as e:  # user data: __setstate__ may raise anything
                err = ResultSerializationError(
                    f"the result of task {rec.task_id} could not be unpickled: "
                    f"{type(e).__name__}: {e}"
                )
                self._attempt_failed(rec, err, w.pid, None, "")
                return
            rec.move(TaskState.COMPLETED)
            rec.payload = None
            rec.outcome = value
            counters.completed += 1
            counters.count_completion(now)
            self._finalise(rec, ok=True, value=value)
        else:
            exc, tb = _rebuild_error(blob)
            self._attempt_failed(rec, exc, w.pid, None, tb)

    def _attempt_failed(
        self,
        rec: _TaskRecord,
        exc: BaseException,
        pid: int | None,
        exitcode: int | None,
        tb: str,
        *,
        running: bool = False,
    ) -> None:
        """An attempt of ``rec`` ended with ``exc``: retry or fail it.
        ``running``: the record is still counted as running."""
        if running:
            self._counters.running -= 1
        now = time.time()
        rec.finished_at = now
        exc_type = exc.exc_type if isinstance(exc, UnpicklableTaskError) else _qualname(type(exc))
        rec.add_error(
            AttemptError(
                attempt=rec.attempts,
                exc_type=exc_type,
                message=str(exc),
                traceback=tb,
                worker_pid=pid,
                exitcode=exitcode,
                started_at=rec.started_at,
                finished_at=now,
            )
        )
        policy = rec.policy
        cancelling = self._stop is not None and self._stop.cancel_pending
        if not cancelling and policy.should_retry(exc, rec.attempts):
            assert self._rand is not None
            delay = policy.delay(rec.attempts, self._rand)
            self._counters.retried += 1
            _log.info(
                "task %d (%s) attempt %d failed with %s; retrying in %.3fs",
                rec.task_id,
                rec.name,
                rec.attempts,
                exc_type,
                delay,
            )
            if delay <= 0:
                rec.move(TaskState.RETRYING)
                rec.move(TaskState.PENDING)
                self._heap.push(rec)
            else:
                rec.move(TaskState.RETRYING)
                self._counters.retrying += 1
                self._delayed.push(time.monotonic() + delay, rec)
            if self._listeners:
                self._emit(rec)
            return
        rec.move(TaskState.FAILED)
        self._dlq.add(rec, now)
        rec.payload = None
        rec.outcome = exc
        rec.is_error = True
        self._counters.failed += 1
        log = _log.warning if isinstance(exc, (WorkerCrashedError, TaskTimeoutError)) else _log.info
        log(
            "task %d (%s) failed after %d attempt(s): %s: %s",
            rec.task_id,
            rec.name,
            rec.attempts,
            exc_type,
            exc,
        )
        self._finalise(rec, ok=False, value=exc)

    def _finalise(self, rec: _TaskRecord, *, ok: bool, value: Any) -> None:
        fut = rec.future
        if fut is not None:
            self._to_resolve.append((fut, _OK if ok else _ERROR, value))
        self._finalise_bookkeeping(rec)

    def _finish_cancelled(self, rec: _TaskRecord, *, notified: bool = False) -> None:
        """Move a non-running record to CANCELLED (from PENDING or RETRYING).
        ``notified``: its future already went through set_running_or_notify_cancel."""
        err = TaskCancelledError(f"task {rec.task_id} was cancelled")
        self._end_with_error(rec, TaskState.CANCELLED, err, None if notified else _CANCEL)

    def _end_with_error(
        self, rec: _TaskRecord, state: TaskState, err: BaseException, settle: int | None
    ) -> None:
        """Finish a record that will not run (again): CANCELLED, or FAILED
        without a further attempt. ``settle``: how its future learns of it."""
        counters = self._counters
        if rec.state is TaskState.RETRYING:
            counters.retrying -= 1
        elif rec.state is TaskState.RUNNING:
            counters.running -= 1
        rec.move(state)
        rec.payload = None
        rec.finished_at = time.time()
        rec.outcome = err
        rec.is_error = True
        if state is TaskState.CANCELLED:
            counters.cancelled += 1
        else:
            counters.failed += 1
        if rec.future is not None and settle is not None:
            self._to_resolve.append((rec.future, settle, err))
        self._finalise_bookkeeping(rec)

    def _finalise_bookkeeping(self, rec: _TaskRecord) -> None:
        if self.config.max_pending is not None:
            self._wake_space_waiters()
        if rec.future is not None:
            # The future carries the outcome; the record must not keep the value
            # alive after the caller has dropped it (the stdlib's map frees
            # each result as it is yielded). A caller's own future is not ours
            # to keep alive either.
            rec.outcome = None
            if rec.external:
                rec.future = None
        if rec.future is not None or not self.config.keep_unclaimed:
            self._make_evictable(rec.task_id)
        if self._listeners:
            self._emit(rec)

    def _wake_space_waiters(self) -> None:
        self._space.notify_all()
        if self._space_waiters:
            for fut in self._space_waiters:
                self._to_resolve.append((fut, _OK, None))
            self._space_waiters = []

    def _make_evictable(self, task_id: int) -> None:
        """Retention: a finished record whose result was claimed (it has a
        future) joins the bounded FIFO of ``retain_finished`` records. Unclaimed
        results are kept (``keep_unclaimed``) so that submit-all-then-gather
        never loses one."""
        finished = self._finished
        finished.append(task_id)
        retain = self.config.retain_finished
        while len(finished) > retain:
            self._tasks.pop(finished.popleft(), None)

    def _flush_resolutions(self) -> None:
        """Resolve futures outside the lock: done-callbacks are user code."""
        if not self._to_resolve:
            return
        with self._lock:
            batch, self._to_resolve = self._to_resolve, []
        for fut, kind, value in batch:
            _deliver(fut, kind, value)

    def _release_idle_waiters(self) -> None:
        for fut in self._idle_waiters:
            self._to_resolve.append((fut, _OK, None))
        self._idle_waiters = []

    def _emit(self, rec: _TaskRecord) -> None:
        status = rec.snapshot()
        for listener in self._listeners:
            try:
                listener(status)
            except Exception:
                _log.exception("a procqueue listener raised; ignored")

    # ----- timers

    def _next_timer(self, now: float) -> float | None:
        due = self._delayed.next_due()
        limits = self.config.limits
        for w in self._workers:
            if w is None:
                continue
            if w.deadline is not None and (due is None or w.deadline < due):
                due = w.deadline
            if limits.idle_timeout is not None and w.state is WorkerState.READY and not w.inflight:
                idle_due = w.idle_since + limits.idle_timeout
                if due is None or idle_due < due:
                    due = idle_due
            if (
                limits.memory_hard is not None
                and w.inflight
                and (due is None or self._next_memory_check < due)
            ):
                due = self._next_memory_check
        stop = self._stop
        if stop is not None and stop.deadline is not None and (due is None or stop.deadline < due):
            due = stop.deadline
        return None if due is None else max(0.0, due - now)

    def _fire_timers(self, now: float) -> None:
        for rec in self._delayed.pop_due(now):
            self._counters.retrying -= 1
            rec.move(TaskState.PENDING)
            self._heap.push(rec)
            if self._listeners:
                self._emit(rec)
        for w in self._workers:
            if w is not None and w.deadline is not None and w.deadline <= now:
                rec = w.inflight[0]
                w.deadline = None
                _log.warning(
                    "task %d (%s) exceeded its %.3gs timeout; killing worker %d",
                    rec.task_id,
                    rec.name,
                    rec.timeout or 0,
                    w.pid,
                )
                err = TaskTimeoutError(
                    f"task {rec.task_id} ({rec.name}) exceeded its timeout of {rec.timeout}s"
                )
                self._kill(w, _Kill("timeout", rec, err))
        limits = self.config.limits
        if limits.memory_hard is not None and now >= self._next_memory_check:
            self._next_memory_check = now + limits.memory_check_interval
            self._check_memory(limits.memory_hard)
        if limits.idle_timeout is not None and not self._heap.live and self._stop is None:
            for w in self._workers:
                if (
                    w is not None
                    and w.state is WorkerState.READY
                    and not w.inflight
                    and now - w.idle_since >= limits.idle_timeout
                ):
                    _log.debug(
                        "worker %d idle for %.3gs; letting it exit", w.pid, now - w.idle_since
                    )
                    self._retire(w, "idle")
        stop = self._stop
        if stop is not None and stop.deadline is not None and stop.deadline <= now:
            stop.deadline = None
            for w in self._workers:
                if w is not None and w.inflight and w.state is not WorkerState.DEAD:
                    self._kill(w, _Kill("stop"))
            self._cancel_queued()

    def _check_memory(self, limit: int) -> None:
        for w in self._workers:
            if w is None or not w.inflight or w.figures is None or w.state is WorkerState.DEAD:
                continue
            if w.kill_reason is not None:
                continue
            rss = w.figures.rss()
            if rss is not None and rss > limit:
                rec = w.inflight[0]
                _log.warning(
                    "worker %d uses %d MB, over the hard limit of %d MB, running task %d; "
                    "killing it",
                    w.pid,
                    rss >> 20,
                    limit >> 20,
                    rec.task_id,
                )
                err = MemoryLimitExceeded(
                    f"task {rec.task_id} ({rec.name}): worker {w.pid} reached {rss >> 20} MB, "
                    f"over the hard limit of {limit >> 20} MB",
                    rss=rss,
                    limit=limit,
                )
                self._kill(w, _Kill("memory", rec, err))

    # ----- cancel and stop

    def _cancel(self, task_id: int) -> None:
        rec = self._tasks.get(task_id)
        if rec is None or rec.state.is_final:
            return
        if rec.state is TaskState.PENDING:
            self._heap.discard(rec)
            self._finish_cancelled(rec)
        elif rec.state is TaskState.RETRYING:
            self._finish_cancelled(rec)
        elif rec.state is TaskState.RUNNING:
            for w in self._workers:
                if w is not None and rec in w.inflight:
                    _log.info("cancelling running task %d: killing worker %d", task_id, w.pid)
                    self._kill(w, _Kill("cancel", rec))
                    break

    def _cancel_queued(self) -> None:
        for rec in self._heap.drain():
            self._finish_cancelled(rec)
        for rec in self._delayed.drain():
            self._finish_cancelled(rec)

    def _begin_stop(self, cmd: _Stop) -> None:
        if self._stop is None:
            self._stop = cmd
        else:
            self._stop.cancel_pending |= cmd.cancel_pending
            if cmd.deadline is not None:
                old = self._stop.deadline
                self._stop.deadline = cmd.deadline if old is None else min(old, cmd.deadline)
        if self._stop.cancel_pending:
            self._cancel_queued()
        _log.debug("stopping (cancel_pending=%s)", self._stop.cancel_pending)

    def _finished_stopping(self) -> bool:
        if self._heap.live or self._counters.retrying:
            return False
        return not any(w is not None and w.inflight for w in self._workers)

    # ----- workers

    def _spawn(self, slot: int) -> None:
        tasks_r, tasks_w = os.pipe()
        results_r, results_w = os.pipe()
        for fd in (tasks_w, results_r):
            _wire.enlarge_pipe(fd)
        inherited: tuple[int, ...] = ()
        if self.config.start_method == "fork":
            inherited = (*self._coordinator_fds(), tasks_w, results_r)
        level = logging.getLogger().getEffectiveLevel() if self.config.forward_logs else None
        # The child's ends travel as Connection objects (any start method can pass
        # those); our copies are closed once the child has them.
        child_ends = (
            child_conn(tasks_r, readable=True),
            child_conn(results_w, readable=False),
            child_conn(os.dup(self._lifeline_r), readable=True),
        )
        args = (
            *child_ends,
            inherited,
            self._init_blob,
            level,
            os.getpid(),
        )
        try:
            proc = start_process(self._ctx, worker_main, args, f"procqueue-worker-{slot}")
        except Exception as e:
            # Cannot even start a process (no ``if __name__ == "__main__":`` guard
            # under spawn/forkserver, fd or process limits): a start-up failure,
            # not a coordinator crash. The slot stays empty; dispatch retries.
            for fd in (tasks_w, results_r):
                os.close(fd)
            self._workers[slot] = None
            self._startup_failures += 1
            _log.error("could not start a worker: %s: %s", type(e).__name__, e)
            if self._startup_failures >= _MAX_STARTUP_FAILURES:
                self._break(
                    WorkerStartupError(
                        f"could not start a worker process ({self._startup_failures} tries): "
                        f"{type(e).__name__}: {e}"
                    )
                )
            else:
                self._spawn(slot)  # nothing else would wake us to try again
            return
        finally:
            for conn in child_ends:
                conn.close()
        os.set_blocking(tasks_w, False)
        os.set_blocking(results_r, False)
        w = _Worker(slot, proc, tasks_w, results_r)
        self._workers[slot] = w
        assert self._selector is not None
        self._selector.register(results_r, selectors.EVENT_READ, ("r", w))
        self._selector.register(w.sentinel, selectors.EVENT_READ, ("x", w))
        _log.debug("started worker %d in slot %d (%s)", w.pid, slot, self.config.start_method)

    def _coordinator_fds(self) -> tuple[int, ...]:
        fds = [self._wake_r, self._wake_w, self._lifeline_w]
        if self._selector is not None:
            fileno = getattr(self._selector, "fileno", None)
            if fileno is not None:
                fds.append(fileno())
        for w in self._workers:
            if w is not None and w.state is not WorkerState.DEAD:
                fds += (w.tasks_fd, w.results_fd)
        return tuple(fds)

    def _kill(self, w: _Worker, why: _Kill) -> None:
        """Kill a worker's process tree on purpose; ``why`` decides, once it has
        exited, what happens to the tasks it held (see :meth:`_on_exit`)."""
        if w.state is WorkerState.DEAD:
            return
        if w.kill_reason is None:
            w.kill_reason = why
        if w.state is not WorkerState.STOPPING:
            w.move(WorkerState.STOPPING)
        kill_tree(w.pid)

    def _on_exit(self, w: _Worker) -> None:
        """A worker's process ended: settle what it held, refill its slot."""
        if w.state is WorkerState.DEAD:
            return
        was_starting = w.state is WorkerState.STARTING
        w.proc.join(1.0)
        exitcode = w.proc.exitcode
        self._release(w)
        held = list(w.inflight)
        w.inflight.clear()
        why = w.kill_reason
        if why is not None and why.kind == "stop":
            for rec in held:
                self._cancel_running(rec)
        elif held:
            # The head was executing; the rest never started. A kill aimed at a
            # task that finished meanwhile (its result came first) blames nobody.
            head = held[0]
            target = why.rec if why is not None else head
            for rec in held:
                if rec is not target:
                    self._requeue(rec)
                elif why is None:
                    how = describe_exit(exitcode)
                    _log.warning(
                        "worker %d died (%s) while running task %d", w.pid, how, rec.task_id
                    )
                    err = WorkerCrashedError(
                        f"worker {w.pid} died ({how}) "
                        f"while running task {rec.task_id} ({rec.name})",
                        pid=w.pid,
                        exitcode=exitcode,
                        task_id=rec.task_id,
                    )
                    self._attempt_failed(rec, err, w.pid, exitcode, "", running=True)
                elif why.kind == "cancel":
                    self._cancel_running(rec)
                elif rec is head and why.error is not None:
                    self._attempt_failed(rec, why.error, w.pid, exitcode, "", running=True)
                else:
                    self._requeue(rec)
        elif why is None and self._stop is None and not was_starting:
            _log.warning("idle worker %d died (%s)", w.pid, describe_exit(exitcode))
        if was_starting and why is None:
            self._startup_failures += 1
            detail = w.init_error or describe_exit(exitcode)
            _log.error("worker %d failed to start: %s", w.pid, detail)
            if self._startup_failures >= _MAX_STARTUP_FAILURES:
                self._break(
                    WorkerStartupError(
                        f"{self._startup_failures} workers in a row died before they could "
                        f"take a task; the last cause: {detail}"
                    )
                )
                return
        if why is not None and why.kind == "idle":
            self._workers[w.slot] = None  # started again when work arrives
            return
        if self._broken is None and self._needs_workers():
            if why is not None and why.kind == "recycle":
                self._recycled[w.slot] += 1
            else:
                self._restarts[w.slot] += 1
            self._spawn(w.slot)

    def _spawn_on_demand(self) -> None:
        """Start workers as work arrives, one per waiting task not already
        covered by a booting worker, up to ``num_workers`` (as the stdlib's
        executor does since 3.9): the first result does not wait for a whole
        pool to boot, and slots emptied by ``idle_timeout`` refill the same way."""
        booting = sum(1 for w in self._workers if w is not None and w.state is WorkerState.STARTING)
        idle = sum(
            1
            for w in self._workers
            if w is not None and w.state is WorkerState.READY and not w.inflight
        )
        wanted = self._heap.live - booting - idle
        for slot, w in enumerate(self._workers):
            if wanted <= 0:
                return
            if w is None:
                self._spawn(slot)
                wanted -= 1

    def _check_recycle(self, w: _Worker) -> None:
        """After a result: retire the worker if it ran its quota of tasks or grew
        past the soft memory limit (it finishes what it holds first)."""
        limits = self.config.limits
        if not w.retiring:
            if (
                limits.max_tasks_per_child is not None
                and w.dispatched >= limits.max_tasks_per_child
            ):
                w.retiring = True
                _log.debug("worker %d ran %d tasks; recycling it", w.pid, w.dispatched)
            elif limits.memory_soft is not None and w.figures is not None:
                rss = w.figures.rss()
                if rss is not None and rss > limits.memory_soft:
                    w.retiring = True
                    _log.info(
                        "worker %d uses %d MB, over the soft limit of %d MB; recycling it",
                        w.pid,
                        rss >> 20,
                        limits.memory_soft >> 20,
                    )
        if w.retiring and not w.inflight and w.state is WorkerState.READY:
            self._retire(w, "recycle")

    def _retire(self, w: _Worker, kind: str) -> None:
        """Ask an idle worker to exit cleanly (``recycle``: replaced at once;
        ``idle``: its slot stays empty until work arrives)."""
        w.kill_reason = _Kill(kind)
        w.move(WorkerState.STOPPING)
        w.deadline = None
        if not w.writer.write(_wire.encode(_wire.Shutdown())):
            self._set_writing(w, True)

    def _needs_workers(self) -> bool:
        if self._stop is None:
            return True
        return bool(
            self._heap.live
            or self._counters.retrying
            or any(x is not None and x.inflight for x in self._workers)
        )

    def _cancel_running(self, rec: _TaskRecord) -> None:
        err = TaskCancelledError(f"task {rec.task_id} was cancelled while running")
        self._end_with_error(rec, TaskState.CANCELLED, err, _ERROR)

    def _requeue(self, rec: _TaskRecord) -> None:
        """Back to the heap, uncharged: it never ran, or its worker was killed for
        another task's sake."""
        self._counters.running -= 1
        rec.attempts -= 1
        rec.move(TaskState.PENDING)
        if self._stop is not None and self._stop.cancel_pending:
            self._finish_cancelled(rec)
        else:
            self._heap.push(rec)

    def _release(self, w: _Worker) -> None:
        """Forget a dead worker's fds and reap it."""
        sel = self._selector
        assert sel is not None
        for fd in (w.results_fd, w.sentinel):
            try:
                sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        if w.writing:
            try:
                sel.unregister(w.tasks_fd)
            except (KeyError, ValueError):
                pass
            w.writing = False
        if w.state is WorkerState.STARTING or w.state is WorkerState.READY:
            w.move(WorkerState.STOPPING)
        w.move(WorkerState.DEAD)
        w.deadline = None
        for fd in (w.tasks_fd, w.results_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            w.proc.close()
        except ValueError:
            pass  # still running: only possible if join timed out

    def _break(self, error: PoolBrokenError) -> None:
        """The pool cannot go on: fail everything not final, refuse new work."""
        if self._broken is not None:
            return
        _log.error("procqueue pool broken: %s", error)
        self._broken = error
        self.state = EngineState.BROKEN
        while self._commands:
            cmd = self._commands.popleft()
            if type(cmd) is _TaskRecord and cmd.state is TaskState.PENDING:
                self._heap.push(cmd)
            elif type(cmd) is _Stop:
                self._begin_stop(cmd)
        for rec in self._heap.drain() + self._delayed.drain():
            self._fail_unrun(rec, error)
        for w in self._workers:
            if w is not None and w.state is not WorkerState.DEAD:
                for rec in list(w.inflight):
                    self._counters.running -= 1
                    rec.attempts -= 1
                    rec.move(TaskState.PENDING)
                    self._fail_unrun(rec, error)
                w.inflight.clear()
                self._kill(w, _Kill("broken"))
        if self._stop is None:
            self._stop = _Stop(True, None)

    def _fail_unrun(self, rec: _TaskRecord, error: PoolBrokenError) -> None:
        self._end_with_error(rec, TaskState.FAILED, error, _ERROR)

    def _shutdown_workers(self) -> None:
        """Tell every worker to exit, wait a bounded time, kill what is left."""
        with self._lock:
            workers = [
                w for w in self._workers if w is not None and w.state is not WorkerState.DEAD
            ]
            for w in workers:
                if w.state is WorkerState.STARTING:
                    # Still booting (maybe in its initializer): it holds no task,
                    # so waiting for it to come up only to tell it to go is waste.
                    w.move(WorkerState.STOPPING)
                    kill_tree(w.pid)
                elif w.state is not WorkerState.STOPPING:
                    w.move(WorkerState.STOPPING)
                    try:
                        w.writer.write(_wire.encode(_wire.Shutdown()))
                    except OSError:
                        pass
        deadline = time.monotonic() + _EXIT_GRACE
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.exitcode is None:
                # Only while it is not yet reaped is its pid surely still ours.
                _log.warning("worker %d did not exit in time; killing it", w.pid)
                kill_tree(w.pid)
                w.proc.join(1.0)
            with self._lock:
                if w.inflight:
                    for rec in list(w.inflight):
                        self._cancel_running(rec)
                    w.inflight.clear()
                self._release(w)

    def _close_fds(self) -> None:
        if self._selector is not None:
            self._selector.close()
        for fd in (self._wake_r, self._wake_w, self._lifeline_r, self._lifeline_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = self._lifeline_r = self._lifeline_w = -1


class _Kill:
    """Why the coordinator killed a worker.

    ``timeout``: ``rec`` overran; it gets ``error``. ``cancel``: ``rec`` was
    cancelled. ``stop``: the stop deadline passed; everything held is cancelled.
    ``broken``: the pool broke; what it held was already failed.
    """

    __slots__ = ("kind", "rec", "error")

    def __init__(
        self, kind: str, rec: _TaskRecord | None = None, error: BaseException | None = None
    ) -> None:
        self.kind = kind
        self.rec = rec
        self.error = error


def _rebuild_error(blob: memoryview) -> tuple[BaseException, str]:
    """The task's exception from an ErrorInfo blob, remote traceback attached."""
    info: _wire.ErrorInfo = pickle.loads(blob)
    exc: BaseException | None = None
    if info.exc is not None:
        try:
            exc = pickle.loads(info.exc)
        except BaseException:  # user data: its __setstate__ may raise anything
            exc = None
    if exc is None:
        exc = UnpicklableTaskError(info.exc_type, info.message)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{info.traceback}"""')
    return exc, info.traceback


_OK, _ERROR, _CANCEL = 0, 1, 2


def _deliver(fut: Future[Any], kind: int, value: Any) -> None:
    """Settle a future: a value, an error, or a cancellation (which becomes an
    error if the future is already running and so cannot be cancelled)."""
    try:
        if kind == _CANCEL:
            if fut.cancelled():
                if not getattr(fut, "_cancel_notified", True):
                    fut.set_running_or_notify_cancel()  # wake wait()/as_completed()
                return
            if not fut.running() and Future.cancel(fut):
                fut.set_running_or_notify_cancel()
                return
        if fut.done():
            return
        if not fut.running() and not fut.set_running_or_notify_cancel():
            return
        if kind == _OK:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    except Exception:  # InvalidStateError: settled by the user meanwhile
        _log.debug("future already settled", exc_info=True)


def _resolve_now(fut: Future[Any], rec: _TaskRecord) -> None:
    if rec.state is TaskState.CANCELLED:
        _deliver(fut, _CANCEL, rec.outcome)
    else:
        _deliver(fut, _ERROR if rec.is_error else _OK, rec.outcome)


def _forward_log(d: dict[str, object]) -> None:
    record = logging.makeLogRecord(d)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


# Engines still running at interpreter exit are stopped hard, so that no worker
# outlives the script and multiprocessing's exit hook never waits on one.
_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_engines_in_child() -> None:
    # A forked child (a fork-started worker, or a task that forks) holds a copy
    # of the parent's engines; they are not its to stop at exit.
    _live_engines.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_engines_in_child)


def _stop_all_at_exit() -> None:
    """Interpreter exit with queues still running. After a normal end of the
    script, accepted work runs to completion (as the stdlib executor does);
    after an uncaught Ctrl-C, queued work is cancelled and running tasks killed."""
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for engine in list(_live_engines):
        if interrupted:
            engine.request_stop(cancel_pending=True, timeout=0)
        else:
            engine.request_stop(cancel_pending=False, timeout=None)
    for engine in list(_live_engines):
        engine.wait_stopped()


def _install_exit_hook() -> None:
    # threading's hook runs before non-daemon threads are joined and before
    # multiprocessing's own atexit (CPython's concurrent/futures/process.py does
    # the same with _python_exit).
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_stop_all_at_exit)
    else:  # pragma: no cover
        import atexit

        atexit.register(_stop_all_at_exit)


_install_exit_hook()
