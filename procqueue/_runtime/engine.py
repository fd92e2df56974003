"""The runtime shell: one coordinator thread that feeds the scheduler and
carries out what it decides.

How a task travels::

    front door (any thread)              coordinator thread                        transport
    -----------------------              ------------------                        ---------
    submit(fn, *args)                    +-------- Scheduler (pure, _core/) -----+
      pickle (errors here) -- admit -->  | ready heap (-priority, id)            |
      + 1 byte on the wake-up pipe       | delayed heap (backoff due time)       |
                                         | slots, tally, dead letters            |
    cancel / stop -- command deque -->   +-- events in ---------- actions out ---+
                                              ^                        |
                                              |                        v
    Future / TaskStatus <-- settle <--  Done / Exited / Ready    SendTasks / StartWorker /
      (outside the lock)                  (decoded outside        KillWorker / RetireWorker /
                                           the lock)              ReadMemory  --> worker slots

**Front doors** (``ProcQueue``, ``TaskQueue``) validate and pickle in the
caller's thread (``_frontdoor.py``), then :meth:`Engine.enqueue` admits the
record under the lock and, if the coordinator sleeps and a worker is short of
work, writes one byte to the wake-up pipe. Cancel and stop go through the
command deque. Status and stats are snapshots taken under the lock; worker
figures (psutil) are read outside it.

**The coordinator thread** (:meth:`Engine._loop`) repeats one step: under the
lock, feed the events read since the last step and the commands to the
scheduler, let it fire its timers and dispatch, take its actions; outside the
lock, carry the actions out through the transport, settle futures and call
listeners (user code); then wait in one ``select`` over the wake-up pipe and
whatever the transport watches (result pipes, process sentinels), with the
scheduler's next deadline as the timeout. No polling. One step runs at a
time (``_step_lock``): a submit that finds the coordinator asleep with a worker
waiting for work takes the step itself (``_step_here``), which saves the hop
to the coordinator thread and back, and wakes it only if the step moved its
next deadline closer or left it events to feed.

**The transport** (``transport.py``; ``local.py`` for local processes) starts,
feeds, kills and measures workers and reports events; it decides nothing.
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from .._core.config import QueueConfig
from .._core.events import (
    Action,
    Done,
    Event,
    KillWorker,
    ReadMemory,
    RetireWorker,
    SendTasks,
    StartWorker,
)
from .._core.records import TaskState, _TaskRecord
from .._core.scheduler import Scheduler
from .._core.schedules import ScheduleEntry
from .._core.slots import WorkerState
from ..errors import (
    InvalidArgumentError,
    OptionTypeError,
    PoolBrokenError,
    QueueClosedError,
    QueueFullError,
    TaskNotFoundError,
)
from . import _sigint
from ._calls import pass_inputs
from ._rearm import rearm
from .processes import close_fds
from .state import EngineState, ReadSide
from .transport import OnReady, Poller, Transport

_log = logging.getLogger("procqueue.coordinator")

#: Seconds workers get to exit after ``Shutdown`` before they are killed.
_EXIT_GRACE = 5.0
#: The longest the coordinator sleeps in one ``select`` (a later deadline
#: is met by sleeping again).
_MAX_SLEEP = 86400.0
#: A submit that finds the coordinator asleep with a worker waiting for work
#: takes the step itself (see :meth:`Engine._step_here`). False: always wake it.
DIRECT_DISPATCH = True
_EMPTY = WorkerState.STOPPED


class _Cancel:
    __slots__ = ("task_id",)

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id


class _Stop:
    __slots__ = ("cancel_pending", "deadline")

    def __init__(self, cancel_pending: bool, deadline: float | None) -> None:
        self.cancel_pending = cancel_pending
        self.deadline = deadline


class _SelectorPoller(Poller):
    def __init__(self, selector: selectors.BaseSelector, own: tuple[int, ...]) -> None:
        self._sel = selector
        self._own = own

    def watch(self, fd: int, on_readable: OnReady) -> None:
        self._sel.register(fd, selectors.EVENT_READ, on_readable)

    def watch_writable(self, fd: int, on_writable: OnReady) -> None:
        self._sel.register(fd, selectors.EVENT_WRITE, on_writable)

    def unwatch(self, fd: int) -> None:
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def own_fds(self) -> tuple[int, ...]:
        fileno = getattr(self._sel, "fileno", None)
        return (*self._own, fileno()) if fileno is not None else self._own


class Engine(ReadSide):
    """The one engine behind both front doors. Thread-safe public methods:
    :meth:`start`, :meth:`enqueue`, :meth:`request_cancel`,
    :meth:`request_stop`, and the read side (:class:`~.state.ReadSide`)."""

    def __init__(self, config: QueueConfig, transport: Transport) -> None:
        rand = config.rand
        if rand is None:
            import random

            rand = random.Random().random
        core = Scheduler(config, now=time.monotonic(), rand=rand, bind_inputs=pass_inputs)
        super().__init__(config, core, transport)
        self._commands: deque[_Cancel | _Stop] = deque()
        self._sleeping = False
        # Whether a submit must wake the coordinator: only when some worker is
        # short of work. Otherwise the next result wakes it anyway.
        self._wake_on_submit = True
        self._wake_pending = False
        # Admitted since the coordinator's last step. A submitter sets it, then
        # reads _sleeping; the coordinator sets _sleeping, then reads it: one of
        # them sees the other, so no wake-up is lost.
        self._fresh = False
        # One step at a time, whichever thread takes it: the coordinator, or a
        # submitter that found it asleep (actions are carried out and
        # publications made in the order they were taken, under this lock).
        self._step_lock = threading.Lock()
        # When the sleeping coordinator means to wake (monotonic; None: never),
        # whether a submitter may step (every slot serving or empty), events a
        # submitter's step produced, for the coordinator to feed, and the
        # actions it left to the coordinator: a step from a caller's thread
        # never starts a process (a spawn or forkserver start takes
        # milliseconds, and an event loop's thread must not wait on it).
        self._sleep_deadline: float | None = None
        self._direct_ok = False
        self._handoff: list[Event] = []
        self._deferred: list[Action] = []
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        # A write to the wake pipe and its closing exclude each other: a write
        # after the close could land in a reused fd number (another file).
        self._wake_lock = threading.Lock()
        self._soft_limit = config.limits.memory_soft is not None
        self._sigint_taken = False  # counted by _sigint.take(): _finish gives it back

    # ------------------------------------------------------------------ front doors

    def start(self) -> None:
        check = getattr(self.transport, "check_main", None)
        if check is not None:
            check()
        with self._lock:
            if self.state is not EngineState.NEW:
                raise QueueClosedError("a queue can be started only once")
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
            now = time.monotonic()
            self.core.tally.started = now
            self.core.wall_offset = time.time() - now
            self.transport.open(_SelectorPoller(self._selector, (self._wake_r, self._wake_w)))
            self.state = EngineState.RUNNING
            self._thread = threading.Thread(
                target=self._run, name="procqueue-coordinator", daemon=True
            )
            _live_engines.add(self)
            # Before the thread: its end gives it back (_finish).
            self._sigint_taken = _sigint.take()
            self._thread.start()

    def enqueue(self, rec: _TaskRecord, *, block: bool = True, wait: float | None = None) -> int:
        """Admit a prepared record, honouring ``max_pending``: wait up to
        ``wait`` seconds for room (``block=False``: not at all), then raise
        ``QueueFullError``."""
        limit = self.config.max_pending
        held = False
        try:
            with self._lock:
                # Closed first: a submitter woken by stop() must get QueueClosedError,
                # not QueueFullError again (an async one would spin on the loop).
                self.check_open()
                if (
                    limit is not None
                    and self.core.tally.unfinished >= limit
                    # A done-callback's or listener's follow-up work is admitted
                    # over the limit: no room could come while it waits.
                    and not self.in_callback()
                ):
                    self._wait_for_room(limit, block, wait)  # Ctrl-C ends the wait
                self.check_open()  # under the lock: stop() may have begun since
                # From here to the end, a Ctrl-C waits for the engine (_sigint.py).
                held = _sigint.hold()
                core = self.core
                core.admit(rec, time.monotonic())
                # A task that waits for its upstream gives the coordinator nothing
                # to do: waking it for each one of a DAG's submits only made it
                # fight the submitting thread for the GIL.
                ready = rec.state is not TaskState.WAITING
                if ready:
                    self._fresh = True  # before reading _sleeping: see _loop
                # Admission settled something (a dependent of a task that had
                # already failed): the coordinator must publish it now.
                # A scheduled task may be due before the coordinator's current
                # timeout: it must recompute it.
                settled = bool(core.settlements) or rec.due is not None
            if settled or (
                ready
                and self._sleeping
                and self._wake_on_submit
                and not self._wake_pending
                and not (self._direct_ok and self._step_here())
            ):
                self._wake_now()  # held above
            return rec.task_id
        finally:
            if held:
                _sigint.release()

    def enqueue_many(self, records: list[_TaskRecord]) -> None:
        """``map``'s fast path: one lock round for a batch (no ``max_pending``)."""
        held = _sigint.hold()
        try:
            with self._lock:
                self.check_open()
                self.core.admit_many(records)
                self._fresh = True
            if self._sleeping and self._wake_on_submit and not self._wake_pending:
                self._wake_now()  # held above
        finally:
            if held:
                _sigint.release()

    def _wait_for_room(self, limit: int, block: bool, wait: float | None) -> None:
        if not block:
            raise QueueFullError(f"{limit} tasks are already pending (max_pending)")
        deadline = None if wait is None else time.monotonic() + wait
        while self.core.tally.unfinished >= limit and self.state is EngineState.RUNNING:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueueFullError(f"no room under max_pending={limit} within {wait}s")
            self._space.wait(remaining)

    def requeue_dead_letter(
        self,
        task_id: int,
        max_retries: int | None = None,
        priority: int | None = None,
        cascade: bool = False,
    ) -> dict[int, int]:
        """Run a dead letter again as a new task with a fresh retry budget;
        ``cascade``: re-arm, as new tasks, the dependents its failure ended
        (transitively), waiting on the new ids. Returns ``{old id: new id}``."""
        with self._lock:
            self.check_open()
            entry = self.core.dlq.entries.pop(task_id, None)
        if entry is None:
            raise TaskNotFoundError(task_id)
        letter = entry.letter
        policy = entry.policy
        if max_retries is not None:
            policy = replace(policy, max_retries=max_retries)
        prio = letter.priority if priority is None else priority
        rec = self.new_record(letter.name, prio, entry.payload, policy, entry.timeout, None)
        rec.limit_key = entry.limit_key
        records = [rec]
        ids = {task_id: rec.task_id}
        try:
            if cascade:
                records += rearm(entry.dependents, ids, self.new_record)
            with self._lock:
                self.check_open()
                for r in records[1:]:  # the others' upstream must still be known
                    for up in r.upstream:
                        if up not in self.core.tasks and up not in ids.values():
                            raise TaskNotFoundError(
                                f"cannot re-arm task {r.name}: its upstream task {up} is no "
                                "longer known (dropped by retain_finished)"
                            )
            # An operator's act, like the cascade's: not held to max_pending
            # (blocking here would stall a dashboard's request or an event loop).
            self.enqueue_linked(records)
        except BaseException:
            with self._lock:
                self.core.dlq.entries[task_id] = entry  # not lost if it cannot be queued
            raise
        return ids

    def enqueue_linked(self, records: list[_TaskRecord]) -> None:
        """Admit records that may depend on one another, in order, under one
        lock round (an operator's requeue: ``max_pending`` does not apply)."""
        with self._lock:
            self.check_open()
            # All or none: a record that cannot be linked raises before any
            # is admitted (the caller puts its dead letter back).
            self.core.check_links(records, {rec.task_id for rec in records})
            now = time.monotonic()
            for rec in records:
                self.core.admit(rec, now)
            self._fresh = True
        self._wake()

    def add_schedule(
        self, build: Callable[[float, float, set[str]], ScheduleEntry]
    ) -> ScheduleEntry:
        """Register the entry ``build(now, wall_offset, names taken)`` makes."""
        with self._lock:
            self.check_open()
            now = time.monotonic()
            core = self.core
            core.wall_offset = time.time() - now
            entry = build(now, core.wall_offset, set(core.schedules))
            core.add_schedule(entry)
        self._wake()  # its first tick may come before the coordinator's timeout
        return entry

    def control_schedule(self, entry: ScheduleEntry, op: str) -> int | None:
        """``pause``, ``resume``, ``cancel`` or ``run_now`` (returns the task id)."""
        task_id = None
        with self._lock:
            core = self.core
            live = core.schedules.get(entry.name) is entry
            if op == "cancel":
                if live:
                    del core.schedules[entry.name]
                return None
            if not live:
                raise QueueClosedError(f"schedule {entry.name!r} was cancelled")
            now = time.monotonic()
            if op == "pause":
                entry.paused = True
            elif op == "resume":
                if entry.paused:
                    entry.resume(now, core.wall_offset)
            else:
                self.check_open()
                task_id = core.run_now(entry, now)
                self._fresh = True
        self._wake()
        return task_id

    def request_cancel(self, task_id: int) -> bool:
        """Ask the coordinator to cancel; True if the task was not final yet."""
        with self._lock:
            rec = self.core.tasks.get(task_id)
            if rec is None:
                raise TaskNotFoundError(task_id)
            if rec.state.is_final:
                return False
            self._commands.append(_Cancel(task_id))
        self._wake()
        return True

    def request_stop(self, *, cancel_pending: bool, timeout: float | None) -> None:
        """Begin stopping (idempotent). ``timeout``: seconds after which running
        tasks' workers are killed; ``None`` (or ``inf``) waits for them. A
        typed error, before anything changes, for a bad ``timeout``."""
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise OptionTypeError(f"timeout must be a number of seconds, got {timeout!r}")
            if not timeout >= 0:  # nan too
                raise InvalidArgumentError(f"timeout must be >= 0, got {timeout!r}")
            if math.isinf(timeout):
                timeout = None
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self.state is EngineState.NEW:
                self.state = EngineState.STOPPED
                self._stopped.set()
                self.stopped_future.set_result(None)
                return
            if self.state in (EngineState.RUNNING, EngineState.BROKEN):
                if self.state is EngineState.RUNNING:
                    self.state = EngineState.STOPPING
                self._space.notify_all()
                for fut in self._space_waiters:
                    fut.set_result(None)
                self._space_waiters = []
            elif not cancel_pending and timeout is None:
                return
            self._commands.append(_Stop(cancel_pending, deadline))
        self._wake()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait for the stop to end (``False``: ``timeout`` passed first). In
        a done-callback or a listener it does not wait (the stop goes on; it
        would wait on its own thread): ``shutdown(wait=True)`` from there
        returns at once."""
        if self.in_callback() or threading.current_thread() is self._thread:
            return self._stopped.is_set()
        if not self._stopped.wait(timeout):
            return False
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        _sigint.restore()  # the last queue stopped: Python's default handler back
        return True

    def _step_here(self) -> bool:
        """Take the coordinator's step in the submitting thread, if nobody is
        stepping: the task goes down the worker's pipe now, without a hop to
        the coordinator thread and back (about a fifth of an idle round trip).
        The coordinator is woken only if the step left it something to do
        sooner than it planned. Returns False when another thread steps."""
        if not DIRECT_DISPATCH or not self._step_lock.acquire(blocking=False):
            return False
        wake = True
        try:
            if not self._sleeping or self._deferred:
                # Awake: it will see the task itself. Deferred starts: they
                # must be carried out before any later step's actions.
                wake = False
                return False
            done, deadline, events = self._step([], here=True)
            if events:
                with self._lock:
                    self._handoff += events
            planned = self._sleep_deadline
            sooner = deadline is not None and (planned is None or deadline < planned)
            wake = done or bool(events) or sooner
        finally:
            self._step_lock.release()
            # Also when the step raised (a done-callback's SystemExit, a
            # Ctrl-C): a start it deferred must not wait for the next event.
            if wake or self._deferred:
                self._wake_now()  # from enqueue, which holds Ctrl-C
        return True

    def _wake(self) -> None:
        # Not cut in two by a Ctrl-C: the flag set and no byte behind it
        # would keep every later submit from waking the coordinator.
        held = _sigint.hold()
        try:
            self._wake_now()
        finally:
            if held:
                _sigint.release()

    def _wake_now(self) -> None:
        """:meth:`_wake` for a caller already holding Ctrl-C (``enqueue``)."""
        # One byte per sleep is enough: a burst of submits costs one syscall.
        self._wake_pending = True
        with self._wake_lock:
            if self._wake_w < 0:
                return  # stopped
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # the pipe is full: already awake

    def _drain_wake(self) -> list[Event]:
        self._wake_pending = False
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        return []

    # ------------------------------------------------------------------ coordinator

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            _log.exception("procqueue coordinator crashed; failing every task")
            with self._lock:
                crash = PoolBrokenError("the procqueue coordinator thread crashed")
                self.core._break(crash, time.monotonic())
                self._after_step()
                pub = self._take_publication()
            self._publish(pub)
        finally:
            try:
                with self._step_lock:  # no submitter's step runs past this point
                    self._direct_ok = False
                    # Only a crashed loop leaves starts deferred past its last
                    # step: the pool is broken, nothing is to be started.
                    self._deferred = []
                    self._shutdown_workers()
            finally:
                self._finish()

    def _loop(self) -> None:
        selector = self._selector
        assert selector is not None
        events: list[Event] = []
        while True:
            with self._step_lock:
                if self._deferred:
                    actions, self._deferred = self._deferred, []
                    events += self._carry_out(actions)
                if self._handoff:
                    with self._lock:
                        events += self._handoff
                        self._handoff = []
                done, deadline, events = self._step(events)
            if done:
                return
            if events:
                continue
            # At most a day: epoll refuses waits past 2**31 ms (~24.8 days),
            # which a far delay, eta, timeout or schedule would ask for.
            timeout = None if deadline is None else min(_MAX_SLEEP, deadline - time.monotonic())
            if timeout is not None and timeout < 0:
                timeout = 0.0
            self._sleep_deadline = deadline
            self._sleeping = True
            if self._commands or (self._fresh and self._wake_on_submit):
                timeout = 0.0
            ready = selector.select(timeout)
            self._sleeping = False
            # The transport's callbacks (reading results, flushing a full pipe,
            # reaping a worker) touch what a submitter's step may be writing to.
            with self._step_lock:
                for key, _ in ready:
                    events += key.data()
            if self._soft_limit and events:
                # The soft memory limit is checked after each result, before
                # more work goes to that worker (psutil: outside the lock).
                finished = {ev.slot for ev in events if type(ev) is Done}
                events += [self.transport.read_memory(slot) for slot in finished]

    def _step(
        self, events: list[Event], *, here: bool = False
    ) -> tuple[bool, float | None, list[Event]]:
        """One step: feed ``events`` and the commands to the scheduler, let it
        fire timers and dispatch (under the lock); carry out its actions and
        publish (outside). Returns whether the loop is over, the next deadline
        and the events the actions produced. No local outlives the step, so a
        result is never kept alive here after its future is settled.
        ``here``: a submitter's step; its worker starts, and any later action
        on a slot being started, are left in ``_deferred`` for the
        coordinator. The rest is carried out here, at once: a task sent to an
        idle worker must not wait behind a start (and a worker may die
        before the coordinator gets to it, which ``send`` handles only when
        the coordinator has not reaped it yet)."""
        with self._lock:
            now = time.monotonic()
            core = self.core
            core.wall_offset = time.time() - now  # follows clock steps (cron, stamps)
            self._fresh = False
            for ev in events:
                core.feed(ev, now)
            events.clear()
            self._apply_commands(now)
            core.tick(now)
            actions = core.take_actions()
            done = core.finished_stopping()
            deadline = core.next_deadline(now)
            self._wake_on_submit = core.short_of_work()
            # A slot that is starting or stopping has a process the
            # coordinator is still bringing up or reaping: it steps alone.
            self._direct_ok = all(s.serving or s.state is _EMPTY for s in core.slots)
            self._after_step()
            pub = self._take_publication()
        if here and any(type(a) is StartWorker for a in actions):
            actions = self._defer_starts(actions)
        new_events = self._carry_out(actions)
        self._publish(pub)
        return done, deadline, new_events

    def _defer_starts(self, actions: list[Action]) -> list[Action]:
        """Split a submitter's actions: the worker starts (and anything after
        one on the same slot) go to ``_deferred``; returns the rest."""
        starting: set[int] = set()
        now: list[Action] = []
        later: list[Action] = []
        for action in actions:
            if type(action) is StartWorker:
                starting.add(action.slot)
                later.append(action)
            elif starting and _slots_of(action) & starting:
                later.append(action)
            else:
                now.append(action)
        self._deferred = later
        return now

    def _apply_commands(self, now: float) -> None:
        commands = self._commands
        while commands:
            cmd = commands.popleft()
            if type(cmd) is _Cancel:
                self.core.cancel(cmd.task_id, now)
            elif type(cmd) is _Stop:
                self.core.stop(cancel_pending=cmd.cancel_pending, deadline=cmd.deadline, now=now)

    def _carry_out(self, actions: list[Action]) -> list[Event]:
        """Do what the scheduler decided (outside the lock); returns the events
        the doing produced (start failures, memory readings)."""
        events: list[Event] = []
        transport = self.transport
        for action in actions:
            if type(action) is SendTasks:
                transport.send(action.slot, action.tasks)
            elif type(action) is StartWorker:
                events += transport.start_worker(action.slot)
            elif type(action) is KillWorker:
                transport.kill(action.slot)
            elif type(action) is RetireWorker:
                transport.retire(action.slot)
            elif type(action) is ReadMemory:
                events += [transport.read_memory(slot) for slot in action.slots]
        return events

    def _shutdown_workers(self) -> None:
        """Every worker leaves: idle ones are told to, others are killed; wait a
        bounded time, kill what is left, settle what any held."""
        with self._lock:
            self.core.shutdown()
            actions = self.core.take_actions()
        self._carry_out(actions)
        events = self.transport.wait_all(_EXIT_GRACE)
        with self._lock:
            now = time.monotonic()
            for ev in events:
                self.core.feed(ev, now)
            self.core.take_actions()  # nothing is started any more
            self._after_step()
            pub = self._take_publication()
        self._publish(pub)

    def _finish(self) -> None:
        if self._selector is not None:
            self._selector.close()
        self.transport.close()
        with self._wake_lock:
            wake_w, self._wake_w = self._wake_w, -1
        close_fds(self._wake_r, wake_w)
        self._wake_r = -1
        with self._lock:
            if self.state is not EngineState.BROKEN:
                self.state = EngineState.STOPPED
            self._release_idle_waiters()
            pub = self._take_publication()
        self._publish(pub)
        self._notifier.close()
        if self._sigint_taken:  # however the queue stopped, and from whichever thread
            self._sigint_taken = False
            _sigint.give_back()
        _live_engines.discard(self)
        self._stopped.set()
        self.stopped_future.set_result(None)
        _log.debug("coordinator stopped")


def _slots_of(action: Action) -> set[int]:
    """The worker slots an action touches."""
    if type(action) is ReadMemory:
        return set(action.slots)
    return {action.slot}  # type: ignore[union-attr]


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
