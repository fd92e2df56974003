"""The ready heap (priority order) and the delayed heap (due-time order).

Entries are tuples, compared element by element; the unique task id (ids are
handed out in submission order, so it is the FIFO sequence too) means the
third element (the record) is never compared. The ready heap's entries hold
the id only, and the record is looked up in the task table when popped: a
tuple of ints is one the cyclic GC stops tracking, so 100,000 pending tasks
are 100,000 objects fewer for every full collection to walk (issue #11: the
GC, not the code path, is what slows a large burst). Cancellation is lazy: the record's
state changes and its stale entry is skipped when it reaches the top, so cancel
is O(1) and push/pop stay O(log n).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from .records import TaskState, _TaskRecord


class _ReadyHeap:
    """Higher ``priority`` first; FIFO (by submission sequence) among equals."""

    __slots__ = ("_heap", "_tasks", "live")

    def __init__(self, tasks: Mapping[int, _TaskRecord]) -> None:
        #: ``(-priority, task id)``; the records are ``tasks``'.
        self._heap: list[tuple[int, int]] = []
        self._tasks = tasks
        # Number of entries whose record is still PENDING (kept by the coordinator).
        self.live = 0

    def push(self, rec: _TaskRecord) -> None:
        heapq.heappush(self._heap, (-rec.priority, rec.task_id))
        self.live += 1

    def discard(self, rec: _TaskRecord) -> None:
        """Account for a pending record that left the heap by cancellation; its
        entry stays until popped and skipped."""
        self.live -= 1

    def pop(self) -> _TaskRecord | None:
        """The best pending record, or ``None`` when none is left."""
        heap, tasks = self._heap, self._tasks
        while heap:
            rec = tasks.get(heapq.heappop(heap)[1])
            if rec is not None and rec.state is TaskState.PENDING:
                self.live -= 1
                return rec
        return None

    def __len__(self) -> int:
        return self.live

    def drain(self) -> list[_TaskRecord]:
        """Remove and return every pending record, in priority order."""
        out = []
        while (rec := self.pop()) is not None:
            out.append(rec)
        self._heap.clear()
        return out


#: The states of a record waiting for its time in the delayed heap.
_WAITING_FOR_TIME = frozenset({TaskState.RETRYING.ordinal, TaskState.SCHEDULED.ordinal})


class _DelayedHeap:
    """Records waiting for a time, earliest due first: a retry's backoff
    (``RETRYING``) or a ``delay``/``eta`` (``SCHEDULED``). An entry whose record
    left those states (cancelled, failed) is stale and skipped."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _TaskRecord]] = []

    def push(self, due: float, rec: _TaskRecord) -> None:
        heapq.heappush(self._heap, (due, rec.task_id, rec))

    def next_due(self) -> float | None:
        """Due time of the earliest live entry (stale ones are dropped)."""
        heap = self._heap
        while heap and heap[0][2].state.ordinal not in _WAITING_FOR_TIME:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[_TaskRecord]:
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            rec = heapq.heappop(heap)[2]
            if rec.state.ordinal in _WAITING_FOR_TIME:
                out.append(rec)
        return out

    def drain(self) -> list[_TaskRecord]:
        out = [e[2] for e in sorted(self._heap) if e[2].state.ordinal in _WAITING_FOR_TIME]
        self._heap.clear()
        return out
