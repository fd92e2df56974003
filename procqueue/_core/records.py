"""The scheduler's record of a task, its states, and the snapshots users see.

Only the scheduler (``scheduler.Scheduler._move``) calls :meth:`_TaskRecord.move`,
and it keeps the counts by state in the same call; every other thread reads
immutable :class:`TaskStatus` snapshots taken under the engine lock.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .._policy import RetryPolicy
from ..errors import _safe_str

__all__ = ["AttemptError", "TaskProgress", "TaskState", "TaskStatus"]


_ORDER = (
    "waiting",
    "scheduled",
    "pending",
    "running",
    "retrying",
    "completed",
    "failed",
    "cancelled",
)


class TaskState(str, enum.Enum):
    """Where a task is in its life. String-valued, so it compares equal to
    ``"completed"`` and serialises as plain text."""

    ordinal: int

    WAITING = "waiting"
    """Its upstream tasks (``after=``, ``result_of``) have not all ended yet;
    off the ready heap. It moves on once they have, or ends with them."""
    SCHEDULED = "scheduled"
    """Not due yet (``delay``/``eta``): off the ready heap, blocking nobody; it
    enters the heap at its due time, in priority order."""
    PENDING = "pending"
    """In the ready heap, waiting for a free worker."""
    RUNNING = "running"
    """Handed to a worker: executing, or queued in that worker's pipe behind the
    task it is executing (see ``prefetch``)."""
    RETRYING = "retrying"
    """An attempt failed and retries remain: waiting out its backoff delay, off the
    ready heap, so it blocks nobody."""
    COMPLETED = "completed"
    """Final: the callable returned; the value is available."""
    FAILED = "failed"
    """Final: the last attempt raised, crashed or timed out, and no retry remains."""
    CANCELLED = "cancelled"
    """Final: cancelled before it could complete."""

    def __init__(self, value: str) -> None:
        # A small int per state: the scheduler counts tasks by state in a list.
        self.ordinal = _ORDER.index(value)

    @property
    def is_final(self) -> bool:
        """True for ``completed``, ``failed`` and ``cancelled``."""
        return self.ordinal >= _FIRST_FINAL  # an int compare: an enum's hash is Python code

    def __str__(self) -> str:
        return str(self.value)


_FINAL = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})
_FIRST_FINAL = _ORDER.index("completed")  # the final states end _ORDER
assert {s.ordinal for s in _FINAL} == set(range(_FIRST_FINAL, len(_ORDER)))

#: The one transition table. ``RUNNING -> PENDING`` is a requeue that charges no
#: attempt: the task sat behind a crashed task in a dead worker's pipe.
#: ``SCHEDULED/PENDING/RETRYING -> FAILED`` happens only when the pool breaks.
_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.WAITING: frozenset(
        {TaskState.PENDING, TaskState.SCHEDULED, TaskState.CANCELLED, TaskState.FAILED}
    ),
    TaskState.SCHEDULED: frozenset({TaskState.PENDING, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.PENDING: frozenset({TaskState.RUNNING, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.RUNNING: frozenset(
        {
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.RETRYING,
            TaskState.CANCELLED,
            TaskState.PENDING,
        }
    ),
    TaskState.RETRYING: frozenset({TaskState.PENDING, TaskState.CANCELLED, TaskState.FAILED}),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


# The same table by state index, for the hot path (int hashing is C; an enum's
# __hash__ is Python code).
_ALLOWED: tuple[frozenset[int], ...] = tuple(
    frozenset(t.ordinal for t in _TRANSITIONS[s]) for s in TaskState
)


class _Released:
    """The outcome of a task whose caller's future now holds it alone."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<released>"


RELEASED: Any = _Released()


class _IllegalTransitionError(RuntimeError):
    """A bug in procqueue: the coordinator tried a move the table forbids."""


@dataclass(frozen=True, slots=True)
class AttemptError:
    """What went wrong in one attempt.

    ``exc_type`` is the qualified class name (``"builtins.ValueError"``),
    ``traceback`` the formatted remote traceback (empty for crashes and
    timeouts). ``exitcode`` is set for crashes: negative means killed by that
    signal, as in ``multiprocessing``.
    """

    attempt: int
    exc_type: str
    message: str
    traceback: str
    worker_pid: int | None
    exitcode: int | None
    started_at: float | None
    finished_at: float


@dataclass(frozen=True, slots=True)
class TaskProgress:
    """The latest ``procqueue.report_progress(done, total, message)`` of a
    running task's current attempt. ``fraction`` is ``done / total`` (``None``
    when the total is unknown)."""

    done: float
    total: float | None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """An immutable snapshot of a task, as returned by ``get_task_status``.

    ``attempts`` counts attempts charged against the retry budget (a task requeued
    because another task crashed its worker is not charged). Timestamps are
    ``time.time()`` values; ``started_at`` is the start of the latest attempt.
    ``error`` is the final error of a ``failed`` task (``None`` otherwise);
    ``errors`` holds every failed attempt's error in order, retried ones included.
    ``due_at`` is when a task submitted with ``delay``/``eta`` becomes due
    (``None`` for one due at once); ``after`` the upstream task ids it waits for;
    ``schedule`` the name of the schedule that fired it, if one did;
    ``progress`` what its current attempt (or, once final, its last one) last
    reported with ``procqueue.report_progress`` (``None`` before any report).
    """

    task_id: int
    name: str
    state: TaskState
    priority: int
    attempts: int
    max_retries: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    worker_pid: int | None
    error: AttemptError | None
    errors: tuple[AttemptError, ...]
    due_at: float | None = None
    after: tuple[int, ...] = ()
    schedule: str | None = None
    progress: TaskProgress | None = None


class _TaskRecord:
    """The scheduler's own record of one task. Never crosses a pipe.

    ``future`` is opaque to the scheduler: it only calls
    ``set_running_or_notify_cancel()`` on it at dispatch, and (dependencies)
    reads a settled one's outcome; the shell settles it.
    """

    __slots__ = (
        "task_id",
        "name",
        "priority",
        "payload",
        "policy",
        "timeout",
        "state",
        "attempts",
        "errors",
        "submitted_at",
        "started_at",
        "finished_at",
        "worker_pid",
        "future",
        "outcome",
        "is_error",
        "dispatched",
        "external",
        "slot",
        "due",
        "due_at",
        "upstream",
        "waiting_on",
        "dependents",
        "all_done",
        "inputs",
        "limit_key",
        "parked",
        "throttles",
        "fired_by",
        "dormant",
        "progress",
        "claimed",
    )

    def __init__(
        self,
        task_id: int,
        name: str,
        priority: int,
        payload: tuple[bytes, Sequence[Any]],
        policy: RetryPolicy,
        timeout: float | None,
        submitted_at: float,
        future: Future[Any] | None,
    ) -> None:
        self.task_id = task_id
        self.name = name
        self.priority = priority
        # The pickled callable and the (args, kwargs) value-blob segments;
        # dropped once final.
        self.payload: tuple[bytes, Sequence[Any]] | None = payload
        self.policy = policy
        self.timeout = timeout
        self.state = TaskState.PENDING
        self.attempts = 0
        self.errors: list[AttemptError] | None = None
        self.submitted_at = submitted_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.worker_pid: int | None = None
        self.future = future
        # The final value or exception, kept for ``result(task_id)``.
        self.outcome: Any = None
        self.is_error = False
        # Handed to a worker at least once (its future is RUNNING since).
        self.dispatched = False
        # ``future`` belongs to the caller (ProcQueue): dropped once final.
        self.external = False
        # The worker slot holding it while RUNNING, else -1.
        self.slot = -1
        # Due time (monotonic, and wall clock for statuses) of a delayed task.
        self.due: float | None = None
        self.due_at: float | None = None
        # Dependencies: the upstream ids (set before admission), how many have
        # not ended, the records waiting on this one, the trigger, and the
        # upstream values to put in the arguments: {id: None, or the caller's
        # future} until that upstream ends, then {id: (outcome, sent)} (``Done``).
        self.upstream: tuple[int, ...] = ()
        self.waiting_on = 0
        #: Its dependents: one as itself, several in a list (``dependencies._depend``).
        self.dependents: _TaskRecord | list[_TaskRecord] | None = None
        self.all_done = False
        self.inputs: dict[int, Any] | None = None
        # Rate/concurrency limits: its key; parked in the key's FIFO (PENDING
        # but off the heap); times it raised Throttle.
        self.limit_key: str | None = None
        self.parked = False
        self.throttles = 0
        # The schedule that fired it: such a run is fire-and-forget, kept only
        # within ``retain_finished`` once final (nobody holds its future).
        self.fired_by: str | None = None
        # Its copy in a dead letter's tree, when an upstream failure ended it
        # (``requeue(..., cascade=True)``); dependents of it attach below.
        self.dormant: Any = None
        # The latest report_progress of the current attempt.
        self.progress: TaskProgress | None = None
        # Its outcome was handed to a caller (``TaskQueue.result``): retention
        # may let it go now (``keep_unclaimed``).
        self.claimed = False

    def schedule(self, due: float, due_at: float) -> None:
        """Born ``scheduled``: not due before ``due`` (monotonic; ``due_at``:
        the same instant on the wall clock). Only before admission."""
        self.state = TaskState.SCHEDULED
        self.due = due
        self.due_at = due_at

    def move(self, new: TaskState) -> None:
        """Apply one transition; raise on a move the table forbids."""
        if new.ordinal not in _ALLOWED[self.state.ordinal]:
            raise _IllegalTransitionError(f"task {self.task_id}: {self.state.value} -> {new.value}")
        self.state = new

    def add_error(self, err: AttemptError) -> None:
        if self.errors is None:
            self.errors = [err]
        else:
            self.errors.append(err)

    def _final_error(self, errors: tuple[AttemptError, ...]) -> AttemptError | None:
        """A failed task's last attempt's error; for one that ended without
        a failed attempt of its own (an upstream failed, its results could not
        be passed, the pool broke), the error it ended with."""
        if errors:
            return errors[-1]
        outcome = self.outcome
        if not isinstance(outcome, BaseException):
            return None  # released to its future
        cls = type(outcome)
        return AttemptError(
            attempt=self.attempts,
            exc_type=f"{cls.__module__}.{cls.__qualname__}",
            message=_safe_str(outcome),
            traceback="",
            worker_pid=None,
            exitcode=None,
            started_at=None,
            finished_at=self.finished_at or 0.0,
        )

    def snapshot(self) -> TaskStatus:
        errors = tuple(self.errors) if self.errors else ()
        return TaskStatus(
            task_id=self.task_id,
            name=self.name,
            state=self.state,
            priority=self.priority,
            attempts=self.attempts,
            max_retries=self.policy.max_retries,
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            worker_pid=self.worker_pid,
            error=self._final_error(errors) if self.state is TaskState.FAILED else None,
            errors=errors,
            due_at=self.due_at,
            after=self.upstream,
            schedule=self.fired_by,
            progress=self.progress,
        )
