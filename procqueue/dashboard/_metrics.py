"""Prometheus metrics for one queue, through ``prometheus-client`` (the
``metrics`` extra), in a registry of the queue's own: two queues in one
process never clash.

Counts and gauges are read from the engine at scrape time (one lock round,
``ReadSide.counters``). What the engine keeps only as a rolling window (the
last 10,000 run-time and queue-wait samples, the bounded dead letter queue)
is drained by :class:`MetricsObserver` into cumulative counts - at each
scrape and, while metrics are in use, at each dashboard tick (4 Hz), so a
sample is missed only if more than 10,000 tasks end between two ticks.
Nothing is labelled by task id; labels are states, exception types, worker
states, schedule names and limit keys (capped), all bounded by the program.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._core.records import TaskState
from ..errors import MissingExtraError

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .._runtime.state import ReadSide

__all__ = ["MetricsObserver", "make_registry", "require_prometheus"]

#: Seconds; from sub-millisecond tiny tasks to five-minute jobs.
BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
#: Limit keys exported (those with the most waiting tasks first).
MAX_KEYS = 100
_COMPLETED, _FAILED = TaskState.COMPLETED.ordinal, TaskState.FAILED.ordinal


def require_prometheus() -> None:
    """Raise :class:`~procqueue.MissingExtraError` unless prometheus-client is
    installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(
            "Prometheus metrics need prometheus-client: pip install 'procqueue[metrics]'"
        ) from e


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe_many(self, values: list[float]) -> None:
        # Sorted once (C), then one bisection per bucket bound: thousands of
        # samples a tick cost well under a millisecond of the coordinator's GIL.
        values.sort()
        counts, lo = self.counts, 0
        for i, bound in enumerate(BUCKETS):
            hi = bisect.bisect_right(values, bound, lo)
            counts[i] += hi - lo
            lo = hi
        counts[-1] += len(values) - lo
        self.sum += sum(values)

    def cumulative(self) -> list[tuple[str, float]]:
        out = []
        total = 0
        for le, n in zip((*map(str, BUCKETS), "+Inf"), self.counts):
            total += n
            out.append((le, float(total)))
        return out


class MetricsObserver:
    """Histograms made from the engine's latency windows: each drain takes the
    samples the core appended since the last one (it counts them, so a drain
    knows exactly how many are new, and how many the windows dropped)."""

    def __init__(self, engine: ReadSide) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._taken = 0
        self.run_time = _Histogram()
        self.queue_wait = _Histogram()
        #: Latency samples lost because the window turned over between drains.
        self.samples_missed = 0
        #: Set once something reads the metrics: until then ticks skip draining.
        self.active = False

    def drain(self) -> None:
        """Take what the engine added since the last drain."""
        with self._lock:
            runs, waits, self._taken, missed = self._engine.new_latency_samples(self._taken)
            self.samples_missed += missed
            if runs:
                self.run_time.observe_many(runs)
                self.queue_wait.observe_many(waits)


def make_registry(engine: ReadSide, observer: MetricsObserver | None = None) -> CollectorRegistry:
    """A private registry holding one collector for ``engine``."""
    require_prometheus()
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(engine, observer or MetricsObserver(engine)))
    return registry


class _Collector:
    """Reads the engine at scrape time (``prometheus_client`` custom collector)."""

    def __init__(self, engine: ReadSide, observer: MetricsObserver) -> None:
        self._engine = engine
        self._observer = observer
        self._schedules: dict[str, tuple[int, int, int, int]] = {}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        obs = self._observer
        obs.active = True
        obs.drain()
        c = self._engine.counters()
        by_state = c.by_state
        yield CounterMetricFamily(
            "procqueue_tasks_submitted", "Tasks submitted.", value=c.submitted
        )
        yield CounterMetricFamily(
            "procqueue_tasks_completed", "Tasks completed.", value=by_state[_COMPLETED]
        )
        failed = CounterMetricFamily(
            "procqueue_tasks_failed",
            "Tasks failed for good, by the final error's qualified type ('other': "
            "types beyond the first 100 seen).",
            labels=["exception"],
        )
        by_type = dict(c.failed_by_type)
        dead_lettered = c.dead_lettered
        with obs._lock:
            run_time = obs.run_time.cumulative(), obs.run_time.sum
            queue_wait = obs.queue_wait.cumulative(), obs.queue_wait.sum
        for exc_type, n in sorted(by_type.items()):
            failed.add_metric([exc_type], n)
        yield failed
        yield CounterMetricFamily(
            "procqueue_tasks_retried", "Attempts that failed and were retried.", value=c.retried
        )
        yield CounterMetricFamily(
            "procqueue_tasks_dead_lettered",
            "Tasks that entered the dead letter queue.",
            value=dead_lettered,
        )
        tasks = GaugeMetricFamily("procqueue_tasks", "Tasks by state.", labels=["state"])
        for state in TaskState:
            tasks.add_metric([state.value], by_state[state.ordinal])
        yield tasks
        yield GaugeMetricFamily(
            "procqueue_dead_letters", "Dead letters held now.", value=c.dead_letters
        )
        workers = GaugeMetricFamily("procqueue_workers", "Worker slots by state.", labels=["state"])
        counts: dict[str, int] = {s: 0 for s in ("stopped", "starting", "ready", "stopping")}
        for worker_state, _, _ in c.slots:
            counts[worker_state] = counts.get(worker_state, 0) + 1
        for worker_state, n in counts.items():
            workers.add_metric([worker_state], n)
        yield workers
        restarts = CounterMetricFamily(
            "procqueue_worker_restarts",
            "Workers replaced: 'crash_or_kill' (a crash, a timeout, a memory or cancel "
            "kill, a failed start) or 'recycle' (max_tasks_per_child, soft memory limit).",
            labels=["reason"],
        )
        restarts.add_metric(["crash_or_kill"], sum(r for _, r, _ in c.slots))
        restarts.add_metric(["recycle"], sum(r for _, _, r in c.slots))
        yield restarts
        yield HistogramMetricFamily(
            "procqueue_task_duration_seconds",
            "Run time of each attempt that returned or raised.",
            buckets=run_time[0],
            sum_value=run_time[1],
        )
        yield HistogramMetricFamily(
            "procqueue_task_queue_wait_seconds",
            "Seconds from submit to the start of the task's attempt.",
            buckets=queue_wait[0],
            sum_value=queue_wait[1],
        )
        runs = CounterMetricFamily(
            "procqueue_schedule_runs",
            "Ticks of each schedule: 'fired' (a run was queued), or skipped for "
            "'overlap', 'misfire' or 'catchup'.",
            labels=["schedule", "outcome"],
        )
        for name, fired, overlap, misfire, catchup, _ in c.schedules:
            self._schedules[name] = (fired, overlap, misfire, catchup)
        for name, (fired, overlap, misfire, catchup) in sorted(self._schedules.items()):
            runs.add_metric([name, "fired"], fired)
            runs.add_metric([name, "overlap"], overlap)
            runs.add_metric([name, "misfire"], misfire)
            runs.add_metric([name, "catchup"], catchup)
        yield runs
        wait = GaugeMetricFamily(
            "procqueue_rate_limit_wait_seconds",
            "Per limit key: seconds its waiting tasks need to start at its tightest "
            "rate (0 when none waits).",
            labels=["key"],
        )
        rows, _ = self._engine.limit_rows(MAX_KEYS)
        for row in rows:
            if row.get("concrete"):
                rates = row["rates"]
                seconds = row["waiting"] / min(rates) if rates and row["waiting"] else 0.0
                wait.add_metric([row["key"]], seconds)
        yield wait
