"""Task dependencies: a task waits (``WAITING``) until its upstream tasks have
ended, then runs with their results bound into its arguments, or ends with
them.

Triggers: ``all_success`` (default) runs the task once every upstream
completed; an upstream that fails for good fails it with
``UpstreamFailedError`` (the upstream's error as ``__cause__``), one that is
cancelled cancels it, and so on down the graph. ``all_done`` runs it once every
upstream ended, whatever the outcome; a failed upstream's value is its
exception. Retries of an upstream are invisible downstream: only final states
count. Cycles cannot be built: a task can only depend on tasks that already
exist.

Bookkeeping is O(edges): each edge is touched when the dependent is admitted
and once when its upstream ends. Chains are walked with a worklist, not
recursion, so depth costs no stack.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from concurrent.futures import Future
from typing import Any

from ..errors import (
    InvalidArgumentError,
    SerializationError,
    TaskCancelledError,
    TaskNotFoundError,
    UpstreamFailedError,
    _safe_str,
)
from .events import CANCEL, ERROR
from .outcomes import Outcomes
from .records import RELEASED, TaskState, _TaskRecord

_WAITING, _SCHEDULED, _PENDING = TaskState.WAITING, TaskState.SCHEDULED, TaskState.PENDING
_COMPLETED, _FAILED, _CANCELLED = TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED


class Dependencies(Outcomes):
    """Linking a new task to its upstream, and releasing or ending dependents."""

    def _link(self, rec: _TaskRecord, now: float) -> None:
        """Admit ``rec`` (born ``WAITING``) under its upstream tasks. Raises,
        before changing anything, for an unknown upstream or a result that is
        no longer held."""
        upstream = rec.upstream
        if len(upstream) == 1:  # a chain link: after=[t] or f(result_of(t)), no loop
            up = self.tasks.get(upstream[0])
            if up is None:
                raise _unknown(upstream[0])
            final = up.state.is_final
            outcome = _outcome_of(up, rec) if final else None
            if (
                outcome is RELEASED
                and rec.inputs  # it takes the value (the marker's only upstream)
                and (up.state is _COMPLETED or rec.all_done)
            ):
                raise _released(up.task_id)
            self._admit_waiting(rec, 1)
            if final:
                self._upstream_ended(rec, up, outcome, now)
            else:
                _depend(up, rec)
            return
        ups = [self._linkable(rec, tid) for tid in upstream]
        self._admit_waiting(rec, len(ups))
        for up in ups:
            if rec.state is not _WAITING:
                break  # ended by an upstream that had already failed
            if up.state.is_final:
                self._upstream_ended(rec, up, _outcome_of(up, rec), now)
            else:
                _depend(up, rec)

    def _linkable(self, rec: _TaskRecord, tid: int) -> _TaskRecord:
        """Upstream ``tid`` of ``rec``; raises for an unknown one, or one
        whose result ``rec`` takes but that is no longer held."""
        up = self.tasks.get(tid)
        if up is None:
            raise _unknown(tid)
        needed = rec.inputs is not None and tid in rec.inputs
        wanted = needed and (up.state is _COMPLETED or (rec.all_done and up.state.is_final))
        if wanted and _outcome_of(up, rec) is RELEASED:
            raise _released(tid)
        return up

    def check_links(self, records: list[_TaskRecord], fresh: Collection[int]) -> None:
        """Raise, changing nothing, if one of ``records`` could not be linked
        to its upstream tasks (those in ``fresh`` are admitted along with
        them, so not checked): what :meth:`_link` would raise, for a batch
        that must be admitted whole or not at all."""
        for rec in records:
            for tid in rec.upstream:
                if tid not in fresh:
                    self._linkable(rec, tid)

    def _admit_waiting(self, rec: _TaskRecord, waiting_on: int) -> None:
        rec.state = _WAITING
        rec.waiting_on = waiting_on
        self.tasks[rec.task_id] = rec
        self.tally.admit(1, _WAITING)
        self._emit(rec)

    def _on_final(self, rec: _TaskRecord, now: float, sent: Any = None) -> None:
        # The outcome is taken now: retention may drop it from the record next.
        self._finals.append((rec, rec.outcome, sent))
        if self._cascading:
            return  # an outer call is walking the worklist
        self._cascading = True
        try:
            while self._finals:
                up, outcome, sent = self._finals.pop()
                dependents, up.dependents = up.dependents, None
                for dep in each_dependent(dependents):
                    if dep.state is _WAITING:
                        self._upstream_ended(dep, up, outcome, now, sent)
        finally:
            self._cascading = False

    def _upstream_ended(
        self, dep: _TaskRecord, up: _TaskRecord, outcome: Any, now: float, sent: Any = None
    ) -> None:
        """``up`` ended with ``outcome`` (``sent``: see ``Done``; ``None`` for
        a dependent linked after the fact, which gets the outcome alone)."""
        state = up.state
        if outcome is RELEASED:  # only a failed upstream under all_success gets here
            errors = up.errors or ()
            outcome = UpstreamFailedError(errors[-1].message) if errors else None
        if state is _COMPLETED or dep.all_done:
            if dep.inputs is not None and up.task_id in dep.inputs:
                if state is _CANCELLED and not isinstance(outcome, BaseException):
                    outcome = TaskCancelledError(f"task {up.task_id} was cancelled")
                dep.inputs[up.task_id] = (outcome, sent)
            dep.waiting_on -= 1
            if dep.waiting_on == 0:
                self._release(dep, now)
        elif state is _FAILED:
            detail = (
                f"{type(outcome).__name__}: {_safe_str(outcome)}"
                if outcome is not None
                else "failed"
            )
            err = UpstreamFailedError(
                f"task {dep.task_id} ({dep.name}) did not run: its upstream task "
                f"{up.task_id} ({up.name}) failed with {detail}",
                up.task_id,
            )
            if isinstance(outcome, BaseException):
                err.__cause__ = outcome
            self.dlq.keep_dependent(up, dep)
            self._end(dep, _FAILED, err, now, ERROR)
        else:
            err2 = TaskCancelledError(
                f"task {dep.task_id} was cancelled: its upstream task {up.task_id} was"
            )
            self._end(dep, _CANCELLED, err2, now, CANCEL)

    def _release(self, rec: _TaskRecord, now: float) -> None:
        """Every upstream ended as the trigger wants: the shell puts their
        results in the payload (``bind_inputs``), then on to the heap (or the
        delayed heap, if not due)."""
        if self.broken is not None:
            self._end(rec, _FAILED, self.broken, now, ERROR)
            return
        if self.cancel_pending:
            self._finish_cancelled(rec, now)
            return
        if rec.inputs:
            try:
                assert self.bind_inputs is not None and rec.payload is not None
                rec.payload = self.bind_inputs(rec.payload, rec.inputs)
            except Exception as e:
                err = SerializationError(
                    f"cannot pass the upstream results to task {rec.task_id} ({rec.name}): "
                    f"{type(e).__name__}: {_safe_str(e)}"
                )
                self._end(rec, _FAILED, err, now, ERROR)
                return
        rec.inputs = None
        if rec.due is not None and rec.due > now:
            self._move(rec, _SCHEDULED)
            self.delayed.push(rec.due, rec)
        else:
            self._move(rec, _PENDING)
            self.heap.push(rec)
        self._emit(rec)

    def _waiting_records(self) -> list[_TaskRecord]:
        """Every ``WAITING`` record, in id order (a scan: only for stop and break)."""
        return [r for r in self.tasks.values() if r.state is _WAITING]


def _depend(up: _TaskRecord, dep: _TaskRecord) -> None:
    """``dep`` waits on ``up``, which has not ended. One dependent (a chain's
    link) is held as itself, not in a list: a list is one more object for
    the cyclic GC to walk in every full collection, for each waiting link."""
    held = up.dependents
    if held is None:
        up.dependents = dep
    elif type(held) is list:
        held.append(dep)
    else:
        up.dependents = [held, dep]  # type: ignore[list-item]


def each_dependent(held: _TaskRecord | list[_TaskRecord] | None) -> Iterable[_TaskRecord]:
    """What a record's ``dependents`` holds, as records (see :func:`_depend`)."""
    if held is None:
        return ()
    if type(held) is list:
        return held
    return (held,)  # type: ignore[return-value]


def _unknown(tid: int) -> TaskNotFoundError:
    return TaskNotFoundError(
        f"upstream task {tid} is unknown to this queue (never submitted here, "
        "or dropped by retain_finished)"
    )


def _released(tid: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the result of task {tid} is no longer held (its future was "
        "settled and released): pass the future itself"
    )


def _outcome_of(up: _TaskRecord, dep: _TaskRecord) -> Any:
    """A final record's value or exception. Once released to a ProcQueue
    future, from that future if the dependent was handed it (``inputs``)."""
    outcome = up.outcome
    if outcome is RELEASED and dep.inputs is not None:
        fut = dep.inputs.get(up.task_id)
        if isinstance(fut, Future) and fut.done() and not fut.cancelled():
            exc = fut.exception()
            return exc if exc is not None else fut.result()
    return outcome
