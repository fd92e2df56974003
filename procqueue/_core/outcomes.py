"""How a task's attempt or life ends: retry with backoff, fail (to the dead
letter queue), cancel, requeue uncharged; and how long a finished record stays."""

from __future__ import annotations

import logging
import math
from typing import Any

from ..errors import (
    TaskCancelledError,
    TaskTimeoutError,
    Throttle,
    UnpicklableTaskError,
    WorkerCrashedError,
    _safe_str,
)
from .events import CANCEL, ERROR
from .records import AttemptError, TaskState, _TaskRecord
from .state import CoreState

_log = logging.getLogger("procqueue.coordinator")

_PENDING, _RETRYING = TaskState.PENDING, TaskState.RETRYING
_FAILED, _CANCELLED = TaskState.FAILED, TaskState.CANCELLED


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Outcomes(CoreState):
    """Settling tasks. Every final state is reached here, and only here."""

    def _attempt_failed(
        self,
        rec: _TaskRecord,
        exc: BaseException,
        pid: int | None,
        exitcode: int | None,
        tb: str,
        now: float,
        *,
        cancelled: bool = False,
    ) -> None:
        """An attempt of the ``RUNNING`` ``rec`` ended with ``exc``: retry or fail
        it. ``cancelled``: the task was cancelled while this attempt ran (the
        kill lost the race): it ends cancelled, its error kept in the history."""
        exc_type = self._record_error(rec, exc, pid, exitcode, tb, now)
        throttle = isinstance(exc, Throttle) and 0 <= exc.retry_after < math.inf
        if cancelled or (throttle and self.cancel_pending):
            # A throttled task was going back to wait: under stop(cancel_pending)
            # it is cancelled like any task that has not started, not failed.
            self._cancel_running(rec, now)
        elif throttle and rec.throttles < self.config.max_throttles:
            assert isinstance(exc, Throttle)
            # "Not now": back to wait, without using an attempt; not a retry.
            rec.throttles += 1
            rec.attempts -= 1
            self._retry_later(rec, exc.retry_after, now)
            self.tally.retried -= 1
        elif not self.cancel_pending and rec.policy.should_retry(exc, rec.attempts):
            delay = rec.policy.delay(rec.attempts, self.rand)
            _log.info(
                "task %d (%s) attempt %d failed with %s; retrying in %.3fs",
                rec.task_id,
                rec.name,
                rec.attempts,
                exc_type,
                delay,
            )
            self._retry_later(rec, delay, now)
        else:
            self._fail(rec, exc, exc_type, now)

    def _record_error(
        self,
        rec: _TaskRecord,
        exc: BaseException,
        pid: int | None,
        exitcode: int | None,
        tb: str,
        now: float,
    ) -> str:
        """Add the attempt's error to the task's history; returns its type name."""
        wall = now + self.wall_offset
        rec.finished_at = wall
        exc_type = exc.exc_type if isinstance(exc, UnpicklableTaskError) else _qualname(type(exc))
        rec.add_error(
            AttemptError(
                attempt=rec.attempts,
                exc_type=exc_type,
                message=_safe_str(exc),
                traceback=tb,
                worker_pid=pid,
                exitcode=exitcode,
                started_at=rec.started_at,
                finished_at=wall,
            )
        )
        return exc_type

    def _retry_later(self, rec: _TaskRecord, delay: float, now: float) -> None:
        """``RUNNING`` -> ``RETRYING``: back to the heap after ``delay`` seconds."""
        self._move(rec, _RETRYING)
        rec.progress = None  # the next attempt starts from nothing
        if delay <= 0:
            self._move(rec, _PENDING)
            self.heap.push(rec)
        else:
            self.delayed.push(now + delay, rec)
        self._emit(rec)

    def _fail(self, rec: _TaskRecord, exc: BaseException, exc_type: str, now: float) -> None:
        """No retry left: ``FAILED``, into the dead letter queue."""
        self._move(rec, _FAILED)
        self.tally.count_failure(exc_type)
        if self.dlq.add(rec, now + self.wall_offset):
            self.tally.dead_lettered += 1
        rec.payload = None
        rec.outcome = exc
        rec.is_error = True
        log = _log.warning if isinstance(exc, (WorkerCrashedError, TaskTimeoutError)) else _log.info
        log("task %d (%s) failed after %d attempt(s): %s: %s", rec.task_id, rec.name, rec.attempts,
            exc_type, exc)  # fmt: skip
        if rec.future is not None:
            self.settlements.append((rec.future, ERROR, exc))
        self._bookkeep(rec, now)

    def _finish_cancelled(self, rec: _TaskRecord, now: float) -> None:
        """A ``PENDING``, ``RETRYING`` or ``SCHEDULED`` record ends ``CANCELLED``."""
        err = TaskCancelledError(f"task {rec.task_id} was cancelled")
        self._end(rec, _CANCELLED, err, now, CANCEL)

    def _cancel_running(self, rec: _TaskRecord, now: float) -> None:
        err = TaskCancelledError(f"task {rec.task_id} was cancelled while running")
        self._end(rec, _CANCELLED, err, now, ERROR)

    def _end(
        self,
        rec: _TaskRecord,
        state: TaskState,
        err: BaseException,
        now: float,
        settle: int | None = None,
    ) -> None:
        """Finish a record that will not run (again): ``CANCELLED``, or ``FAILED``
        without a further attempt. ``settle``: how its future learns of it."""
        self._move(rec, state)
        if state is _FAILED:
            self.tally.count_failure(_qualname(type(err)))
        rec.payload = None
        rec.inputs = None  # upstream values it will never take (a dormant copy kept its own)
        rec.finished_at = now + self.wall_offset
        rec.outcome = err
        rec.is_error = True
        if rec.future is not None and settle is not None:
            self.settlements.append((rec.future, settle, err))
        self._bookkeep(rec, now)

    def _bookkeep(self, rec: _TaskRecord, now: float, sent: Any = None) -> None:
        """``rec`` just became final: tell its dependents (``sent``: its value
        as its worker pickled it, see ``Done``), wake submitters, retention,
        publish."""
        if rec.dependents:
            self._on_final(rec, now, sent)
        if self.config.max_pending is not None:
            self.space_freed = True
        if rec.future is not None and rec.external:
            # A caller's own future (ProcQueue) carries the outcome; the record
            # must not keep the value alive once the caller dropped it (the
            # stdlib's map frees each result as it is yielded). It is released
            # once the future is settled (outside the lock: a dependent admitted
            # meanwhile still finds it here). Our own futures (TaskQueue) hold
            # the same object as the record: nothing to release.
            rec.future = None
            if rec.errors or rec.state is not _FAILED:
                self.released.append(rec)
            # else: it failed without an attempt of its own (an upstream
            # failed): its one error, small, stays, for status.error to name.
        if rec.fired_by is not None or not self.config.keep_unclaimed:
            self.make_evictable(rec.task_id)  # else once claimed (``claim``)
        self._emit(rec)

    def _on_final(self, rec: _TaskRecord, now: float, sent: Any = None) -> None:
        """Hook: ``rec`` ended and has dependents (``dependencies.py``)."""

    def _waiting_records(self) -> list[_TaskRecord]:
        """Hook: every ``WAITING`` record (``dependencies.py``)."""
        return []

    def _requeue(self, rec: _TaskRecord, now: float) -> None:
        """Back to the heap, uncharged: it never ran, or its worker was killed for
        another task's sake."""
        rec.attempts -= 1
        self._move(rec, _PENDING)
        if self.cancel_pending:
            self._finish_cancelled(rec, now)
        else:
            self.heap.push(rec)
            self._emit(rec)

    def _unpark_all(self) -> list[_TaskRecord]:
        """Every parked (throttled) task, taken out of its key's FIFO."""
        out = []
        for lim in self._blocked:
            while lim.parked:
                rec = lim.parked.popleft()
                if rec.parked:
                    rec.parked = False
                    out.append(rec)
        self._blocked.clear()
        self.parked = 0
        return out

    def _take_queued(self) -> list[_TaskRecord]:
        """Every task not running yet, taken off the heaps and the limiters'
        FIFOs: pending, parked, retrying, scheduled and waiting. Ending one may
        end others by cascade, so callers skip those already final."""
        return (
            self.heap.drain() + self._unpark_all() + self.delayed.drain() + self._waiting_records()
        )

    def _cancel_queued(self, now: float) -> None:
        for rec in self._take_queued():
            if not rec.state.is_final:
                self._finish_cancelled(rec, now)
