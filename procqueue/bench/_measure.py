"""Records of what was measured, and the small tools every workload shares.

A :class:`Cell` is one contestant on one workload: per metric, the warm-up
value and the timed repetitions. Its status is ``ok``, ``FAIL`` (a wrong
answer, an exception or a hang: never shown as a time) or ``n/a`` (the library
has no API for the workload). A :class:`WorkloadResult` holds the cells of one
workload in report order.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _tasks
from ._pool import Pool

_log = logging.getLogger("procqueue.bench")

T = TypeVar("T")

OK = "ok"
FAIL = "FAIL"
NA = "n/a"

#: Seconds a pool's shutdown may take before it is abandoned (and FAILs).
CLEANUP_TIMEOUT_S = 30.0
#: Warm-up: each round submits two of these sleeps per worker, until every
#: worker has answered (pools that start workers on demand need a few rounds).
WARM_SLEEP_S = 0.02
WARM_ROUNDS = 10

#: Pools whose shutdown hung and were left behind: their threads may keep the
#: interpreter from exiting, so the CLI leaves with ``os._exit`` when this is set.
ABANDONED: list[str] = []


class AnswerError(AssertionError):
    """A contestant returned a wrong answer: reported as FAIL, never as a time."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`AnswerError` with ``message`` unless ``condition``."""
    if not condition:
        raise AnswerError(message)


@dataclass
class Cell:
    """One contestant on one workload, over the warm-up and the timed rounds."""

    contestant: str
    label: str
    start_method: str = "?"
    status: str = OK
    #: ``"round N, stage: ExceptionType: message"`` for a FAIL, the reason for n/a.
    error: str | None = None
    traceback: str | None = None
    warmup: dict[str, float | None] = field(default_factory=dict)
    reps: dict[str, list[float | None]] = field(default_factory=dict)
    #: Per-round details that are not numbers (errors seen, where a task re-ran).
    notes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def add(self, metrics: dict[str, float | None], *, warm_up: bool) -> None:
        if warm_up:
            self.warmup.update(metrics)
            return
        for name, value in metrics.items():
            self.reps.setdefault(name, []).append(value)

    def values(self, metric: str) -> list[float]:
        """The timed repetitions of ``metric`` that have a value."""
        return [v for v in self.reps.get(metric, []) if v is not None]

    def median(self, metric: str) -> float | None:
        vs = self.values(metric)
        return statistics.median(vs) if vs and self.ok else None

    def spread(self, metric: str) -> tuple[float, float] | None:
        vs = self.values(metric)
        return (min(vs), max(vs)) if vs and self.ok else None

    def fail(self, stage: str, exc: BaseException) -> None:
        self.status = FAIL
        self.error = f"{stage}: {type(exc).__name__}: {exc}"
        self.traceback = "".join(traceback.format_exception(exc))

    def not_applicable(self, why: str) -> None:
        if self.status == OK:
            self.status = NA
            self.error = why

    def summary(self) -> dict[str, Any]:
        """The JSON form: raw values, medians, min and max. A cell that is not
        ``ok`` (FAIL, n/a) has no statistics (``null``): its raw values stay,
        for diagnosis, but no figure is derived from them (a FAIL is never a
        time, ``BENCHMARKS.md`` rule 3)."""
        stats = {}
        for name in self.reps:
            vs = self.values(name) if self.ok else []
            stats[name] = {
                "median": statistics.median(vs) if vs else None,
                "min": min(vs) if vs else None,
                "max": max(vs) if vs else None,
                "reps": self.reps[name],
                "warmup": self.warmup.get(name),
            }
        return {
            "contestant": self.contestant,
            "label": self.label,
            "start_method": self.start_method,
            "status": self.status,
            "error": self.error,
            "traceback": self.traceback,
            "metrics": stats,
            "notes": self.notes,
        }


@dataclass
class WorkloadResult:
    """Every contestant's cell for one workload, in report order."""

    key: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=dict)

    def cell(self, key: str) -> Cell | None:
        return self.cells.get(key)

    def summary(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "params": self.params,
            "results": [c.summary() for c in self.cells.values()],
        }


# --- small tools ---------------------------------------------------------------------


def rotate(items: Sequence[T], by: int) -> list[T]:
    """``items`` rotated left by ``by``: each round starts with the next one, so a
    burst of load from elsewhere lands on every contestant alike."""
    if not items:
        return []
    k = by % len(items)
    return [*items[k:], *items[:k]]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values."""
    n = len(sorted_values)
    rank = max(1, math.ceil(q / 100 * n))
    return sorted_values[min(n, rank) - 1]


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """``(seconds, fn())`` on the monotonic high-resolution clock."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def warm_workers(pool: Pool, workers: int, timeout: float) -> set[int]:
    """Run short sleeps until every worker has answered once (pools that start
    workers on demand, ``ProcessPoolExecutor`` under forkserver, need this), so
    no timed run pays for a worker's start. Returns the pids seen."""
    seen: set[int] = set()
    if not pool.is_process_pool:
        return seen
    for _ in range(WARM_ROUNDS):
        pids = pool.run_all(_tasks.worker_pid, [(WARM_SLEEP_S,)] * (2 * workers), timeout)
        check(all(isinstance(p, int) and p > 0 for p in pids), f"bad pids {pids!r}")
        seen.update(pids)
        if len(seen) >= workers:
            break
    return seen


def close_within(pool: Pool, timeout: float, *, broken: bool = False) -> bool:
    """Close ``pool`` in a helper thread; ``False`` if it had not finished within
    ``timeout`` seconds. A shutdown that hangs is usually waiting on a worker:
    the workers are then killed (only one pool is alive at a time, so every
    child but multiprocessing's helpers is this pool's) and the close gets a
    few more seconds; after that the pool is abandoned (its threads daemonic)."""
    error: list[BaseException] = []

    def close() -> None:
        try:
            pool.close(broken=broken)
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=close, name="bench-close", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        _log.warning("closing %s hung %.0f s: killing its workers", type(pool).__name__, timeout)
        reap_strays()
        t.join(5.0)
    if t.is_alive():
        ABANDONED.append(type(pool).__name__)
        return False
    if error:
        _log.warning("closing %s raised %r", type(pool).__name__, error[0])
    return True


def reap_strays() -> list[int]:
    """Kill child processes that outlived their pools (an abandoned pool's
    workers); multiprocessing's own helpers (forkserver, resource trackers) are
    left alone: they end with this process. Returns the pids killed."""
    import psutil

    killed = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            if "forkserver" in cmd or "resource_tracker" in cmd:
                continue
            child.kill()
            killed.append(child.pid)
        except psutil.Error:
            pass
    if killed:
        _log.warning("killed %d process(es) left by abandoned pools: %s", len(killed), killed)
    return killed
