"""Statistics: counters kept by the coordinator, immutable snapshots for users."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

__all__ = ["LatencySummary", "QueueStats", "WorkerStats"]

_SAMPLES = 10_000  # recent samples kept for percentiles
_WINDOW = 10  # seconds of history behind ``throughput``


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

    The task counts always add up:
    ``submitted == pending + running + retrying + completed + failed + cancelled``.
    ``retried`` counts attempts that failed and were tried again.
    ``dead_letters`` is the size of the dead letter queue (``dead_letters_dropped``
    counts entries pushed out because it was full).
    ``success_rate`` is ``completed / (completed + failed)`` (``None`` before any
    task ended). ``throughput`` is completed tasks per second over the last
    ten seconds.
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

    def format_table(self) -> str:
        """A plain-text table, as the demo prints it."""

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.1f}ms"

        rate = "-" if self.success_rate is None else f"{self.success_rate:.1%}"
        lines = [
            f"submitted {self.submitted}  pending {self.pending}  running {self.running}  "
            f"retrying {self.retrying}",
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


def _percentiles(samples: deque[float]) -> LatencySummary:
    if not samples:
        return LatencySummary(None, None, None, 0)
    data = sorted(samples)
    n = len(data)

    def pick(q: float) -> float:
        return data[min(n - 1, int(q * n))]

    return LatencySummary(pick(0.50), pick(0.95), pick(0.99), n)


class _Counters:
    """Mutable counters owned by the coordinator thread (read under its lock)."""

    __slots__ = (
        "running",
        "retrying",
        "completed",
        "failed",
        "cancelled",
        "retried",
        "wait_samples",
        "run_samples",
        "_buckets",
        "started",
    )

    def __init__(self) -> None:
        self.running = 0
        self.retrying = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.retried = 0
        self.wait_samples: deque[float] = deque(maxlen=_SAMPLES)
        self.run_samples: deque[float] = deque(maxlen=_SAMPLES)
        self._buckets: deque[list[int]] = deque()
        self.started = time.monotonic()

    def count_completion(self, now: float) -> None:
        sec = int(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == sec:
            buckets[-1][1] += 1
        else:
            buckets.append([sec, 1])
            while len(buckets) > _WINDOW + 1:
                buckets.popleft()

    def throughput(self, now: float) -> float:
        horizon = int(now) - _WINDOW
        total = sum(c for s, c in self._buckets if s > horizon)
        span = min(float(_WINDOW), max(now - self.started, 1e-9))
        return total / span

    def snapshot(
        self,
        submitted: int,
        workers: tuple[WorkerStats, ...],
        dead_letters: int = 0,
        dead_letters_dropped: int = 0,
    ) -> QueueStats:
        now = time.monotonic()
        ended = self.completed + self.failed
        pending = (
            submitted - self.running - self.retrying - self.completed - self.failed - self.cancelled
        )
        return QueueStats(
            submitted=submitted,
            pending=pending,
            running=self.running,
            retrying=self.retrying,
            completed=self.completed,
            failed=self.failed,
            cancelled=self.cancelled,
            retried=self.retried,
            dead_letters=dead_letters,
            dead_letters_dropped=dead_letters_dropped,
            success_rate=(self.completed / ended) if ended else None,
            throughput=self.throughput(now),
            queue_wait=_percentiles(self.wait_samples),
            run_time=_percentiles(self.run_samples),
            uptime=now - self.started,
            workers=workers,
        )
