"""Counts by state, kept in one place: every move of a task passes through
:meth:`Tally.move`, so the counts always add up to ``submitted``."""

from __future__ import annotations

from collections import deque

from .records import TaskState

#: Recent samples kept for percentiles.
SAMPLES = 10_000
#: Seconds of history behind ``throughput``.
WINDOW = 10
#: Distinct error types counted by name (a metric label: bounded cardinality).
MAX_FAILURE_TYPES = 100

_FINAL = tuple(s.ordinal for s in TaskState if s.is_final)
_RETRYING = TaskState.RETRYING


class Tally:
    """Task counts by state, retries, latency samples and a completion histogram.

    Invariant: ``sum(by_state) == submitted``. ``now`` values are the
    scheduler's monotonic clock."""

    __slots__ = (
        "by_state",
        "submitted",
        "retried",
        "wait_samples",
        "run_samples",
        "_buckets",
        "started",
        "samples_taken",
        "failed_by_type",
        "dead_lettered",
    )

    def __init__(self, now: float) -> None:
        self.by_state = [0] * len(TaskState)
        self.submitted = 0
        self.retried = 0
        self.wait_samples: deque[float] = deque(maxlen=SAMPLES)
        self.run_samples: deque[float] = deque(maxlen=SAMPLES)
        # Monotonic counts for metrics (exact, whatever the windows and the
        # dead letter queue's bound drop): latency samples ever appended, final
        # failures by the error's qualified type, tasks ever dead-lettered.
        self.samples_taken = 0
        self.failed_by_type: dict[str, int] = {}
        self.dead_lettered = 0
        self._buckets: deque[list[int]] = deque()
        self.started = now

    def admit(self, n: int = 1, state: TaskState = TaskState.PENDING) -> None:
        """``n`` new tasks, born ``state`` (``pending`` or ``scheduled``)."""
        self.submitted += n
        self.by_state[state.ordinal] += n

    def move(self, old: TaskState, new: TaskState) -> None:
        counts = self.by_state
        counts[old.ordinal] -= 1
        counts[new.ordinal] += 1
        if new is _RETRYING:
            self.retried += 1

    def count(self, state: TaskState) -> int:
        return self.by_state[state.ordinal]

    @property
    def unfinished(self) -> int:
        """Tasks not yet in a final state."""
        c = self.by_state
        return self.submitted - sum(c[i] for i in _FINAL)

    def count_failure(self, exc_type: str) -> None:
        """A task failed for good with ``exc_type`` (at most
        :data:`MAX_FAILURE_TYPES` distinct types; later ones count as ``other``)."""
        by_type = self.failed_by_type
        if exc_type not in by_type and len(by_type) >= MAX_FAILURE_TYPES:
            exc_type = "other"
        by_type[exc_type] = by_type.get(exc_type, 0) + 1

    def count_completion(self, now: float) -> None:
        sec = int(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == sec:
            buckets[-1][1] += 1
        else:
            buckets.append([sec, 1])
            while len(buckets) > WINDOW + 1:
                buckets.popleft()

    def throughput(self, now: float) -> float:
        """Completed tasks per second over the last ``WINDOW`` seconds."""
        horizon = int(now) - WINDOW
        total = sum(c for s, c in self._buckets if s > horizon)
        # The buckets counted cover the seconds after ``horizon``: from
        # ``horizon + 1`` to now, 9 to 10 s (a fixed 10 read a steady rate up
        # to 10 % low, in a sawtooth each second).
        span = min(now - (horizon + 1), max(now - self.started, 1e-9))
        return total / span
