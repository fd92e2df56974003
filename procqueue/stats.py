"""Statistics: counters kept by the coordinator, immutable snapshots for users."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._core.records import TaskState
from ._core.tally import Tally

__all__ = ["LatencySummary", "QueueStats", "WorkerStats"]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles (seconds) over the most recent samples; ``None`` before any."""

    p50: float | None
    p95: float | None
    p99: float | None
    samples: int


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One worker slot. ``restarts`` counts replacements after a crash, a kill
    (timeout, cancel, memory) or a failed start; ``recycled`` counts planned
    replacements (``max_tasks_per_child``, soft memory limit). ``rss`` (bytes,
    whole process tree) and ``cpu_percent`` come from psutil."""

    slot: int
    pid: int | None
    state: str
    tasks_done: int
    restarts: int
    recycled: int
    current_task: int | None
    rss: int | None
    cpu_percent: float | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A consistent snapshot of the queue.

    The task counts always add up: ``submitted == waiting + scheduled + pending
    + running + retrying + completed + failed + cancelled`` (``waiting``: for
    upstream tasks; ``scheduled``: submitted with a ``delay``/``eta`` and not due
    yet). ``throttled`` counts the ``pending`` tasks parked by a rate or
    concurrency limit (``key_limits``).
    ``retried`` counts attempts that failed and were tried again.
    ``dead_letters`` is the size of the dead letter queue (``dead_letters_dropped``
    counts entries pushed out because it was full).
    ``success_rate`` is ``completed / (completed + failed)`` (``None`` before any
    task ended). ``throughput`` is completed tasks per second over the last
    ten seconds. ``startup_deaths`` counts workers killed by a signal from
    outside (an operator, the OOM killer) while they were starting; each was
    restarted with backoff (see "Supervision" in the README).
    """

    submitted: int
    pending: int
    running: int
    retrying: int
    completed: int
    failed: int
    cancelled: int
    retried: int
    dead_letters: int
    dead_letters_dropped: int
    success_rate: float | None
    throughput: float
    queue_wait: LatencySummary
    run_time: LatencySummary
    uptime: float
    workers: tuple[WorkerStats, ...]
    startup_deaths: int = 0
    scheduled: int = 0
    waiting: int = 0
    throttled: int = 0

    def format_table(self) -> str:
        """A plain-text table, as the demo prints it."""

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.1f}ms"

        rate = "-" if self.success_rate is None else f"{self.success_rate:.1%}"
        lines = [
            f"submitted {self.submitted}  waiting {self.waiting}  scheduled {self.scheduled}  "
            f"pending {self.pending}  running {self.running}  retrying {self.retrying}",
            f"completed {self.completed}  failed {self.failed}  cancelled {self.cancelled}  "
            f"retried {self.retried}  success {rate}  dead letters {self.dead_letters}",
            f"throughput {self.throughput:.1f}/s  uptime {self.uptime:.1f}s",
            f"queue wait p50 {ms(self.queue_wait.p50)} p95 {ms(self.queue_wait.p95)} "
            f"p99 {ms(self.queue_wait.p99)}",
            f"run time   p50 {ms(self.run_time.p50)} p95 {ms(self.run_time.p95)} "
            f"p99 {ms(self.run_time.p99)}",
            f"{'slot':>4} {'pid':>8} {'state':<9} {'done':>6} {'restarts':>8} {'recycled':>8} "
            f"{'task':>6} {'rss MB':>8} {'cpu%':>6}",
        ]
        for w in self.workers:
            rss = "-" if w.rss is None else f"{w.rss / 2**20:.1f}"
            cpu = "-" if w.cpu_percent is None else f"{w.cpu_percent:.0f}"
            task = "-" if w.current_task is None else str(w.current_task)
            lines.append(
                f"{w.slot:>4} {w.pid or '-':>8} {w.state:<9} {w.tasks_done:>6} {w.restarts:>8} "
                f"{w.recycled:>8} {task:>6} {rss:>8} {cpu:>6}"
            )
        return "\n".join(lines)


def _percentiles(samples: deque[float] | list[float]) -> LatencySummary:
    if not samples:
        return LatencySummary(None, None, None, 0)
    data = sorted(samples)
    n = len(data)

    def pick(q: float) -> float:
        return data[min(n - 1, int(q * n))]

    return LatencySummary(pick(0.50), pick(0.95), pick(0.99), n)


_EMPTY = LatencySummary(None, None, None, 0)


class LatencyCache:
    """Percentiles for ``get_stats()``, recomputed at most every ``max_age``
    seconds: sorting 10,000 samples twice costs ~2 ms, which a dashboard
    polling at 100 Hz would otherwise take from the engine (the GIL). The
    samples are copied under the engine lock (cheap) and sorted outside it."""

    def __init__(self, max_age: float = 0.25) -> None:
        self._max_age = max_age
        self._at = float("-inf")
        self._value = (_EMPTY, _EMPTY)

    def due(self, now: float) -> bool:
        return now - self._at >= self._max_age

    def update(self, now: float, wait: list[float], run: list[float]) -> None:
        self._value = (_percentiles(wait), _percentiles(run))
        self._at = now

    @property
    def value(self) -> tuple[LatencySummary, LatencySummary]:
        """``(queue_wait, run_time)`` as last computed."""
        return self._value


def build_stats(
    tally: Tally,
    now: float,
    workers: tuple[WorkerStats, ...],
    *,
    dead_letters: int,
    dead_letters_dropped: int,
    startup_deaths: int,
    throttled: int = 0,
) -> QueueStats:
    """A snapshot from the scheduler's tally (``now``: the same monotonic
    clock); latency percentiles and workers are filled in by the caller."""
    counts = tally.by_state
    completed = counts[TaskState.COMPLETED.ordinal]
    failed = counts[TaskState.FAILED.ordinal]
    ended = completed + failed
    return QueueStats(
        submitted=tally.submitted,
        pending=counts[TaskState.PENDING.ordinal],
        running=counts[TaskState.RUNNING.ordinal],
        retrying=counts[TaskState.RETRYING.ordinal],
        completed=completed,
        failed=failed,
        cancelled=counts[TaskState.CANCELLED.ordinal],
        retried=tally.retried,
        dead_letters=dead_letters,
        dead_letters_dropped=dead_letters_dropped,
        success_rate=(completed / ended) if ended else None,
        throughput=tally.throughput(now),
        queue_wait=_EMPTY,
        run_time=_EMPTY,
        uptime=now - tally.started,
        workers=workers,
        startup_deaths=startup_deaths,
        scheduled=counts[TaskState.SCHEDULED.ordinal],
        waiting=counts[TaskState.WAITING.ordinal],
        throttled=throttled,
    )
