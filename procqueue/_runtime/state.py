"""The engine's read side: the lock, snapshots, futures on demand, listeners,
and handing settled work to callers outside the lock.

``Engine`` (``engine.py``) adds the coordinator loop and the write side.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, NamedTuple

from .._core.config import QueueConfig
from .._core.deadletters import DeadLetter
from .._core.dependencies import each_dependent
from .._core.events import OK
from .._core.records import RELEASED, TaskProgress, TaskState, TaskStatus, _TaskRecord
from .._core.scheduler import Scheduler
from .._policy import RetryPolicy
from ..errors import InvalidArgumentError, OptionTypeError, QueueClosedError, TaskNotFoundError
from ..stats import LatencyCache, QueueStats, WorkerStats, build_stats
from .futures import _TaskFuture, deliver, resolve_now
from .transport import Transport

_log = logging.getLogger("procqueue.coordinator")


class EngineState(str, enum.Enum):
    """Life of the engine (and so of a queue)."""

    NEW = "new"
    """Built, not started: takes no task yet."""
    RUNNING = "running"
    """Takes and runs tasks."""
    STOPPING = "stopping"
    """Stop requested: takes no new task, finishes (or cancels) the rest."""
    STOPPED = "stopped"
    """Coordinator gone, no worker left."""
    BROKEN = "broken"
    """Workers cannot start (or the coordinator crashed): every task failed."""


class TaskDetail(NamedTuple):
    """One task as the dashboard's task page reads it (``ReadSide.task_detail``)."""

    status: TaskStatus
    payload: tuple[bytes, Sequence[Any]] | None
    outcome: Any
    has_outcome: bool
    dependents: tuple[int, ...]
    limit_key: str | None
    timeout: float | None
    parked: bool


class Counters(NamedTuple):
    """The engine's counts for metrics (``ReadSide.counters``)."""

    submitted: int
    retried: int
    by_state: tuple[int, ...]
    slots: tuple[tuple[str, int, int], ...]
    startup_deaths: int
    dead_letters: int
    dead_letters_dropped: int
    schedules: tuple[tuple[str, int, int, int, int, int | None], ...]
    #: Final failures by the error's qualified type (bounded: see Tally).
    failed_by_type: tuple[tuple[str, int], ...] = ()
    #: Tasks ever put in the dead letter queue.
    dead_lettered: int = 0


class Publication(NamedTuple):
    """What one step hands to the outside world, once the lock is released."""

    settlements: list[tuple[Any, int, Any]]
    statuses: list[TaskStatus]
    listeners: list[Callable[[TaskStatus], None]]
    released: list[_TaskRecord]
    progress: list[tuple[int, TaskProgress]]
    progress_listeners: list[Callable[[int, TaskProgress], None]]


class _Notifier:
    """Calls listeners in a thread of their own, in order, so a slow listener
    never holds up dispatch or submits. The backlog is bounded: past
    ``max_backlog`` statuses the oldest are dropped (counted and logged)."""

    def __init__(self, max_backlog: int = 100_000) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._backlog: deque[tuple[TaskStatus, list[Callable[[TaskStatus], None]]]] = deque()
        self._max = max_backlog
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Statuses dropped because listeners fell too far behind.
        self.dropped = 0

    def push(
        self, statuses: list[TaskStatus], listeners: list[Callable[[TaskStatus], None]]
    ) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="procqueue-listeners", daemon=True
                )
                self._thread.start()
            backlog = self._backlog
            backlog.extend((status, listeners) for status in statuses)
            excess = len(backlog) - self._max
            if excess > 0:
                for _ in range(excess):
                    backlog.popleft()
                if self.dropped == 0:
                    _log.warning("procqueue listeners fell %d statuses behind; dropping", excess)
                self.dropped += excess
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._backlog and not self._closed:
                    self._cond.wait()
                if not self._backlog:
                    return
                batch, self._backlog = self._backlog, deque()
            for status, listeners in batch:
                for listener in listeners:
                    try:
                        listener(status)
                    except Exception:
                        _log.exception("a procqueue listener raised; ignored")

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def close(self) -> None:
        """Deliver what is queued, then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class ReadSide:
    """State shared by every thread, and the reads of it."""

    def __init__(self, config: QueueConfig, core: Scheduler, transport: Transport) -> None:
        self.config = config
        self.core = core
        self.transport = transport
        self._lock = threading.RLock()
        self.state = EngineState.NEW
        self._ids = itertools.count(1)
        # Back-pressure (max_pending): sync submitters wait on the condition,
        # async ones on futures; both are woken as tasks become final.
        self._space = threading.Condition(self._lock)
        self._space_waiters: list[Future[None]] = []
        self._idle_waiters: list[_Join] = []
        self._listeners: list[Callable[[TaskStatus], None]] = []
        self._progress_listeners: list[Callable[[int, TaskProgress], None]] = []
        self._notifier = _Notifier()
        #: ``.depth`` > 0 in a thread running done-callbacks (``_publish``).
        self._publishing = threading.local()
        self._latencies = LatencyCache()
        self._stopped = threading.Event()
        #: Resolved (``None``) once the coordinator thread has finished.
        self.stopped_future: Future[None] = Future()
        # One weak hook for every future's cancel(): futures never keep us alive.
        self._cancel_ref: Callable[[], Callable[[int], bool] | None] = weakref.WeakMethod(
            self.request_cancel
        )

    def request_cancel(self, task_id: int) -> bool:
        raise NotImplementedError

    # ------------------------------------------------------------------ records

    def new_record(
        self,
        name: str,
        priority: int,
        payload: tuple[bytes, Sequence[Any]],
        policy: RetryPolicy | None,
        timeout: float | None,
        future: _TaskFuture | None,
    ) -> _TaskRecord:
        """A ``pending`` record with a fresh id (not admitted yet)."""
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
            future.bind(self._cancel_ref, task_id)
            rec.external = True
        return rec

    def check_open(self) -> None:
        state = self.state
        if state is EngineState.RUNNING:
            return
        broken = self.core.broken
        if state is EngineState.BROKEN and broken is not None:
            raise broken
        if state is EngineState.NEW:
            raise QueueClosedError("the queue is not started")
        raise QueueClosedError("cannot submit new tasks: the queue is stopping or stopped")

    # ------------------------------------------------------------------ reads

    def status(self, task_id: int) -> TaskStatus:
        _check_id(task_id)
        with self._lock:
            rec = self.core.tasks.get(task_id)
            if rec is None:
                raise TaskNotFoundError(task_id)
            return rec.snapshot()

    def future_for(self, task_id: int) -> Future[Any]:
        """The task's future (made on demand; already resolved if it is final)."""
        _check_id(task_id)
        with self._lock:
            rec = self.core.tasks.get(task_id)
            if rec is None:
                raise TaskNotFoundError(task_id)
            fut = rec.future
            if fut is None:
                if rec.outcome is RELEASED:
                    # Its outcome went to the future submit() returned, and the
                    # record let go of it (so a dropped result is freed): a new
                    # future could only make one up.
                    raise InvalidArgumentError(
                        f"task {task_id} ended and its outcome was handed to the future "
                        "that submit() returned; it is no longer held here: use that future"
                    )
                fut = rec.future = _TaskFuture()
                fut.bind(self._cancel_ref, task_id)
                if rec.state.is_final:
                    resolve_now(fut, rec)
            return fut

    def claim(self, task_id: int) -> None:
        """``task_id``'s outcome was handed over (see ``Core.claim``)."""
        with self._lock:
            self.core.claim(task_id)

    def idle_future(self) -> Future[None]:
        """Resolved once every task submitted so far is final (tasks
        submitted later are not waited for: under a steady stream of submits,
        or a schedule's runs, it still resolves)."""
        fut: Future[None] = Future()
        with self._lock:
            core = self.core
            if core.is_idle() or self._stopped.is_set():
                fut.set_result(None)
            else:
                # The unfinished ones now, in admission order (one scan; each
                # is then checked until it is final, so O(n) in all).
                ids = [tid for tid, rec in core.tasks.items() if not rec.state.is_final]
                self._idle_waiters.append(_Join(fut, ids))
        return fut

    def has_room(self) -> bool:
        limit = self.config.max_pending
        return limit is None or self.core.tally.unfinished < limit

    def space_future(self) -> Future[None]:
        """Resolved when ``max_pending`` leaves room (or the queue stops)."""
        fut: Future[None] = Future()
        with self._lock:
            if self.has_room() or self.state is not EngineState.RUNNING:
                fut.set_result(None)
            else:
                self._space_waiters.append(fut)
        return fut

    def stats(self, latencies: LatencyCache | None = None, figures: bool = True) -> QueueStats:
        """A consistent snapshot of the counts. Worker figures (psutil) and
        latency percentiles are computed after the lock is released, each
        refreshed at most every 0.25 s (``latencies``: a cache of the
        caller's own, e.g. the dashboard's, refreshed less often;
        ``figures=False``: no psutil reading, RSS and CPU are ``None``)."""
        core = self.core
        latencies = self._latencies if latencies is None else latencies
        samples = None
        with self._lock:
            now = time.monotonic()
            if latencies.due(now):
                samples = list(core.tally.wait_samples), list(core.tally.run_samples)
            slots = [
                (s.index, s.pid, s.state.value, s.tasks_done, s.restarts, s.recycled,
                 s.inflight[0].task_id if s.inflight else None)
                for s in core.slots
            ]  # fmt: skip
            snap = build_stats(
                core.tally,
                now,
                (),
                dead_letters=len(core.dlq),
                dead_letters_dropped=core.dlq.dropped,
                startup_deaths=core.guard.total_deaths,
                throttled=core.parked,
            )
        if samples is not None:
            latencies.update(now, *samples)
        queue_wait, run_time = latencies.value
        workers = []
        for index, pid, state, done, restarts, recycled, head in slots:
            rss, cpu = self.transport.figures(index, pid) if figures else (None, None)
            workers.append(WorkerStats(index, pid, state, done, restarts, recycled, head, rss, cpu))
        return replace(snap, workers=tuple(workers), queue_wait=queue_wait, run_time=run_time)

    def subscribe(self, listener: Callable[[TaskStatus], None]) -> Callable[[], None]:
        """Call ``listener(status)`` on every state change, in order, in a
        thread of listeners' own (``procqueue-listeners``): a slow listener lags
        behind but never holds up the engine. Returns a function that
        unsubscribes. A listener that raises is logged; it never stops the engine."""
        with self._lock:
            self._listeners = [*self._listeners, listener]
            self.core.observed = True

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = [x for x in self._listeners if x is not listener]
                self.core.observed = bool(self._listeners)

        return unsubscribe

    # ------------------------------------------------------------------ dead letters

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            return [e.letter for e in self.core.dlq.entries.values()]

    def dead_letter(self, task_id: int) -> DeadLetter:
        with self._lock:
            entry = self.core.dlq.entries.get(task_id)
            if entry is None:
                raise TaskNotFoundError(task_id)
            return entry.letter

    def purge_dead_letters(self, task_ids: Iterable[int] | None = None) -> int:
        with self._lock:
            entries = self.core.dlq.entries
            if task_ids is None:
                n = len(entries)
                entries.clear()
                return n
            return sum(entries.pop(t, None) is not None for t in task_ids)

    @property
    def dead_letters_dropped(self) -> int:
        return self.core.dlq.dropped

    # ------------------------------------------------------------------ dashboard reads
    # For procqueue.dashboard: each call takes the lock once for a bounded
    # amount of work (the caller chunks its ids), copies plain values and
    # leaves formatting, reprs and sorting to after the lock is released.

    def newest_task_id(self) -> int:
        """The id of the task admitted last (0 when the table is empty)."""
        with self._lock:
            return next(reversed(self.core.tasks), 0)

    def probe_tasks(self, ids: Iterable[int]) -> list[tuple[int, str, tuple[int, ...]] | None]:
        """``(state ordinal, name, upstream ids)`` of each id; ``None`` for an
        id the table does not hold (never admitted, or dropped by retention)."""
        out: list[tuple[int, str, tuple[int, ...]] | None] = []
        append = out.append
        with self._lock:
            get = self.core.tasks.get
            for tid in ids:
                rec = get(tid)
                append(None if rec is None else (rec.state.ordinal, rec.name, rec.upstream))
        return out

    def snapshots(self, ids: Iterable[int]) -> list[TaskStatus | None]:
        """A status per id (``None`` for an unknown one), in one lock round."""
        with self._lock:
            get = self.core.tasks.get
            return [None if (rec := get(t)) is None else rec.snapshot() for t in ids]

    def task_detail(self, task_id: int) -> TaskDetail:
        """What the dashboard's task page shows (values copied, not formatted)."""
        with self._lock:
            rec = self.core.tasks.get(task_id)
            if rec is None:
                raise TaskNotFoundError(task_id)
            completed = rec.state is TaskState.COMPLETED and rec.outcome is not RELEASED
            return TaskDetail(
                status=rec.snapshot(),
                payload=rec.payload,
                outcome=rec.outcome if completed else None,
                has_outcome=completed,
                dependents=tuple(d.task_id for d in each_dependent(rec.dependents)),
                limit_key=rec.limit_key,
                timeout=rec.timeout,
                parked=rec.parked,
            )

    def dead_letter_payload(self, task_id: int) -> tuple[bytes, Sequence[Any]] | None:
        """The pickled call a dead letter keeps to run again (``None``: absent)."""
        with self._lock:
            entry = self.core.dlq.entries.get(task_id)
            return None if entry is None else entry.payload

    def new_latency_samples(self, taken: int) -> tuple[list[float], list[float], int, int]:
        """Run-time and queue-wait samples appended since the core had taken
        ``taken`` (newest first), the count taken now, and how many of the new
        ones the bounded windows already dropped (0 unless more than 10,000
        arrived since the last call)."""
        tally = self.core.tally
        with self._lock:
            now_taken = tally.samples_taken
            runs, waits = tally.run_samples, tally.wait_samples
            fresh = now_taken - taken
            n = min(fresh, len(runs), len(waits))
            new_runs = list(itertools.islice(reversed(runs), n))
            new_waits = list(itertools.islice(reversed(waits), n))
        return new_runs, new_waits, now_taken, fresh - n

    def counters(self) -> Counters:
        """Monotonic and current counts for metrics, in one lock round."""
        core = self.core
        with self._lock:
            slots = tuple((s.state.value, s.restarts, s.recycled) for s in core.slots)
            schedules = tuple(
                (e.name, e.runs, e.skipped_overlap, e.misfired, e.skipped_catchup, e.last_id)
                for e in core.schedules.values()
            )
            return Counters(
                submitted=core.tally.submitted,
                retried=core.tally.retried,
                by_state=tuple(core.tally.by_state),
                slots=slots,
                startup_deaths=core.guard.total_deaths,
                dead_letters=len(core.dlq),
                dead_letters_dropped=core.dlq.dropped,
                schedules=schedules,
                failed_by_type=tuple(core.tally.failed_by_type.items()),
                dead_lettered=core.tally.dead_lettered,
            )

    def schedule_rows(self, runs_kept: int = 10) -> list[dict[str, Any]]:
        """Every live schedule with its newest ``runs_kept`` runs' states."""
        core = self.core
        out = []
        with self._lock:
            wall_offset = time.time() - time.monotonic()
            for e in core.schedules.values():
                fired = list(e.fired)[-runs_kept:]
                runs = []
                for tid in reversed(fired):
                    rec = core.tasks.get(tid)
                    runs.append((tid, rec.state.value if rec is not None else None))
                tick = e.next_tick if e.trigger.wall else e.next_tick + wall_offset
                out.append(
                    {
                        "name": e.name,
                        "trigger": e.trigger.describe(),
                        "paused": e.paused,
                        "next_run": None if e.paused else tick,
                        "runs": e.runs,
                        "skipped": {
                            "overlap": e.skipped_overlap,
                            "misfire": e.misfired,
                            "catchup": e.skipped_catchup,
                        },
                        "overlap": e.overlap,
                        "last_runs": runs,
                    }
                )
        return out

    def schedule_entry(self, name: str) -> Any:
        """The live schedule entry named ``name`` (``None``: no such schedule)."""
        with self._lock:
            return self.core.schedules.get(name)

    def limit_rows(self, max_keys: int = 500) -> tuple[list[dict[str, Any]], int]:
        """Every configured key or pattern with its limits, and each concrete
        key's state (running, parked, tokens); at most ``max_keys`` concrete
        keys (most parked first), and how many there are in all."""
        keys = self.core.keys
        with self._lock:
            now = time.monotonic()
            specs = [(k, list(v)) for k, v in keys.exact.items()] + [
                (p, list(v)) for p, v in keys.patterns
            ]
            live = [
                (
                    lim.key,
                    lim.running,
                    None if lim.max_running == float("inf") else int(lim.max_running),
                    len(lim.parked),
                    len(lim.released),
                    [min(b[1], b[2] + (now - b[3]) * b[0]) for b in lim.buckets],
                    [b[0] for b in lim.buckets],
                )
                for lim in keys.limiters.values()
            ]
        total = len(live)
        live.sort(key=lambda row: -(row[3] + row[4]))
        rows = [
            {
                "key": key,
                "limits": [repr(s) for s in spec],
                "pattern": any(c in key for c in "*?["),
            }
            for key, spec in specs
        ]
        concrete = [
            {
                "key": key,
                "running": running,
                "max_running": max_running,
                "waiting": parked + released,
                "tokens": [round(t, 3) for t in tokens],
                "rates": rates,
            }
            for key, running, max_running, parked, released, tokens, rates in live[:max_keys]
        ]
        return [*rows, *[{"concrete": True, **c} for c in concrete]], total

    # ------------------------------------------------------------------ publishing

    def _after_step(self) -> None:
        """Under the lock, after the scheduler moved: state, back-pressure, join."""
        core = self.core
        if core.broken is not None and self.state in (EngineState.RUNNING, EngineState.STOPPING):
            self.state = EngineState.BROKEN
        if core.space_freed:
            core.space_freed = False
            self._space.notify_all()
            if self._space_waiters:
                for fut in self._space_waiters:
                    core.settlements.append((fut, OK, None))
                self._space_waiters = []
        if self._idle_waiters:
            self._release_idle_waiters(every=core.is_idle())

    def _release_idle_waiters(self, every: bool = True) -> None:
        """Settle the ``join`` waiters whose tasks are all final (``every``:
        all of them, as when the queue is idle or stopped)."""
        tasks, waiting = self.core.tasks, []
        for join in self._idle_waiters:
            if every or join.done(tasks):
                self.core.settlements.append((join.future, OK, None))
            else:
                waiting.append(join)
        self._idle_waiters = waiting

    def _take_publication(self) -> Publication | None:
        core = self.core
        if (
            not core.settlements
            and not core.statuses
            and not core.released
            and not core.progress_reports
        ):
            return None
        pub = Publication(
            core.settlements,
            core.statuses,
            self._listeners,
            core.released,
            core.progress_reports,
            self._progress_listeners,
        )
        core.settlements = []
        core.statuses = []
        core.released = []
        core.progress_reports = []
        return pub

    def _publish(self, pub: Publication | None) -> None:
        """Outside the lock: settle futures (done-callbacks are user code), then
        queue the statuses for the listeners' thread."""
        if pub is None:
            return
        flag = self._publishing
        flag.depth = getattr(flag, "depth", 0) + 1
        try:
            self._deliver(pub)
        finally:
            flag.depth -= 1

    def in_callback(self) -> bool:
        """Whether this thread runs the pool's own user code: a done-callback
        (in the coordinator, or in a submitter that stepped for it) or a
        ``subscribe`` listener. Waiting there for the pool to make progress
        (room under ``max_pending``, the stop) would wait on itself."""
        if getattr(self._publishing, "depth", 0):
            return True
        return threading.current_thread() is self._notifier.thread

    def _deliver(self, pub: Publication) -> None:
        # A done-callback that raises an Exception is logged by the future; a
        # BaseException (SystemExit, KeyboardInterrupt) escapes it. The other
        # futures are settled first (their records are final: nothing would
        # settle them later); then, in the main thread (a submitter's direct
        # step: a Ctrl-C there is the user's), it goes on up; in the pool's
        # own thread it is logged, and the pool serves on.
        escaped: BaseException | None = None
        for fut, kind, value in pub.settlements:
            try:
                deliver(fut, kind, value)
            except BaseException as e:
                if threading.current_thread() is threading.main_thread():
                    escaped = escaped or e
                else:
                    _log.exception("a done-callback raised %s; ignored", type(e).__name__)
        for rec in pub.released:
            rec.outcome = RELEASED  # its future holds it now
        if pub.statuses and pub.listeners:
            self._notifier.push(pub.statuses, pub.listeners)
        for task_id, progress in pub.progress:
            for watch in pub.progress_listeners:
                try:
                    watch(task_id, progress)
                except Exception:  # a display must never stop the engine
                    _log.exception("progress watcher %r raised; ignored", watch)
        if escaped is not None:
            raise escaped

    def watch_progress(self, watch: Callable[[int, TaskProgress], None]) -> Callable[[], None]:
        """Call ``watch(task_id, progress)`` for every ``report_progress`` of
        any task, in the coordinator's thread as it publishes (keep it quick:
        the progress bars' per-task note). Returns a function that stops it.
        Costs nothing until someone watches: unlike ``subscribe``, no status
        is made for the other moves of a task."""
        with self._lock:
            self._progress_listeners = [*self._progress_listeners, watch]
            self.core.progress_watched = True

        def unwatch() -> None:
            with self._lock:
                self._progress_listeners = [w for w in self._progress_listeners if w is not watch]
                self.core.progress_watched = bool(self._progress_listeners)

        return unwatch


class _Join:
    """One ``join``: the tasks unfinished when it was called, checked in
    order; ``pos`` is the first not yet seen final (a record gone from the
    table was final: only ended tasks are let go)."""

    __slots__ = ("future", "ids", "pos")

    def __init__(self, future: Future[None], ids: list[int]) -> None:
        self.future = future
        self.ids = ids
        self.pos = 0

    def done(self, tasks: Mapping[int, _TaskRecord]) -> bool:
        ids, pos = self.ids, self.pos
        while pos < len(ids):
            rec = tasks.get(ids[pos])
            if rec is not None and not rec.state.is_final:
                break
            pos += 1
        self.pos = pos
        return pos == len(ids)


def _check_id(task_id: object) -> None:
    """A task id is an int: ``True`` would find task 1 (``True == 1``)."""
    if type(task_id) is not int and (isinstance(task_id, bool) or not isinstance(task_id, int)):
        raise OptionTypeError(f"a task id is an int, got {task_id!r}")
