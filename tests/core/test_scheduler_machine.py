"""Stateful tests of the pure scheduler core (``procqueue._core``), with a fake
clock and a fake transport.

``SchedulerMachine`` drives a :class:`Scheduler` the way the runtime shell does
(``_runtime/engine.py``: feed the events, apply a command, ``tick``, take the
actions, carry them out; again at once while carrying out produced events). Its
``FakeTransport`` answers the actions as the local transport would, but *when* a
worker says hello, returns a result, crashes or finally exits after a kill is
up to hypothesis: that is where the races are. Some tasks are submitted with a
delay (born ``scheduled``, due at ``now + delay``). After every step the machine
checks the core's invariants (``CoreState``, ``Slot`` and ``docs/design.md``
state them) against its own log of what happened; at teardown it stops the
queue (cancelling what waits, or draining it: then the clock runs on until the
last delayed task is due), answers everything outstanding, and checks that
every task ended once.

The example tests at the bottom pin the behaviours named in the design
(priority then FIFO, backoff, timeouts, start-up supervision) with exact event
sequences, and the races the machine found (fixed in 9d6ffb4) as regressions.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from procqueue import RetryPolicy, TaskCancelledError, WorkerLimits
from procqueue._core.config import QueueConfig
from procqueue._core.events import (
    CANCEL,
    ERROR,
    OK,
    Action,
    Done,
    Event,
    Exited,
    InitFailed,
    KillWorker,
    Memory,
    ReadMemory,
    Ready,
    RetireWorker,
    SendTasks,
    Started,
    StartFailed,
    StartWorker,
)
from procqueue._core.records import TaskState, _TaskRecord
from procqueue._core.scheduler import Scheduler
from procqueue._core.slots import KillReason, WorkerState
from procqueue._core.supervision import RestartPolicy
from procqueue._runtime.futures import deliver

SCHEDULED, PENDING = TaskState.SCHEDULED, TaskState.PENDING
RUNNING, RETRYING = TaskState.RUNNING, TaskState.RETRYING
COMPLETED, FAILED, CANCELLED = TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED
STOPPED, STARTING = WorkerState.STOPPED, WorkerState.STARTING
READY, STOPPING = WorkerState.READY, WorkerState.STOPPING


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    """The core logs every crash and kill; thousands of them here."""
    log = logging.getLogger("procqueue")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    yield
    log.setLevel(level)


def rand() -> float:
    return 0.5  # no jitter: delays are exact


#: Run times the fake workers report, per callable: "fast" earns a deep
#: adaptive prefetch, "slow" none (``auto_prefetch``).
RUN_TIME = {b"fast": 0.0001, b"slow": 0.01}
#: Memory readings the fake transport reports, against the limits below.
SOFT, HARD = 100, 200


def order_key(rec: _TaskRecord) -> tuple[int, int]:
    """The ready heap's order: higher priority first, then submission order."""
    return (-rec.priority, rec.task_id)


@dataclass
class FakeWorker:
    """A worker process as the fake transport sees it."""

    pid: int
    booting: bool = True
    #: Task ids sent and not answered yet, in order (a worker runs them in order).
    fifo: deque[int] = field(default_factory=deque)
    #: Told to go (killed or retired): the exit code it will report.
    exit_code: int | None = None
    #: When the task at the head of ``fifo`` began executing.
    head_since: float = 0.0

    @property
    def asked(self) -> bool:
        return self.exit_code is not None


class FakeTransport:
    """Carries out actions the way ``LocalTransport`` does, with no processes:
    ``StartWorker`` answers ``Started`` (or ``StartFailed`` when armed) at once,
    ``ReadMemory`` answers ``Memory`` at once; everything else is answered later
    by a rule of the machine."""

    def __init__(self) -> None:
        self.procs: dict[int, FakeWorker] = {}
        self.next_pid = 1000
        self.start_failures = 0
        self.rss = 50

    def rss_of(self, slot: int) -> int | None:
        p = self.procs.get(slot)
        return None if p is None or p.booting else self.rss

    def start(self, slot: int) -> list[Event]:
        assert slot not in self.procs, f"slot {slot} started while its worker is still there"
        if self.start_failures:
            self.start_failures -= 1
            return [StartFailed(slot, "OSError: [Errno 11] Resource temporarily unavailable")]
        self.next_pid += 1
        self.procs[slot] = FakeWorker(self.next_pid)
        return [Started(slot, self.next_pid)]


class SchedulerMachine(RuleBasedStateMachine):
    """The scheduler under a fake clock and a fake transport."""

    # ------------------------------------------------------------------ set-up

    @initialize(
        workers=st.integers(1, 3),
        prefetch=st.sampled_from([None, None, 0, 1, 3]),
        per_child=st.sampled_from([None, None, 2]),
        memory=st.booleans(),
        idle=st.sampled_from([None, None, 0.5]),
        immediate=st.integers(0, 2),
        intensity=st.integers(1, 4),
        period=st.sampled_from([1.0, 5.0]),
        max_pending=st.sampled_from([None, 10**6]),
        drain=st.booleans(),
    )
    def setup(
        self,
        workers: int,
        prefetch: int | None,
        per_child: int | None,
        memory: bool,
        idle: float | None,
        immediate: int,
        intensity: int,
        period: float,
        max_pending: int | None,
        drain: bool,
    ) -> None:
        self.config = QueueConfig(
            num_workers=workers,
            prefetch=prefetch,
            retain_finished=10**6,
            max_pending=max_pending,
            limits=WorkerLimits(
                max_tasks_per_child=per_child,
                memory_soft=SOFT if memory else None,
                memory_hard=HARD if memory else None,
                idle_timeout=idle,
                memory_check_interval=0.1,
            ),
            restart=RestartPolicy(
                max_failures=3, immediate=immediate, intensity=intensity, period=period
            ),
        )
        self.now = 100.0
        self.sched = Scheduler(self.config, now=self.now, rand=rand)
        self.sched.observed = True
        self.fake = FakeTransport()
        self.next_id = 1
        # Teardown stops with cancel_pending=False (and runs the clock on) or True.
        self.drain = drain
        # --- the machine's own log
        self.last_status: dict[int, TaskState] = {}
        self.final: dict[int, TaskState] = {}
        self.retry_due: dict[int, float] = {}
        self.due: dict[int, float] = {}  # of each task submitted with a delay
        self.futures: dict[int, Future[Any]] = {}
        self.settled: Counter[int] = Counter()
        self.cancel_asked: set[int] = set()  # cancel() while not final
        self.respawn_due: dict[int, float] = {}
        self.stop_deadline: float | None = None
        self.stop_fired = False
        self.doomed_by_break: set[int] = set()
        # --- the start-up guard, as docs/design.md states it
        self.failures_in_a_row = 0
        self.deaths: deque[float] = deque()

    # ------------------------------------------------------------------ the shell

    def step(self, events: Sequence[Event] = ()) -> None:
        """One turn of ``Engine._loop``: feed, tick, take and carry out the
        actions; repeated at once while carrying out produced events."""
        batch = list(events)
        while True:
            finals_before = len(self.final)
            for ev in batch:
                self.feed(ev)
            self.sched.tick(self.now)
            if self.stop_deadline is not None and self.now >= self.stop_deadline:
                self.stop_deadline = None
                self.stop_fired = True
            actions = self.sched.take_actions()
            self.check_dispatch(actions)
            batch = self.carry_out(actions)
            self.collect(finals_before)
            if not batch:
                self.check()
                return

    def feed(self, ev: Event) -> None:
        sched, now = self.sched, self.now
        slot = sched.slots[ev.slot]
        state, init_error = slot.state, slot.init_error
        was_broken = sched.broken is not None
        unfinished = {t for t, r in sched.tasks.items() if not r.state.is_final}
        signal_death = False
        if isinstance(ev, Ready) and state is STARTING:
            if ev.error is None:
                self.failures_in_a_row = 0
                self.deaths.clear()
            else:
                self.failures_in_a_row += 1
        elif isinstance(ev, StartFailed):
            self.failures_in_a_row += 1
        elif isinstance(ev, Exited) and state is STARTING:
            if ev.exitcode is not None and ev.exitcode < 0 and init_error is None:
                signal_death = True
                self.deaths.append(now)
                period = self.config.restart.period
                while self.deaths[0] < now - period:
                    self.deaths.popleft()
            else:
                self.failures_in_a_row += 1
        sched.feed(ev, now)
        if isinstance(ev, Exited):
            self.fake.procs.pop(ev.slot, None)
        if was_broken:
            return
        policy, workers = self.config.restart, self.config.num_workers
        streak = len(self.deaths)
        should_break = (
            self.failures_in_a_row >= policy.max_failures or streak > policy.intensity * workers
        )
        assert (sched.broken is not None) == should_break, (
            f"after {ev}: broken={sched.broken!r}, failures in a row={self.failures_in_a_row}, "
            f"deaths in period={len(self.deaths)}"
        )
        if sched.broken is not None:
            event("pool broken")
            if any(self.last_status[t] is SCHEDULED for t in unfinished):
                event("pool broken with scheduled tasks")
            self.doomed_by_break = unfinished
        elif signal_death:
            # Restarted at once for the first ``immediate`` per slot, then after
            # a doubling backoff (supervision.py).
            late = streak - policy.immediate * workers
            if late <= 0 or not sched._needs_workers():
                event("killed while starting: restarted at once")
                assert slot.respawn_at is None
                assert (slot.state is STARTING) == sched._needs_workers()
            else:
                event("killed while starting: restarted after a backoff")
                backoff = min(policy.backoff_max, policy.backoff_base * 2.0 ** (late - 1))
                assert slot.respawn_at == now + backoff
                self.respawn_due[ev.slot] = slot.respawn_at

    def carry_out(self, actions: list[Action]) -> list[Event]:
        sched, fake, now = self.sched, self.fake, self.now
        out: list[Event] = []
        for action in actions:
            if isinstance(action, StartWorker):
                due = self.respawn_due.pop(action.slot, None)
                assert due is None or now >= due, f"slot {action.slot} restarted before {due}"
                out += fake.start(action.slot)
            elif isinstance(action, SendTasks):
                p = fake.procs[action.slot]
                assert not p.booting and not p.asked
                slot = sched.slots[action.slot]
                ids = [r.task_id for r in action.tasks]
                for tid in ids:
                    due = self.due.get(tid)
                    assert due is None or now >= due, f"task {tid} sent before its due {due}"
                if not p.fifo:
                    p.head_since = now
                p.fifo.extend(ids)
                assert list(p.fifo) == [r.task_id for r in slot.inflight]
                if self.config.prefetch is not None:
                    assert len(p.fifo) <= 1 + self.config.prefetch
                per_child = self.config.limits.max_tasks_per_child
                if per_child is not None:
                    assert slot.dispatched <= per_child
                if any(s.state is STARTING for s in sched.slots):
                    assert len(p.fifo) == 1, "prefetched while a worker was booting"
            elif isinstance(action, KillWorker):
                victim = fake.procs.get(action.slot)
                if victim is None:
                    continue  # no process (its start failed): the kill is a no-op
                event(f"kill: {action.reason.value}")
                if action.reason is KillReason.TIMEOUT:
                    head = sched.tasks[victim.fifo[0]]
                    assert head.timeout is not None
                    assert now >= victim.head_since + head.timeout, "timeout fired early"
                victim.exit_code = -9
            elif isinstance(action, RetireWorker):
                p = fake.procs[action.slot]
                event(f"retire: {sched.slots[action.slot].kill}")
                assert not p.fifo and not p.booting
                if not p.asked:
                    p.exit_code = 0
            elif isinstance(action, ReadMemory):
                out += [Memory(s, fake.rss_of(s)) for s in action.slots]
        return out

    # ------------------------------------------------------------------ checks

    def check_dispatch(self, actions: list[Action]) -> None:
        """What a tick hands out precedes, in heap order, everything still
        pending; each batch is in heap order."""
        sent = [r for a in actions if isinstance(a, SendTasks) for r in a.tasks]
        if not sent:
            return
        assert not self.stop_fired, "tasks dispatched after the stop deadline"
        for a in actions:
            if isinstance(a, SendTasks):
                keys = [order_key(r) for r in a.tasks]
                assert keys == sorted(keys)
        pending = [r for r in self.sched.tasks.values() if r.state is PENDING]
        if pending:
            worst_sent = max(map(order_key, sent))
            best_left = min(map(order_key, pending))
            assert worst_sent < best_left, f"sent {worst_sent} while {best_left} waits"

    def collect(self, finals_before: int) -> None:
        """Empty the outboxes as the shell does, checking each entry."""
        sched, now = self.sched, self.now
        statuses, sched.statuses = sched.statuses, []
        settlements, sched.settlements = sched.settlements, []
        for status in statuses:
            tid, state = status.task_id, status.state
            assert tid not in self.final, f"task {tid} moved after it was final: {status}"
            assert 0 <= status.attempts <= status.max_retries + 1
            prev = self.last_status.get(tid)
            if prev is RETRYING and state is PENDING:
                assert now >= self.retry_due[tid], "retry released before its due time"
                event("retry released from the delayed heap")
            if prev is SCHEDULED and state is PENDING:
                assert now >= self.due[tid], "scheduled task released before its due time"
                event("scheduled task came due")
            if state is RETRYING:
                rec = sched.tasks[tid]
                self.retry_due[tid] = now + rec.policy.delay(status.attempts, rand)
            if state is RUNNING:
                assert tid not in self.cancel_asked, f"task {tid} ran again after cancel()"
                assert not self.stop_fired, f"task {tid} started after the stop deadline"
            if state.is_final:
                self.final[tid] = state
            self.last_status[tid] = state
        for fut, kind, value in settlements:
            tid = next(t for t, f in self.futures.items() if f is fut)
            self.settled[tid] += 1
            assert self.settled[tid] == 1, f"task {tid}'s future settled twice"
            state = sched.tasks[tid].state
            expected = {COMPLETED: (OK,), FAILED: (ERROR,), CANCELLED: (CANCEL, ERROR)}[state]
            assert kind in expected, (tid, state, kind)
            deliver(fut, kind, value)
        if self.config.max_pending is not None:
            assert sched.space_freed == (len(self.final) > finals_before)
            sched.space_freed = False

    def check(self) -> None:
        """Every invariant of the core, after a step."""
        sched, now, fake = self.sched, self.now, self.fake
        tasks = sched.tasks
        by_state: dict[TaskState, set[int]] = {s: set() for s in TaskState}
        for tid, rec in tasks.items():
            by_state[rec.state].add(tid)
            assert 0 <= rec.attempts <= rec.policy.max_retries + 1
            errors = rec.errors or []
            assert [e.attempt for e in errors] == list(range(1, len(errors) + 1))
            if rec.state in (RUNNING, COMPLETED):
                assert len(errors) == rec.attempts - 1
            elif rec.state is CANCELLED:
                assert rec.attempts - 1 <= len(errors) <= rec.attempts
            else:
                assert len(errors) == rec.attempts
            if rec.state is not RUNNING:
                assert rec.slot == -1
            # What observers were last told is the truth.
            assert self.last_status.get(tid) is rec.state, (tid, rec.state)
            if rec.state.is_final:
                assert self.final.get(tid) is rec.state
            fut = self.futures.get(tid)
            if fut is not None and rec.state.is_final:
                assert self.settled[tid] == 1 or fut.cancelled()
        # The tally adds up, and counts the records (none is evicted here).
        tally = sched.tally
        assert sum(tally.by_state) == tally.submitted == len(tasks)
        assert [len(by_state[s]) for s in TaskState] == tally.by_state
        # Not by enumerating states: more may come (dependencies' ``waiting``).
        unfinished = {t for t, rec in tasks.items() if not rec.state.is_final}
        assert sched.is_idle() == (not unfinished)
        # PENDING: in the ready heap, once; RETRYING and SCHEDULED: in the
        # delayed heap, once. A SCHEDULED record never was in the ready heap.
        live = [e[1] for e in sched.heap._heap if tasks[e[1]].state is PENDING]
        assert len(live) == len(set(live)) and set(live) == by_state[PENDING]
        assert sched.heap.live == len(by_state[PENDING])
        assert not any(tasks[e[1]].state is SCHEDULED for e in sched.heap._heap)
        waiting = (RETRYING, SCHEDULED)
        delayed = [e[2].task_id for e in sched.delayed._heap if e[2].state in waiting]
        assert len(delayed) == len(set(delayed))
        assert set(delayed) == by_state[RETRYING] | by_state[SCHEDULED]
        for tid in by_state[RETRYING]:
            assert self.retry_due[tid] > now, f"task {tid} overdue in the delayed heap"
        # SCHEDULED: not due yet (this step's tick would have released it), and
        # the shell is woken no later than the first one comes due.
        for tid in by_state[SCHEDULED]:
            assert tasks[tid].due == self.due[tid] > now, f"task {tid} overdue: {self.due[tid]}"
        if by_state[SCHEDULED]:
            first = min(self.due[t] for t in by_state[SCHEDULED])
            due = sched.next_deadline(now)
            assert due is not None and due <= first, f"next_deadline {due}, first due {first}"
        # RUNNING: in exactly one slot's inflight; slots agree with the transport.
        held: set[int] = set()
        for slot in sched.slots:
            p = fake.procs.get(slot.index)
            assert (slot.state is STOPPED) == (p is None), (slot.index, slot.state, p)
            if slot.inflight:
                assert slot.state in (READY, STOPPING)
            for rec in slot.inflight:
                assert rec.state is RUNNING and rec.slot == slot.index
                assert rec.task_id not in held
                held.add(rec.task_id)
            if p is None:
                continue
            assert (slot.state is STARTING) == (p.booting and not p.asked)
            assert (slot.state is STOPPING) == p.asked
            if sched.broken is None:  # a break fails what a worker holds at once
                assert list(p.fifo) == [r.task_id for r in slot.inflight]
            if slot.state is READY and slot.inflight:
                head = slot.inflight[0]
                if head.timeout:
                    assert slot.deadline == p.head_since + head.timeout
                    assert slot.deadline > now, "a due timeout did not fire"
                else:
                    assert slot.deadline is None
        assert held == by_state[RUNNING]
        assert not held & by_state[SCHEDULED]
        # A broken pool fails everything that was not final.
        if sched.broken is not None:
            assert not unfinished
            assert all(tasks[t].state is FAILED for t in self.doomed_by_break)
        # Work-conserving: no idle worker while a task waits; workers start for it.
        if by_state[PENDING] and sched.broken is None:
            assert not any(s.serving and not s.inflight for s in sched.slots)
            empty = [s for s in sched.slots if s.state is STOPPED and s.respawn_at is None]
            booting = sum(s.state is STARTING for s in sched.slots)
            assert not empty or booting >= len(by_state[PENDING])
        # Nothing overdue is left after a tick, else the shell would spin (it
        # leaves its loop once finished_stopping()).
        if not sched.finished_stopping():
            due = sched.next_deadline(now)
            assert due is None or due > now, f"next_deadline {due} <= now {now}"

    # ------------------------------------------------------------------ commands

    def new_record(
        self,
        priority: int,
        retries: int,
        backoff: float,
        timeout: float | None,
        with_future: bool,
        slow: bool,
        delay: float | None = None,
    ) -> _TaskRecord:
        tid = self.next_id
        self.next_id += 1
        fut: Future[Any] | None = Future() if with_future else None
        if fut is not None:
            self.futures[tid] = fut
        policy = RetryPolicy(max_retries=retries, backoff_base=backoff, jitter=0.1)
        payload: tuple[bytes, list[Any]] = (b"slow" if slow else b"fast", [])
        rec = _TaskRecord(tid, f"t{tid}", priority, payload, policy, timeout, self.now, fut)
        self.last_status[tid] = PENDING
        if delay is not None:
            due = self.due[tid] = self.now + delay
            rec.schedule(due, due)  # wall clock = fake clock (wall_offset 0)
            self.last_status[tid] = SCHEDULED
        return rec

    task = st.tuples(
        st.integers(-2, 2),  # priority
        st.integers(0, 3),  # max_retries
        st.sampled_from([0.0, 0.1, 0.5]),  # backoff_base
        st.sampled_from([None, 0.2, 1.0]),  # timeout
        st.booleans(),  # with a future
        st.booleans(),  # slow callable
    )

    @precondition(lambda self: not self.sched.stopping and len(self.sched.tasks) < 40)
    @rule(spec=task, delay=st.sampled_from([None, None, 0.0, 0.05, 0.1, 0.5, 3.0, 30.0]))
    def submit(
        self, spec: tuple[int, int, float, float | None, bool, bool], delay: float | None
    ) -> None:
        """One task, due now or after ``delay`` (``map``'s ``admit_many`` takes
        no delays). 0.1 and 0.5 land exactly on ``advance`` steps: due == now."""
        self.sched.admit(self.new_record(*spec, delay=delay))
        self.step()

    @precondition(lambda self: not self.sched.stopping and len(self.sched.tasks) < 40)
    @rule(specs=st.lists(task, min_size=1, max_size=6))
    def submit_many(self, specs: list[tuple[int, int, float, float | None, bool, bool]]) -> None:
        self.sched.admit_many([self.new_record(*s) for s in specs])
        self.step()

    @precondition(lambda self: bool(self.sched.tasks))
    @rule(pick=st.integers(0, 1000))
    def cancel(self, pick: int) -> None:
        ids = sorted(self.sched.tasks)
        tid = ids[pick % len(ids)]
        rec = self.sched.tasks[tid]
        if not rec.state.is_final:
            event(f"cancel a {rec.state.value} task")
            self.cancel_asked.add(tid)
        self.sched.cancel(tid, self.now)
        self.step()
        assert rec.state not in (SCHEDULED, PENDING, RETRYING)

    @precondition(lambda self: bool(self.futures))
    @rule(pick=st.integers(0, 1000))
    def cancel_future(self, pick: int) -> None:
        """``Future.cancel()`` by its owner: the core learns of it at dispatch."""
        ids = sorted(self.futures)
        if self.futures[ids[pick % len(ids)]].cancel():
            event("future cancelled by its owner")
        self.step()

    @precondition(lambda self: len(self.sched.tasks) >= 4)  # else the rest is idle
    @rule(
        cancel_pending=st.booleans(),
        grace=st.sampled_from([None, None, 0.0, 0.3, 2.0]),
    )
    def stop(self, cancel_pending: bool, grace: float | None) -> None:
        deadline = None if grace is None else self.now + grace
        if deadline is not None:
            old = self.stop_deadline
            self.stop_deadline = deadline if old is None else min(old, deadline)
        if self.sched.tally.count(SCHEDULED):
            event(f"stop(cancel_pending={cancel_pending}) with scheduled tasks")
        self.sched.stop(cancel_pending=cancel_pending, deadline=deadline, now=self.now)
        self.step()
        if self.sched.cancel_pending:
            tally = self.sched.tally
            assert not self.sched.heap.live and not tally.count(RETRYING)
            assert not tally.count(SCHEDULED)

    # ------------------------------------------------------------------ the clock

    @rule(dt=st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.step()

    @precondition(lambda self: self.sched.next_deadline(self.now) is not None)
    @rule()
    def advance_to_next_deadline(self) -> None:
        due = self.sched.next_deadline(self.now)
        assert due is not None
        self.now = max(self.now, due)
        self.step()

    # ------------------------------------------------------------------ the transport

    def pick(self, pick: int, ok: Iterable[int]) -> int:
        slots = sorted(ok)
        return slots[pick % len(slots)]

    def booting(self, *, asked: bool | None = None) -> list[int]:
        return [
            s
            for s, p in self.fake.procs.items()
            if p.booting and (asked is None or p.asked == asked)
        ]

    def running(self) -> list[int]:
        return [s for s, p in self.fake.procs.items() if p.fifo]

    def up(self) -> list[int]:
        return [s for s, p in self.fake.procs.items() if not p.booting]

    def asked(self) -> list[int]:
        return [s for s, p in self.fake.procs.items() if p.asked]

    @precondition(lambda self: bool(self.booting()))
    @rule(
        pick=st.integers(0, 100),
        outcome=st.sampled_from(["hello"] * 8 + ["sigkill", "sigsegv", "init", "exit", "wrong"]),
    )
    def boot(self, pick: int, outcome: str) -> None:
        """A booting worker says hello (possibly racing a kill), or fails: killed
        from outside (a signal), or deterministically (its initializer raised,
        it exited, it speaks another protocol)."""
        slot = self.pick(pick, self.booting())
        p = self.fake.procs[slot]
        if p.asked and outcome != "hello":
            outcome = "sigkill"  # our own kill lands
        if outcome == "hello":
            p.booting = False
            self.step([Ready(slot)])
        elif outcome == "wrong":
            p.booting = False
            self.step([Ready(slot, "worker speaks protocol 2, expected 3")])
        elif outcome == "init":
            self.step([InitFailed(slot, "ValueError: bad init"), Exited(slot, 3)])
        else:
            self.step([Exited(slot, {"sigkill": -9, "sigsegv": -11, "exit": 1}[outcome])])

    @precondition(lambda self: not self.fake.start_failures)
    @rule()
    def arm_start_failure(self) -> None:
        """The next worker cannot even be started."""
        self.fake.start_failures += 1

    @precondition(lambda self: bool(self.running()))
    @rule(pick=st.integers(0, 100), outcome=st.sampled_from(["ok", "ok", "error", "exit"]))
    def result(self, pick: int, outcome: str) -> None:
        """The head task on a worker ends (even on a worker being killed: the
        result can come before the kill lands)."""
        slot = self.pick(pick, self.running())
        p = self.fake.procs[slot]
        tid = p.fifo.popleft()
        payload = self.sched.tasks[tid].payload  # None once final (a break failed it)
        run = RUN_TIME[payload[0]] if payload is not None else 0.001
        p.head_since = self.now
        value: Any
        if outcome == "ok":
            ok, value, tb = True, f"r{tid}", ""
        elif outcome == "error":
            ok, value, tb = False, ValueError(f"task {tid} failed"), "Traceback: ValueError"
        else:  # a BaseException: final whatever the retries
            ok, value, tb = False, SystemExit(2), "Traceback: SystemExit"
        events: list[Event] = [Done(slot, tid, ok, value, tb, self.now - run, self.now)]
        if self.config.limits.memory_soft is not None:
            events.append(Memory(slot, self.fake.rss_of(slot)))  # as Engine._loop does
        self.step(events)

    @precondition(lambda self: bool(self.up()))
    @rule(pick=st.integers(0, 100), code=st.sampled_from([-11, -9, 1]))
    def crash(self, pick: int, code: int) -> None:
        """A worker dies unasked (segfault, OOM killer, os._exit)."""
        slot = self.pick(pick, self.up())
        if self.fake.procs[slot].fifo:
            event("worker crashed while running")
        self.step([Exited(slot, code)])

    @precondition(lambda self: bool(self.asked()))
    @rule(pick=st.integers(0, 100))
    def exits_as_asked(self, pick: int) -> None:
        slot = self.pick(pick, self.asked())
        code = self.fake.procs[slot].exit_code
        self.step([Exited(slot, code)])

    @rule(rss=st.sampled_from([50, SOFT + 1, HARD + 1]))
    def memory_use(self, rss: int) -> None:
        """What the next memory readings will say."""
        self.fake.rss = rss

    # ------------------------------------------------------------------ the end

    def answer_one(self) -> bool:
        """Answer one outstanding action, as a well-behaved worker would."""
        for slot, p in sorted(self.fake.procs.items()):
            if p.asked:
                self.step([Exited(slot, p.exit_code)])
                return True
        for slot, p in sorted(self.fake.procs.items()):
            if p.booting:
                p.booting = False
                self.step([Ready(slot)])
                return True
        for slot, p in sorted(self.fake.procs.items()):
            if p.fifo:
                tid = p.fifo.popleft()
                p.head_since = self.now
                self.step([Done(slot, tid, True, f"r{tid}", "", self.now, self.now)])
                return True
        return False

    def teardown(self) -> None:
        if not hasattr(self, "sched"):
            return
        sched = self.sched
        if self.drain:
            self.fake.rss = 50  # well-behaved from here on: no memory kills
            if any(r.state is SCHEDULED for r in sched.tasks.values()):
                event("teardown waits for scheduled tasks")
        sched.stop(cancel_pending=not self.drain, deadline=None, now=self.now)
        self.step()
        for _ in range(1000):
            if self.answer_one():
                continue
            if sched.finished_stopping():
                break
            due = sched.next_deadline(self.now)
            assert due is not None, "stopping, with nothing left to wait for"
            self.now = max(self.now, due)
            self.step()
        assert sched.finished_stopping()
        assert sched.is_idle()
        assert all(rec.state.is_final for rec in sched.tasks.values())
        for tid, fut in self.futures.items():
            state = sched.tasks[tid].state
            if state is COMPLETED:
                assert fut.result(timeout=0) == f"r{tid}"
            elif fut.cancelled():
                pass  # by its owner (the core may learn of it only at dispatch)
            elif state is CANCELLED:
                assert isinstance(fut.exception(timeout=0), TaskCancelledError)
            else:
                assert fut.exception(timeout=0) is not None
        # A cancelled task ends cancelled, unless its result beat the kill (or
        # the pool broke and failed everything).
        for tid in self.cancel_asked:
            state = sched.tasks[tid].state
            assert state in (CANCELLED, COMPLETED) or sched.broken is not None, (tid, state)
        # stop(cancel_pending=False) waits for every task, scheduled ones
        # included: only a cancel ends one cancelled (unless a stop deadline or
        # an earlier stop(cancel_pending=True) came).
        if self.drain and not sched.cancel_pending and sched.broken is None:
            for tid, rec in sched.tasks.items():
                if rec.state is CANCELLED:
                    fut = self.futures.get(tid)
                    assert tid in self.cancel_asked or (fut is not None and fut.cancelled()), tid
                else:
                    assert rec.attempts >= 1, (tid, rec.state)
        # Engine._shutdown_workers: every worker leaves; nothing starts again.
        sched.shutdown()
        actions = sched.take_actions()
        assert not any(isinstance(a, (StartWorker, SendTasks)) for a in actions)
        self.carry_out(actions)
        for slot, p in sorted(self.fake.procs.items()):
            assert p.asked, f"slot {slot} was not told to leave"
            sched.feed(Exited(slot, p.exit_code), self.now)
        assert not any(isinstance(a, (StartWorker, SendTasks)) for a in sched.take_actions())
        assert all(s.state is STOPPED and not s.inflight for s in sched.slots)


SchedulerMachine.TestCase.settings = settings(
    max_examples=1000,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSchedulerMachine = SchedulerMachine.TestCase
# A thousand derandomized runs of pure CPU: ~20 s here on a quiet box, over
# the suite's 60 s hang guard when the machine is loaded three times over.
# The guard is for hangs, not speed.
TestSchedulerMachine = pytest.mark.timeout(180)(TestSchedulerMachine)


# ---------------------------------------------------------------------- examples


class Shell:
    """The shell's loop by hand, for example tests: feed, tick, take actions."""

    def __init__(self, workers: int = 1, **options: Any) -> None:
        config = QueueConfig(num_workers=workers, retain_finished=10**6, **options)
        self.sched = Scheduler(config, now=0.0, rand=rand)
        self.next_id = 1

    def submit(
        self,
        priority: int = 0,
        *,
        retries: int = 0,
        backoff: float = 0.0,
        timeout: float | None = None,
        now: float = 0.0,
    ) -> _TaskRecord:
        policy = RetryPolicy(max_retries=retries, backoff_base=backoff)
        rec = _TaskRecord(
            self.next_id, f"t{self.next_id}", priority, (b"f", []), policy, timeout, now, None
        )
        self.next_id += 1
        self.sched.admit(rec)
        return rec

    def turn(self, now: float, *events: Event) -> list[Action]:
        for ev in events:
            self.sched.feed(ev, now)
        self.sched.tick(now)
        return self.sched.take_actions()

    def boot(self, slot: int, now: float = 0.0) -> list[Action]:
        return self.turn(now, Started(slot, 100 + slot), Ready(slot))

    def done(self, slot: int, rec: _TaskRecord, now: float, ok: bool = True) -> list[Action]:
        value = f"r{rec.task_id}" if ok else ValueError("boom")
        return self.turn(now, Done(slot, rec.task_id, ok, value, "", now, now))


def sent(actions: list[Action]) -> list[int]:
    return [r.task_id for a in actions if isinstance(a, SendTasks) for r in a.tasks]


def test_one_worker_runs_priority_then_fifo() -> None:
    shell = Shell(prefetch=0)
    for priority in (0, 2, 1, 2, 0, 1):
        shell.submit(priority)
    assert shell.turn(0.0) == [StartWorker(0)]
    order = sent(shell.boot(0))
    for t in range(1, 7):
        if t == 2:
            shell.submit(5, now=t)  # arrives late: overtakes what waits, not what runs
        head = shell.sched.tasks[order[-1]]
        order += sent(shell.done(0, head, float(t)))
    assert order == [2, 4, 7, 3, 6, 1, 5]


def test_a_retry_waits_out_its_backoff_in_the_delayed_heap() -> None:
    shell = Shell()
    rec = shell.submit(retries=2, backoff=0.5)
    shell.turn(0.0)
    assert sent(shell.boot(0)) == [1]
    assert sent(shell.done(0, rec, 1.0, ok=False)) == []
    assert rec.state is RETRYING and rec.attempts == 1
    assert shell.sched.next_deadline(1.0) == 1.5  # backoff_base * 2**0, no jitter
    assert sent(shell.turn(1.49)) == [] and rec.state is RETRYING
    assert sent(shell.turn(1.5)) == [1]
    assert rec.state is RUNNING and rec.attempts == 2
    shell.done(0, rec, 2.0, ok=False)
    assert shell.sched.next_deadline(2.0) == 3.0  # the second retry waits twice as long
    assert sent(shell.turn(3.0)) == [1]
    shell.done(0, rec, 4.0, ok=False)
    assert rec.state is FAILED and rec.attempts == 3
    assert [e.attempt for e in rec.errors or []] == [1, 2, 3]


def test_a_timeout_kills_the_worker_and_the_attempt_ends_with_task_timeout_error() -> None:
    shell = Shell()
    a = shell.submit(retries=1, timeout=1.0)
    shell.turn(0.0)
    assert sent(shell.boot(0, 0.0)) == [1]
    assert shell.sched.next_deadline(0.0) == 1.0
    assert shell.turn(0.999) == []
    assert shell.turn(1.0) == [KillWorker(0, KillReason.TIMEOUT)]
    assert a.state is RUNNING  # until the worker is gone
    assert shell.turn(1.01, Exited(0, -9)) == [StartWorker(0)]
    assert a.state is PENDING and a.attempts == 1  # retried, no backoff
    assert a.errors is not None and a.errors[0].exc_type.endswith(".TaskTimeoutError")
    assert a.errors[0].exitcode == -9
    assert sent(shell.boot(0, 1.2)) == [1]
    assert shell.sched.next_deadline(1.2) == 2.2  # a fresh clock for the new attempt


def test_the_timeout_clock_starts_when_the_task_in_front_finishes() -> None:
    shell = Shell(prefetch=1)
    a, b = shell.submit(timeout=1.0), shell.submit(timeout=1.0)
    shell.turn(0.0)
    assert sent(shell.boot(0)) == [1, 2]
    shell.done(0, a, 0.8)
    assert shell.turn(1.5) == []  # b has run 0.7 s, though it was sent 1.5 s ago
    assert shell.turn(1.8) == [KillWorker(0, KillReason.TIMEOUT)]
    assert b.state is RUNNING


def test_five_startup_kills_by_signal_in_a_row_do_not_break_the_pool() -> None:
    shell = Shell()  # the default RestartPolicy
    rec = shell.submit()
    assert shell.turn(0.0) == [StartWorker(0)]
    for n in range(5):
        now = 0.1 * (n + 1)
        assert shell.turn(now, Started(0, 100 + n), Exited(0, -9)) == [StartWorker(0)]
        assert shell.sched.broken is None
    assert sent(shell.boot(0, 1.0)) == [rec.task_id]
    assert shell.sched.guard.total_deaths == 5


def test_startup_kills_past_the_immediate_restarts_back_off() -> None:
    shell = Shell(restart=RestartPolicy(immediate=1, backoff_base=0.5, intensity=5))
    shell.submit()
    shell.turn(0.0)
    assert shell.turn(0.0, Started(0, 100), Exited(0, -9)) == [StartWorker(0)]
    assert shell.turn(0.1, Started(0, 101), Exited(0, -9)) == []
    assert shell.sched.slots[0].respawn_at == 0.6
    assert shell.sched.next_deadline(0.1) == 0.6
    assert shell.turn(0.59) == []
    assert shell.turn(0.6) == [StartWorker(0)]
    assert shell.turn(0.7, Started(0, 102), Exited(0, -9)) == []
    assert shell.sched.slots[0].respawn_at == 0.7 + 1.0  # doubled
    assert shell.sched.broken is None


def test_three_initializer_failures_in_a_row_break_the_pool() -> None:
    shell = Shell()
    rec = shell.submit()
    fut: Future[Any] = Future()
    rec.future = fut
    shell.turn(0.0)
    for n in range(3):
        actions = shell.turn(0.1 * n, Started(0, 100 + n), InitFailed(0, "E"), Exited(0, 3))
        if n < 2:
            assert actions == [StartWorker(0)] and shell.sched.broken is None
    assert shell.sched.broken is not None and "3 workers in a row" in str(shell.sched.broken)
    assert rec.state is FAILED
    assert shell.sched.settlements == [(fut, ERROR, shell.sched.broken)]
    assert shell.sched.finished_stopping() and shell.sched.is_idle()


# ------------------------------------------- regressions (found by the machine)


def _broken_while_slot_0_runs(timeout: float | None) -> tuple[Shell, _TaskRecord]:
    """Slot 0 runs ``a``; slot 1's initializer fails three times: the pool
    breaks, slot 0 is told to die, and its exit has not been reported yet."""
    shell = Shell(workers=2)
    a = shell.submit(timeout=timeout)
    shell.submit()
    assert shell.turn(0.0) == [StartWorker(0), StartWorker(1)]
    assert sent(shell.boot(0)) == [1]
    for n in range(3):
        shell.turn(0.1, Started(1, 200 + n), InitFailed(1, "E"), Exited(1, 3))
    assert shell.sched.broken is not None and a.state is FAILED
    return shell, a


def test_result_racing_a_break() -> None:
    shell, a = _broken_while_slot_0_runs(None)
    shell.done(0, a, 0.2)  # the result was on its way when the kill came
    assert a.state is FAILED  # the future was already failed by the break


def test_timeout_due_after_a_break() -> None:
    shell, _ = _broken_while_slot_0_runs(1.0)
    assert shell.sched.next_deadline(0.1) is None  # nothing left to time
    shell.turn(1.0)  # the killed worker is slow to go


def test_cancel_of_a_task_whose_worker_is_being_killed() -> None:
    shell = Shell(prefetch=1)
    a, b = shell.submit(timeout=1.0), shell.submit(retries=1)
    shell.turn(0.0)
    assert sent(shell.boot(0)) == [1, 2]
    assert shell.turn(1.0) == [KillWorker(0, KillReason.TIMEOUT)]
    shell.sched.cancel(b.task_id, 1.0)  # b is prefetched behind the timed-out a
    shell.turn(1.0, Exited(0, -9))
    assert a.state is FAILED
    assert b.state is CANCELLED  # was requeued, and ran again


def test_failure_racing_a_cancel_kill_is_not_retried() -> None:
    shell = Shell()
    a = shell.submit(retries=1)
    shell.turn(0.0)
    shell.boot(0)
    shell.sched.cancel(a.task_id, 1.0)
    assert shell.turn(1.0) == [KillWorker(0, KillReason.CANCEL)]
    shell.done(0, a, 1.0, ok=False)  # its error was on its way
    shell.turn(1.1, Exited(0, -9))
    assert a.state is CANCELLED  # was retried
    assert a.errors is not None and len(a.errors) == 1


def test_stop_deadline_while_a_timeout_kill_is_pending() -> None:
    shell = Shell(prefetch=1)
    a, b = shell.submit(retries=1, timeout=1.0), shell.submit()
    shell.turn(0.0)
    assert sent(shell.boot(0)) == [1, 2]
    assert shell.turn(1.0) == [KillWorker(0, KillReason.TIMEOUT)]
    shell.sched.stop(cancel_pending=False, deadline=1.0, now=1.0)
    shell.turn(1.0)
    shell.turn(1.1, Exited(0, -9))
    # "timeout=s ... then kills their workers (those tasks end cancelled)"
    assert b.state is CANCELLED  # was requeued, and ran after the deadline
    assert a.state.is_final
    assert shell.sched.finished_stopping()


def test_failure_racing_the_stop_deadline_kill_is_not_retried() -> None:
    shell = Shell()
    a = shell.submit(retries=1)
    shell.turn(0.0)
    shell.boot(0)
    shell.sched.stop(cancel_pending=False, deadline=1.0, now=0.5)
    assert shell.turn(1.0) == [KillWorker(0, KillReason.STOP)]
    shell.done(0, a, 1.0, ok=False)  # its error was on its way
    actions = shell.turn(1.1, Exited(0, -9))
    assert a.state is FAILED  # was retried: a worker started for it
    assert actions == [] and shell.sched.finished_stopping()


def test_idle_worker_while_stopping_does_not_spin_the_loop() -> None:
    shell = Shell(workers=2, limits=WorkerLimits(idle_timeout=0.5))
    shell.submit()
    b = shell.submit()
    shell.turn(0.0)
    shell.boot(0)
    shell.boot(1)
    shell.done(1, b, 0.0)
    shell.sched.stop(cancel_pending=False, deadline=None, now=0.0)
    shell.turn(0.5)
    assert not shell.sched.finished_stopping()  # slot 0 still runs
    due = shell.sched.next_deadline(0.5)
    assert due is None or due > 0.5  # was 0.5: the shell selected with timeout 0


def test_requeue_is_published() -> None:
    shell = Shell(prefetch=1)
    shell.sched.observed = True
    shell.submit()
    b = shell.submit()
    shell.turn(0.0)
    shell.boot(0)
    shell.sched.statuses.clear()
    shell.turn(1.0, Exited(0, -11))  # a crashes; b never started
    assert b.state is PENDING
    assert [s.state for s in shell.sched.statuses if s.task_id == b.task_id] == [PENDING]


# ------------------------------------------- found by the machine, not fixed yet


def test_a_task_coming_due_does_not_keep_another_idle_worker_overdue() -> None:
    """Two workers idle since 0.0 (idle_timeout 0.5); a delayed task due at 0.5.
    At 0.5, ``_fire_timers`` moves it to the heap *before* its idle pass, which
    then skips retiring (the heap is not empty); dispatch gives the task to one
    worker and the other is left past its idle deadline: ``next_deadline(0.5)``
    is 0.5, so the shell turns once more with timeout 0 to retire it. A retry
    whose backoff ends then does the same. (Machine:
    ``state.setup(workers=3, ..., idle=0.5, immediate=0, intensity=1, ...)``.)"""
    shell = Shell(workers=2, limits=WorkerLimits(idle_timeout=0.5))
    a, b = shell.submit(), shell.submit()
    shell.turn(0.0)
    assert sent(shell.boot(0)) == [1] and sent(shell.boot(1)) == [2]
    shell.done(0, a, 0.0)
    shell.done(1, b, 0.0)
    rec = _TaskRecord(3, "t3", 0, (b"f", []), RetryPolicy(), None, 0.0, None)
    rec.schedule(0.5, 0.5)
    shell.sched.admit(rec)
    assert sent(shell.turn(0.5)) == [3]
    due = shell.sched.next_deadline(0.5)
    assert due is None or due > 0.5, f"next_deadline {due} at 0.5: an idle worker is overdue"


def test_a_batch_that_never_reached_its_worker_is_not_charged_its_death() -> None:
    """An idle worker killed just as it was handed work: the transport says
    the batch was never read (``Exited.unsent``), so its tasks go back to the
    heap uncharged; a task that was read and then died with its worker is
    charged as ever."""
    shell = Shell(prefetch=0)
    first = shell.submit()
    shell.turn(0.0)
    assert sent(shell.boot(0)) == [first.task_id]
    shell.turn(1.0, Exited(0, -9, frozenset({first.task_id})))
    assert first.state is TaskState.PENDING and first.attempts == 0 and not first.errors
    assert sent(shell.boot(0, 2.0)) == [first.task_id]  # runs on the replacement
    shell.turn(3.0, Exited(0, -9))  # read, then died: the crash is its own
    assert first.state is TaskState.FAILED and first.attempts == 1
