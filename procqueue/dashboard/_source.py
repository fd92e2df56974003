"""What the dashboard reads and does, as one interface: a local engine
(``_local.py``) implements it now; a Redis cluster can later, behind the same
pages and JSON API.

Every method returns JSON-ready values (dicts, lists, str, numbers, ``None``);
timestamps are Unix seconds. Methods may be called from many server threads
at once, and must not hold the coordinator up for longer than a short,
bounded lock round each.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["DashboardSource", "DeadLetterFilter", "TaskQuery"]

JSON = dict[str, Any]


@dataclass(frozen=True)
class TaskQuery:
    """A page of the tasks table: newest first. ``before``: only ids below it
    (the cursor of the next page); ``task_id``: that task alone (search)."""

    state: str | None = None
    name: str | None = None
    before: int | None = None
    limit: int = 50
    task_id: int | None = None


@dataclass(frozen=True)
class DeadLetterFilter:
    """Dead letters whose task name equals ``name`` and whose final error
    type contains ``exception`` (each ``None``: any)."""

    name: str | None = None
    exception: str | None = None

    def matches(self, name: str, exc_type: str | None) -> bool:
        if self.name and name != self.name:
            return False
        return not self.exception or self.exception in (exc_type or "")


class DashboardSource(Protocol):
    """The data behind the dashboard. ``kind`` is ``"local"`` (this process's
    queue) or ``"cluster"`` (a Redis broker)."""

    kind: str

    def stats(self) -> JSON:
        """``{"kind": kind, "stats": dataclasses.asdict(<the stats snapshot>)}``:
        ``QueueStats`` for a local queue, ``ClusterStats`` for a cluster. A
        contract: other tools (``procqueue top``) read this shape."""
        ...

    def overview(self) -> JSON:
        """:meth:`stats` plus what the overview page needs besides: task
        names seen (for filters) and feature flags (``schedules``, ``limits``)."""
        ...

    def tasks(self, query: TaskQuery) -> JSON:
        """``{"tasks": [row...], "total": int | None, "next_before": id | None}``."""
        ...

    def task(self, task_id: int) -> JSON:
        """One task: its row, timings, every attempt, dependencies, reprs.
        Raises ``TaskNotFoundError``."""
        ...

    def dead_letters(self, flt: DeadLetterFilter, offset: int, limit: int) -> JSON:
        """``{"dead_letters": [...], "total": int, "dropped": int}``, newest first."""
        ...

    def retry_dead_letter(self, task_id: int) -> JSON:
        """Run a dead letter again: ``{"old": id, "new": id}``."""
        ...

    def retry_dead_letters(self, flt: DeadLetterFilter) -> JSON:
        """Run again every dead letter matching: ``{"requeued": {old: new}}``."""
        ...

    def purge_dead_letters(self, flt: DeadLetterFilter, ids: list[int] | None) -> JSON:
        """Drop the given ids (or every match): ``{"purged": n}``."""
        ...

    def schedules(self) -> JSON:
        """``{"schedules": [...]}``."""
        ...

    def control_schedule(self, name: str, op: str) -> JSON:
        """``op``: ``pause``, ``resume`` or ``run_now``."""
        ...

    def limits(self) -> JSON:
        """``{"limits": [...], "keys_total": n}``."""
        ...

    def totals(self) -> tuple[int, int]:
        """``(completed, failed)`` so far: the throughput chart's samples."""
        ...


#: Seconds between two warnings that a source's backend is unreachable.
UNREACHABLE_LOG_EVERY = 30.0
_unreachable_logged = [float("-inf")]


def unreachable(source: object, error: BaseException) -> bool:
    """Whether ``error`` means the source's backend (Redis) is unreachable
    (the source lists those errors as ``unavailable``); if so, warn, at most
    every :data:`UNREACHABLE_LOG_EVERY` seconds, instead of a traceback per
    request and per sample."""
    kinds = getattr(source, "unavailable", ())
    if not kinds or not isinstance(error, kinds):
        return False
    now = time.monotonic()
    if now - _unreachable_logged[0] >= UNREACHABLE_LOG_EVERY:
        _unreachable_logged[0] = now
        logging.getLogger("procqueue.dashboard").warning(
            "dashboard: the queue's backend is unreachable (%s); answering 503 meanwhile", error
        )
    return True
