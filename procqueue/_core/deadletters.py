"""The dead letter queue: tasks that failed for good, kept with their history.

The store belongs to the scheduler and is touched only under the engine lock. It is
bounded: when full, the oldest entry is dropped (and counted), so a night-long
batch with a systematic failure cannot grow memory without limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .._policy import RetryPolicy
from .records import AttemptError, _TaskRecord

__all__ = ["DeadLetter"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that exhausted its retries (or failed with an error that is not
    retried), with every attempt's error: type, message, traceback text, worker
    pid, exit code or signal (for crashes), start and end time."""

    task_id: int
    name: str
    priority: int
    attempts: int
    errors: tuple[AttemptError, ...]
    submitted_at: float
    failed_at: float

    @property
    def error(self) -> AttemptError | None:
        """The final attempt's error."""
        return self.errors[-1] if self.errors else None


class _Dormant:
    """A dependent that ended with ``UpstreamFailedError`` because a dead
    letter (or a dependent of one) failed: what it takes to re-arm it with
    ``requeue(..., cascade=True)``. Its payload still holds its ``result_of``
    markers, unbound; the values already passed to it are kept beside it.
    Kept in its dead letter's tree, so it goes with it."""

    __slots__ = (
        "all_done",
        "arrived",
        "awaited",
        "dependents",
        "limit_key",
        "name",
        "needed",
        "payload",
        "policy",
        "priority",
        "task_id",
        "timeout",
        "upstream",
    )

    def __init__(self, rec: _TaskRecord) -> None:
        assert rec.payload is not None
        self.task_id = rec.task_id
        self.name = rec.name
        self.priority = rec.priority
        self.payload = rec.payload
        self.policy = rec.policy
        self.timeout = rec.timeout
        self.limit_key = rec.limit_key
        self.upstream = rec.upstream
        inputs = rec.inputs
        self.needed = tuple(inputs) if inputs else ()
        #: The values it had already been passed (upstream id -> value), for
        #: a re-armed copy to take as they were: an upstream that completed
        #: may have handed its own value to its future since (``RELEASED``).
        #: A value still to come is ``None`` or a future in ``inputs``, never
        #: an ``(outcome, sent)`` pair.
        self.arrived: dict[int, Any] = (
            {u: pair[0] for u, pair in inputs.items() if type(pair) is tuple} if inputs else {}
        )
        #: The ProcQueue futures it was given for upstreams still to come.
        self.awaited: dict[int, Future[Any]] = (
            {u: v for u, v in inputs.items() if isinstance(v, Future)} if inputs else {}
        )
        self.all_done = rec.all_done
        self.dependents: list[_Dormant] = []


class _Entry:
    __slots__ = ("dependents", "letter", "limit_key", "payload", "policy", "timeout")

    def __init__(
        self,
        letter: DeadLetter,
        payload: tuple[bytes, Sequence[Any]],
        policy: RetryPolicy,
        timeout: float | None,
        limit_key: str | None,
    ) -> None:
        self.letter = letter
        self.payload = payload
        self.policy = policy
        self.timeout = timeout
        #: Run again, it is held to its key's limits as it was.
        self.limit_key = limit_key
        #: Dependents it took down with it (``_Dormant``), for a cascade.
        self.dependents: list[_Dormant] = []


class _DeadLetterStore:
    """Bounded FIFO of dead letters (with what it takes to run them again)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.entries: OrderedDict[int, _Entry] = OrderedDict()
        self.dropped = 0

    def add(self, rec: _TaskRecord, failed_at: float) -> bool:
        """Keep ``rec``'s letter (the oldest goes when full); False if not kept."""
        if self.max_size == 0 or rec.payload is None:
            return False
        letter = DeadLetter(
            task_id=rec.task_id,
            name=rec.name,
            priority=rec.priority,
            attempts=rec.attempts,
            errors=tuple(rec.errors or ()),
            submitted_at=rec.submitted_at,
            failed_at=failed_at,
        )
        self.entries[rec.task_id] = _Entry(
            letter, rec.payload, rec.policy, rec.timeout, rec.limit_key
        )
        while len(self.entries) > self.max_size:
            self.entries.popitem(last=False)
            self.dropped += 1
        return True

    def keep_dependent(self, up: _TaskRecord, dep: _TaskRecord) -> None:
        """``dep`` is ending because ``up`` failed: keep it dormant under
        ``up``'s letter (or under ``up``'s own dormant copy, down a chain)."""
        if dep.payload is None:
            return
        parent = up.dormant
        if parent is None:
            entry = self.entries.get(up.task_id)
            if entry is None:
                return  # not dead-lettered (DLQ off, or dropped): nothing to re-arm
            children = entry.dependents
        else:
            children = parent.dependents
        dep.dormant = node = _Dormant(dep)
        children.append(node)

    def __len__(self) -> int:
        return len(self.entries)
