"""The dead letter queue: tasks that failed for good, kept with their history.

The store belongs to the engine and is touched only under the engine lock. It is
bounded: when full, the oldest entry is dropped (and counted), so a night-long
batch with a systematic failure cannot grow memory without limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._policy import RetryPolicy
from .records import AttemptError, _TaskRecord

if TYPE_CHECKING:
    from .._coordinator import Engine

__all__ = ["DeadLetter", "DeadLetterQueue"]


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


class DeadLetterQueue:
    """The dead letter queue of one queue, as ``queue.dlq``.

    Every task that ends ``failed`` (retries exhausted, or an error that is not
    retried) lands here with its full history, up to ``dead_letters`` entries
    (default 1000; when full the oldest entry is dropped and counted in
    ``get_stats().dead_letters_dropped``; 0 turns the DLQ off). Tasks failed
    because the whole pool broke are not dead-lettered.

    >>> for letter in queue.dlq.list():              # doctest: +SKIP
    ...     print(letter.task_id, letter.error.exc_type)
    >>> new_id = queue.dlq.requeue(letter.task_id)     # doctest: +SKIP
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def list(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        return self._engine.dead_letters()

    def get(self, task_id: int) -> DeadLetter:
        """One dead letter; ``TaskNotFoundError`` if absent."""
        return self._engine.dead_letter(task_id)

    def requeue(
        self, task_id: int, *, max_retries: int | None = None, priority: int | None = None
    ) -> int:
        """Run the task again as a new task (new id, returned) with a fresh retry
        budget (its own ``max_retries`` unless given). The letter leaves the DLQ."""
        return self._engine.requeue_dead_letter(task_id, max_retries, priority)

    def purge(self, task_ids: Iterable[int] | None = None) -> int:
        """Drop the given dead letters (all by default); returns how many."""
        return self._engine.purge_dead_letters(task_ids)

    @property
    def dropped(self) -> int:
        """Entries pushed out because the DLQ was full."""
        return self._engine.dead_letters_dropped

    def __len__(self) -> int:
        return len(self._engine.dead_letters())
