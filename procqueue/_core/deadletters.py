"""The dead letter queue: tasks that failed for good, kept with their history.

The store belongs to the scheduler and is touched only under the engine lock. It is
bounded: when full, the oldest entry is dropped (and counted), so a night-long
batch with a systematic failure cannot grow memory without limit.
"""

from __future__ import annotations

from collections import OrderedDict
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


class _Entry:
    __slots__ = ("letter", "payload", "policy", "timeout")

    def __init__(
        self,
        letter: DeadLetter,
        payload: tuple[bytes, list[Any]],
        policy: RetryPolicy,
        timeout: float | None,
    ) -> None:
        self.letter = letter
        self.payload = payload
        self.policy = policy
        self.timeout = timeout


class _DeadLetterStore:
    """Bounded FIFO of dead letters (with what it takes to run them again)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.entries: OrderedDict[int, _Entry] = OrderedDict()
        self.dropped = 0

    def add(self, rec: _TaskRecord, failed_at: float) -> None:
        if self.max_size == 0 or rec.payload is None:
            return
        letter = DeadLetter(
            task_id=rec.task_id,
            name=rec.name,
            priority=rec.priority,
            attempts=rec.attempts,
            errors=tuple(rec.errors or ()),
            submitted_at=rec.submitted_at,
            failed_at=failed_at,
        )
        self.entries[rec.task_id] = _Entry(letter, rec.payload, rec.policy, rec.timeout)
        while len(self.entries) > self.max_size:
            self.entries.popitem(last=False)
            self.dropped += 1

    def __len__(self) -> int:
        return len(self.entries)
