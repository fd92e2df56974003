"""The scheduler: every decision about tasks and worker slots, and nothing else.

It is pure: no OS calls, no clock, no threads. The runtime shell
(``procqueue._runtime.engine``) hands it ``now`` (a monotonic reading) with
every call, feeds it events (:mod:`.events`) and carries out the actions it
leaves in :attr:`Scheduler.actions`; futures to settle and statuses to publish
wait in :attr:`settlements` and :attr:`statuses` until the shell delivers them
outside its lock. :meth:`next_deadline` says when it wants ``tick`` again.

Not thread-safe: the shell calls it under its lock. The front doors call only
:meth:`admit` (under the same lock); everything else runs in the coordinator.
"""

from __future__ import annotations

import logging

from ..errors import InvalidArgumentError, TaskCancelledError, TaskTimeoutError
from .events import (
    OK,
    Done,
    Event,
    Exited,
    InitFailed,
    Memory,
    Progressed,
    ReadMemory,
    Ready,
    SendTasks,
    Started,
)
from .records import TaskProgress, TaskState, _TaskRecord
from .schedules import ScheduleEntry
from .slots import KillReason, Slot, WorkerState
from .supervisor import Supervision

_log = logging.getLogger("procqueue.coordinator")

#: Automatic prefetch: seconds of queued work a worker may hold beyond the task
#: it runs, and a hard cap on the count.
PREFETCH_BUDGET = 0.002
MAX_PREFETCH = 256
#: Seconds between looks at the wall clock while a cron schedule waits: a
#: clock step or a suspension moves its next tick in monotonic time.
WALL_RECHECK = 30.0

_PENDING, _RUNNING, _RETRYING = TaskState.PENDING, TaskState.RUNNING, TaskState.RETRYING
_SCHEDULED, _WAITING = TaskState.SCHEDULED, TaskState.WAITING
_COMPLETED, _CANCELLED = TaskState.COMPLETED, TaskState.CANCELLED
_STARTING, _READY, _STOPPED = WorkerState.STARTING, WorkerState.READY, WorkerState.STOPPED


def auto_prefetch(mean: float) -> int:
    """Tasks to queue behind the running one for a callable whose mean run time
    is ``mean``: enough for ``PREFETCH_BUDGET``, at most ``MAX_PREFETCH``; 0
    for tasks over the budget (a task queued behind a long one could not go to
    a worker that frees up first)."""
    return min(MAX_PREFETCH, int(PREFETCH_BUDGET / max(mean, 1e-7)))


class Scheduler(Supervision):
    """Admission, commands, events, timers and dispatch: the whole scheduler
    (the layers below hold its state, outcomes and slot supervision)."""

    # ------------------------------------------------------------------ admission

    def admit(self, rec: _TaskRecord, now: float = 0.0) -> None:
        """A new task, born ``pending``, ``scheduled`` or, with upstream tasks,
        ``waiting`` (any thread, under the engine lock). Raises, admitting
        nothing, for an unknown upstream task."""
        if rec.upstream:
            self._link(rec, now)
            return
        self.tasks[rec.task_id] = rec
        if rec.due is None:
            self.tally.admit()
            self.heap.push(rec)
        else:
            self.tally.admit(1, _SCHEDULED)
            self.delayed.push(rec.due, rec)
        if self.observed:
            self.statuses.append(rec.snapshot())

    def admit_many(self, records: list[_TaskRecord]) -> None:
        tasks, push = self.tasks, self.heap.push
        for rec in records:
            tasks[rec.task_id] = rec
            push(rec)
        self.tally.admit(len(records))
        if self.observed:
            self.statuses += [r.snapshot() for r in records]

    # ------------------------------------------------------------------ schedules

    def add_schedule(self, entry: ScheduleEntry) -> None:
        if entry.name in self.schedules:
            raise InvalidArgumentError(f"a schedule named {entry.name!r} already exists")
        self.schedules[entry.name] = entry

    def run_now(self, entry: ScheduleEntry, now: float) -> int:
        """Fire one run of ``entry`` at once (its ticks are unchanged). An
        explicit request: ``overlap="skip"`` does not apply, ``"queue"`` does."""
        task_id = self._fire(entry, entry.next_tick, now, forced=True)
        assert task_id is not None
        return task_id

    def _fire_schedules(self, now: float) -> None:
        if self.broken is not None:
            return
        off = self.wall_offset
        for entry in list(self.schedules.values()):
            if entry.paused:
                continue
            clock = entry.clock(now, off)
            if entry.next_tick <= clock:
                for tick in entry.take_due(clock).run:
                    self._fire(entry, tick, now)

    def _fire(
        self, entry: ScheduleEntry, tick: float, now: float, forced: bool = False
    ) -> int | None:
        """One run of ``entry`` for ``tick``, unless ``overlap`` says no."""
        prev = self.tasks.get(entry.last_id) if entry.last_id is not None else None
        busy = prev is not None and not prev.state.is_final
        after = None
        if busy:
            assert prev is not None
            if entry.overlap == "skip" and not forced:
                entry.skipped_overlap += 1
                _log.warning(
                    "schedule %r: run skipped, the previous run (task %d) is still %s "
                    "(overlap='skip')",
                    entry.name,
                    prev.task_id,
                    prev.state.value,
                )
                return None
            if entry.overlap == "queue":
                after = prev.task_id
        rec = entry.make(entry.default_timeout(tick))
        rec.fired_by = entry.name
        if after is not None:  # overlap="queue": runs once the previous run has ended
            rec.upstream = (after,)
            rec.all_done = True
        self.admit(rec, now)
        entry.record_fired(rec.task_id)
        return int(rec.task_id)

    # ------------------------------------------------------------------ commands

    def cancel(self, task_id: int, now: float) -> None:
        rec = self.tasks.get(task_id)
        if rec is None or rec.state.is_final:
            return
        if rec.state is _PENDING:
            if rec.parked:
                assert rec.limit_key is not None
                self.keys.limiters[rec.limit_key].parked.remove(rec)
                rec.parked = False
                self.parked -= 1
            else:
                self.heap.discard(rec)
                lim = self.keys.limiters.get(rec.limit_key) if rec.limit_key else None
                if lim is not None:
                    lim.released.discard(rec.task_id)
            self._finish_cancelled(rec, now)
        elif rec.state is _RETRYING or rec.state is _SCHEDULED or rec.state is _WAITING:
            self._finish_cancelled(rec, now)
        elif rec.state is _RUNNING:
            slot = self.slots[rec.slot]
            _log.info("cancelling running task %d: killing worker %s", task_id, slot.pid)
            self._kill(slot, KillReason.CANCEL, rec)

    def stop(self, *, cancel_pending: bool, deadline: float | None, now: float) -> None:
        """Take no new work; finish (or, ``cancel_pending``, cancel) what is queued.
        ``deadline``: then kill what still runs (it ends cancelled)."""
        self.stopping = True
        self.schedules.clear()  # a stopping queue fires no more runs
        self.cancel_pending |= cancel_pending
        if deadline is not None:
            old = self.stop_deadline
            self.stop_deadline = deadline if old is None else min(old, deadline)
        if self.cancel_pending:
            self._cancel_queued(now)
        _log.debug("stopping (cancel_pending=%s)", self.cancel_pending)

    def shutdown(self) -> None:
        """The loop is over: every worker leaves (what one holds ends cancelled)."""
        self.stopping = True
        self.schedules.clear()
        for slot in self.slots:
            if slot.state is _READY and not slot.inflight:
                self._retire(slot, KillReason.SHUTDOWN)
            elif slot.state is _STARTING or slot.state is _READY:
                self._kill(slot, KillReason.SHUTDOWN)

    # ------------------------------------------------------------------ events

    def feed(self, event: Event, now: float) -> None:
        """Apply one event reported by the transport."""
        if isinstance(event, Done):
            self._on_done(event, now)
        elif isinstance(event, Exited):
            self._on_exit(event.slot, event.exitcode, now, event.unsent)
        elif isinstance(event, Started):
            self.slots[event.slot].pid = event.pid
        elif isinstance(event, Ready):
            self._on_ready(self.slots[event.slot], event.error, now)
        elif isinstance(event, InitFailed):
            self.slots[event.slot].init_error = event.detail
        elif isinstance(event, Memory):
            self._on_memory(self.slots[event.slot], event.rss)
        elif isinstance(event, Progressed):
            self._on_progress(event)
        else:
            self._on_start_failed(self.slots[event.slot], event.detail, now)

    def _on_progress(self, ev: Progressed) -> None:
        rec = self.tasks.get(ev.task_id)
        # Only from the slot running it: a late report of a killed attempt is old news.
        if rec is not None and rec.state is TaskState.RUNNING and rec.slot == ev.slot:
            rec.progress = TaskProgress(ev.done, ev.total, ev.message)
            self._emit(rec)
            if self.progress_watched:
                self.progress_reports.append((rec.task_id, rec.progress))

    def _on_done(self, ev: Done, now: float) -> None:
        slot = self.slots[ev.slot]
        inflight = slot.inflight
        if not inflight:
            return  # a late result of a task the pool's break already failed
        rec = inflight.popleft()
        if rec.task_id != ev.task_id:  # pragma: no cover - protocol violation
            raise RuntimeError(f"worker {slot.pid} answered {ev.task_id}, expected {rec.task_id}")
        rec.slot = -1
        slot.tasks_done += 1
        if inflight:
            head_timeout = inflight[0].timeout
            slot.deadline = now + head_timeout if head_timeout else None
        else:
            slot.deadline = None
            slot.idle_since = now
        tally = self.tally
        rec.started_at = ev.started
        rec.finished_at = ev.finished
        run = ev.finished - ev.started
        tally.run_samples.append(run)
        tally.samples_taken += 1
        tally.wait_samples.append(max(0.0, ev.started - rec.submitted_at))
        if rec.payload is not None:
            means = self._mean_run
            key = rec.payload[0]
            mean = means.get(key)
            if mean is None and len(means) >= 1024:
                means.clear()
            means[key] = run if mean is None else mean + 0.1 * (run - mean)
        if ev.ok:
            self._move(rec, _COMPLETED)
            rec.payload = None
            rec.outcome = ev.value
            tally.count_completion(now)
            if rec.future is not None:
                self.settlements.append((rec.future, OK, ev.value))
            self._bookkeep(rec, now, ev.sent)
        else:
            cancelled = rec.task_id in slot.cancelled
            self._attempt_failed(rec, ev.value, slot.pid, None, ev.tb, now, cancelled=cancelled)
        self._check_recycle(slot)

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Fire what is due at ``now``, then hand out work."""
        if self.schedules:
            self._fire_schedules(now)
        self._fire_timers(now)
        self._dispatch(now)
        self._retire_idle(now)

    def _retire_idle(self, now: float) -> None:
        """Idle workers past ``idle_timeout`` exit, while nothing waits. After
        dispatch: a task coming due must not keep another idle worker overdue."""
        limits = self.config.limits
        if limits.idle_timeout is None or self.heap.live or self.stopping:
            return
        for slot in self.slots:
            if (
                slot.state is _READY
                and not slot.inflight
                and now - slot.idle_since >= limits.idle_timeout
            ):
                _log.debug("worker %s idle; letting it exit", slot.pid)
                self._retire(slot, KillReason.IDLE)

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`tick` is next needed (``None``: only on an event)."""
        due = self.delayed.next_due()
        limits = self.config.limits
        # Idle workers retire only while nothing waits and we are not stopping
        # (as in _fire_timers): otherwise a past idle deadline would spin the loop.
        idle = None if self.heap.live or self.stopping else limits.idle_timeout
        busy = False
        for slot in self.slots:
            for t in (slot.deadline, slot.respawn_at):
                if t is not None and (due is None or t < due):
                    due = t
            if slot.state is _READY:
                if slot.inflight:
                    busy = True
                elif idle is not None:
                    t = slot.idle_since + idle
                    if due is None or t < due:
                        due = t
        if busy and limits.memory_hard is not None:
            t = self._next_memory_check
            if due is None or t < due:
                due = t
        if self.schedules and self.broken is None:
            off = self.wall_offset
            for entry in self.schedules.values():
                if entry.paused:
                    continue
                t4 = entry.deadline(now, off)
                if entry.trigger.wall:
                    t4 = min(t4, now + WALL_RECHECK)
                if due is None or t4 < due:
                    due = t4
        t2 = self.stop_deadline
        if t2 is not None and (due is None or t2 < due):
            due = t2
        for lim in self._blocked:
            t3 = lim.next_room(now)
            if t3 is not None and (due is None or t3 < due):
                due = t3
        return due

    def _fire_timers(self, now: float) -> None:
        if self._blocked:
            self._unpark(now)
        for rec in self.delayed.pop_due(now):
            self._move(rec, _PENDING)
            self.heap.push(rec)
            self._emit(rec)
        limits = self.config.limits
        for slot in self.slots:
            if slot.deadline is not None and slot.deadline <= now:
                slot.deadline = None
                rec = slot.inflight[0]
                _log.warning(
                    "task %d (%s) exceeded its %.3gs timeout; killing worker %s",
                    rec.task_id,
                    rec.name,
                    rec.timeout or 0,
                    slot.pid,
                )
                err = TaskTimeoutError(
                    f"task {rec.task_id} ({rec.name}) exceeded its timeout of {rec.timeout}s"
                )
                self._kill(slot, KillReason.TIMEOUT, rec, err)
            if slot.respawn_at is not None and slot.respawn_at <= now:
                slot.respawn_at = None
                if self.broken is None and self._needs_workers():
                    self._start(slot, now)
        if limits.memory_hard is not None and now >= self._next_memory_check:
            self._next_memory_check = now + limits.memory_check_interval
            busy = tuple(s.index for s in self.slots if s.inflight and s.kill is None)
            if busy:
                self.actions.append(ReadMemory(busy))
        if self.stop_deadline is not None and self.stop_deadline <= now:
            # Past the deadline nothing runs again: no retry, no requeue.
            self.stop_deadline = None
            self.cancel_pending = True
            for slot in self.slots:
                if slot.inflight:
                    self._kill(slot, KillReason.STOP)
            self._cancel_queued(now)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, now: float) -> None:
        heap = self.heap
        if not heap.live or self.broken is not None:
            return
        self._spawn_on_demand(now)
        # A worker still booting: no prefetching, or a short queue would pile
        # onto the first worker up while the next one is moments from ready.
        booting = any(s.state is _STARTING for s in self.slots)
        per_child = self.config.limits.max_tasks_per_child
        ready = [
            s for s in self.slots if s.serving and (per_child is None or s.dispatched < per_child)
        ]
        # Least loaded first, one task each per round: a short queue is spread
        # over every worker instead of piled on the first.
        ready.sort(key=lambda s: len(s.inflight))
        batches: dict[int, list[_TaskRecord]] = {}
        # The depth for one callable, learnt once per round: a burst of tiny
        # tasks is most often one callable.
        last_key: object = None
        last_depth = 1
        while heap.live and ready:
            for slot in list(ready):
                rec = heap.pop()
                if rec is None:
                    break
                if booting:
                    depth = 1
                else:
                    key = rec.payload[0] if rec.payload is not None else None
                    if key is None or key is not last_key:
                        last_key, last_depth = key, 1 + self._prefetch(rec)
                    depth = last_depth
                if per_child is not None:
                    depth = min(depth, per_child - slot.dispatched + len(slot.inflight))
                if len(slot.inflight) >= depth:
                    # Full for this task: back to its place (same priority and
                    # sequence), and this worker is done for the round.
                    heap.push(rec)
                    ready.remove(slot)
                    continue
                if rec.limit_key is not None and self._throttled(rec, now):
                    continue  # parked in its key's FIFO; the worker takes the next
                if self._start_attempt(rec, slot, now):
                    batches.setdefault(slot.index, []).append(rec)
        for index, recs in batches.items():
            slot = self.slots[index]
            if slot.deadline is None and slot.inflight[0] is recs[0] and recs[0].timeout:
                slot.deadline = now + recs[0].timeout
            self.actions.append(SendTasks(index, recs))

    def _throttled(self, rec: _TaskRecord, now: float) -> bool:
        """Park ``rec`` if its key has no room now (it stays ``PENDING``)."""
        assert rec.limit_key is not None
        lim = self.keys.limiter(rec.limit_key, now)
        if rec.task_id in lim.released:
            lim.released.discard(rec.task_id)
            if lim.room(now) >= 1:  # the room it was released for
                return False
            lim.parked.appendleft(rec)  # its room went to another: first in line again
        elif not lim.parked and not lim.released and lim.room(now) >= 1:
            return False
        else:
            lim.parked.append(rec)  # behind those already parked: FIFO within a key
        rec.parked = True
        self.parked += 1
        self._blocked.add(lim)
        return True

    def _unpark(self, now: float) -> None:
        """Back to the heap, in their order, as many parked tasks as each
        blocked key has room for now."""
        for lim in list(self._blocked):
            room = lim.room(now)
            while room > 0 and lim.parked:
                rec = lim.parked.popleft()
                if not rec.parked:
                    continue
                rec.parked = False
                self.parked -= 1
                lim.released.add(rec.task_id)
                self.heap.push(rec)
                room -= 1
            if not lim.parked:
                self._blocked.discard(lim)

    def _prefetch(self, rec: _TaskRecord) -> int:
        """Tasks a worker may hold beyond the one it runs, for ``rec`` to join
        them: fixed when configured; otherwise learnt from the mean run time of
        ``rec``'s callable; none for a callable not timed yet."""
        fixed = self.config.prefetch
        if fixed is not None:
            return fixed
        mean = self._mean_run.get(rec.payload[0]) if rec.payload is not None else None
        return 0 if mean is None else auto_prefetch(mean)

    def _start_attempt(self, rec: _TaskRecord, slot: Slot, now: float) -> bool:
        fut = rec.future
        if fut is not None and not rec.dispatched and not fut.set_running_or_notify_cancel():
            self._end(rec, _CANCELLED, TaskCancelledError(f"task {rec.task_id} was cancelled"), now)
            return False
        rec.dispatched = True
        if rec.limit_key is not None:
            self.keys.limiters[rec.limit_key].take(now)
        self._move(rec, _RUNNING)
        rec.attempts += 1
        rec.worker_pid = slot.pid
        rec.started_at = now + self.wall_offset
        rec.slot = slot.index
        slot.inflight.append(rec)
        slot.dispatched += 1
        self._emit(rec)
        return True

    def _spawn_on_demand(self, now: float) -> None:
        """Start workers as work arrives, one per waiting task not covered by a
        booting or idle worker, up to ``num_workers`` (as the stdlib's executor
        does since 3.9)."""
        wanted = self.heap.live
        for s in self.slots:
            if s.state is _STARTING or (s.state is _READY and not s.inflight):
                wanted -= 1
        for slot in self.slots:
            if wanted <= 0:
                return
            if slot.state is _STOPPED and slot.respawn_at is None:
                self._start(slot, now)
                wanted -= 1

    def short_of_work(self) -> bool:
        """True if a new task could be handed to a worker now, so a submit must
        wake the coordinator; otherwise the next result wakes it anyway."""
        fixed = self.config.prefetch
        if fixed is not None:
            depth = 1 + fixed
        elif self._mean_run:
            depth = 1 + auto_prefetch(min(self._mean_run.values()))  # the deepest
        else:
            depth = 1
        any_ready = False
        for slot in self.slots:
            if slot.state is _STOPPED:
                return True  # an empty slot: a submit must start a worker
            if slot.serving:
                any_ready = True
                if len(slot.inflight) < depth:
                    return True
        return not any_ready

    # ------------------------------------------------------------------ queries

    def finished_stopping(self) -> bool:
        return (
            self.stopping
            and not self.heap.live
            and not self.tally.count(_RETRYING)
            and not self.tally.count(_SCHEDULED)
            and not self.tally.count(_WAITING)
            and not self.parked
            and not any(s.inflight for s in self.slots)
        )
