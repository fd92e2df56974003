"""First comparative benchmark: procqueue next to the standard library, in one run.

Contestants, all with the same worker count and (for process pools) the same
start method::

    sequential      a plain loop in this process (the reference for efficiency)
    threads         concurrent.futures.ThreadPoolExecutor
    ppe             concurrent.futures.ProcessPoolExecutor   (the baseline for ratios)
    mp.Pool         multiprocessing.Pool, apply_async one call at a time
    ProcQueue       procqueue's concurrent.futures front door
    TaskQueue       procqueue's asyncio front door

Workloads (see ../../shared/BENCHMARKS.md, item 5; this is the first cut):

* ``tiny``: ``add_one(x) = x + 1`` submitted one by one; tasks/s.
* ``cpu``: a pure-Python loop calibrated at start-up to ~20 ms sequentially;
  parallel efficiency = sequential time / (wall time x workers).

How it is measured, per workload: a warm-up round, then ``--reps`` timed rounds.
In each round every contestant runs once, the order rotated by one each round so
that a burst of load on a shared machine lands on all of them alike, and each on
a fresh pool, so no other pool's threads or processes are alive while it is timed
(nor during a fork). For one contestant in one round: build the pool and time
"start to first result" (one ``add_one``); warm it with two short sleeps per
worker until every worker has answered (``ProcessPoolExecutor`` starts workers on
demand under spawn/forkserver) and a 5 % slice of the workload; time one whole
run (submit everything, collect every result); time the shutdown. Pool start-up
is never inside the throughput timing. Every run's answer, slices included, is
checked against a known sum: a wrong answer or an exception is reported as FAIL,
never as a time, and that contestant sits out the remaining rounds.

Usage::

    python benchmarks/bench_core.py                 # full run, fork
    python benchmarks/bench_core.py --quick         # CI smoke run, well under 60 s
    python benchmarks/bench_core.py --start-method spawn --workers 4 --out /tmp/b

The markdown report goes to stdout, progress to stderr, and a JSON file with the
raw times and the context (date, Python, nproc, start methods, package versions,
command line) to ``--out``. Exit status: 0 when every answer was right, 1 when
any contestant FAILed (or crashed); never anything for being slow.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any, Protocol

from procqueue import ProcQueue, TaskQueue

_log = logging.getLogger("bench_core")

Call = tuple[Any, ...]
TaskFn = Callable[..., int]

BASELINE = "ppe"
SEQUENTIAL = "sequential"
CONTESTANTS = ("sequential", "threads", "ppe", "mp.Pool", "ProcQueue", "TaskQueue")
LABELS = {
    "sequential": "sequential (loop)",
    "threads": "ThreadPoolExecutor",
    "ppe": "ProcessPoolExecutor",
    "mp.Pool": "multiprocessing.Pool",
    "ProcQueue": "procqueue ProcQueue",
    "TaskQueue": "procqueue TaskQueue (asyncio)",
}
PROCESS_POOLS = frozenset({"ppe", "mp.Pool", "ProcQueue", "TaskQueue"})
PACKAGES = (
    "procqueue",
    "cloudpickle",
    "psutil",
    "loky",
    "joblib",
    "pebble",
    "mpire",
    "matplotlib",
)

PQ_DEFAULT_RETAIN = 10_000
WARM_SLEEP_S = 0.05
WARM_ROUNDS = 10
CLEANUP_TIMEOUT_S = 30.0


# --- tasks: top-level functions, pickled by reference ------------------------------


def add_one(x: int) -> int:
    return x + 1


def spin(iterations: int) -> int:
    """Pure-Python CPU work; deterministic, so its value can be checked."""
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


def cpu_task(index: int, iterations: int) -> int:
    return index + spin(iterations)


def worker_pid(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


# --- workloads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """``fn(*call)`` returns ``call[0] + unit`` for every call, so any subset of
    the calls has a known sum."""

    key: str
    title: str
    fn: TaskFn
    calls: list[Call]
    unit: int

    def expected_for(self, calls: Sequence[Call]) -> int:
        return int(sum(c[0] for c in calls)) + len(calls) * self.unit

    @property
    def expected(self) -> int:
        return self.expected_for(self.calls)


def tiny_workload(n: int) -> Workload:
    calls: list[Call] = [(i,) for i in range(n)]
    return Workload(
        "tiny", f"Tiny tasks, one by one: {n:,} x add_one(x) = x + 1", add_one, calls, 1
    )


def cpu_workload(n: int, iterations: int, task_ms: float) -> Workload:
    calls: list[Call] = [(i, iterations) for i in range(n)]
    title = f"CPU-bound tasks: {n} x ~{task_ms:.1f} ms pure-Python loop ({iterations:,} iterations)"
    return Workload("cpu", title, cpu_task, calls, spin(iterations))


def calibrate(target_ms: float) -> tuple[int, float]:
    """Iterations of :func:`spin` that take ``target_ms`` here, sequentially, and
    the time (ms) they were last measured at.

    Uses the fastest of several samples: on a shared machine noise only ever adds
    time, and one slow sample would otherwise shrink every task.
    """
    iterations = 10_000
    while True:
        t0 = time.perf_counter()
        spin(iterations)
        elapsed = time.perf_counter() - t0
        if elapsed >= 0.005:
            break
        iterations *= 2
    for _ in range(4):  # scale, re-measure; stop once within 5 %
        iterations = max(1, round(iterations * target_ms / 1000 / elapsed))
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            spin(iterations)
            samples.append(time.perf_counter() - t0)
        elapsed = min(samples)
        if abs(elapsed * 1000 / target_ms - 1) < 0.05:
            break
    return iterations, elapsed * 1000


# --- contestants: one runner per pool ----------------------------------------------


class Runner(Protocol):
    start_method: str

    def run(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[int]:
        """Submit every call, one by one; return the results in order."""

    def close(self) -> None: ...


def _collect(futures: list[Future[int]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]


class SequentialRunner:
    start_method = "n/a (in-process)"

    def run(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[int]:
        return [fn(*args) for args in calls]

    def close(self) -> None:
        pass


class ExecutorRunner:
    """Threads, ProcessPoolExecutor and ProcQueue: all ``Executor.submit``."""

    def __init__(
        self, executor: ThreadPoolExecutor | ProcessPoolExecutor | ProcQueue, start_method: str
    ) -> None:
        self.executor = executor
        self.start_method = start_method

    def run(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[int]:
        submit = self.executor.submit
        return _collect([submit(fn, *args) for args in calls], timeout)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class MpPoolRunner:
    def __init__(self, workers: int, start_method: str) -> None:
        ctx = multiprocessing.get_context(start_method)
        self.pool: Pool = ctx.Pool(processes=workers)
        self.start_method = ctx.get_start_method()

    def run(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[int]:
        apply_async = self.pool.apply_async
        handles = [apply_async(fn, args) for args in calls]
        deadline = time.monotonic() + timeout
        return [h.get(timeout=max(0.0, deadline - time.monotonic())) for h in handles]

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class TaskQueueRunner:
    """The asyncio front door, driven from a private event loop: each run is one
    ``run_until_complete`` of "submit all, then gather every result"."""

    def __init__(self, workers: int, start_method: str, options: dict[str, int]) -> None:
        self.loop = asyncio.new_event_loop()
        self.queue = TaskQueue(
            num_workers=workers,
            start_method=start_method,
            prefetch=options["prefetch"],
            retain_finished=options["retain_finished"],
        )
        self.start_method = start_method
        self.loop.run_until_complete(self.queue.start())

    async def _run(self, fn: TaskFn, calls: Sequence[Call]) -> list[int]:
        queue = self.queue
        ids = [await queue.submit(fn, *args) for args in calls]
        return list(await asyncio.gather(*(queue.result(t) for t in ids)))

    def run(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[int]:
        return self.loop.run_until_complete(asyncio.wait_for(self._run(fn, calls), timeout))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.queue.stop())
        finally:
            self.loop.close()


def open_runner(name: str, workers: int, start_method: str, pq_options: dict[str, int]) -> Runner:
    if name == "sequential":
        return SequentialRunner()
    if name == "threads":
        return ExecutorRunner(ThreadPoolExecutor(max_workers=workers), "n/a (threads)")
    if name == "ppe":
        ctx = multiprocessing.get_context(start_method)
        return ExecutorRunner(
            ProcessPoolExecutor(max_workers=workers, mp_context=ctx), ctx.get_start_method()
        )
    if name == "mp.Pool":
        return MpPoolRunner(workers, start_method)
    if name == "ProcQueue":
        pool = ProcQueue(
            max_workers=workers,
            start_method=start_method,
            prefetch=pq_options["prefetch"],
            retain_finished=pq_options["retain_finished"],
        )
        return ExecutorRunner(pool, start_method)
    if name == "TaskQueue":
        return TaskQueueRunner(workers, start_method, pq_options)
    raise ValueError(f"unknown contestant {name!r}")


# --- measuring ---------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


@dataclass
class Measurement:
    """One contestant on one workload, over every round. Round 0 is the warm-up:
    its figures are kept apart and never enter the medians."""

    contestant: str
    label: str
    start_method: str = "?"
    status: str = "ok"  # "ok" or "FAIL"
    error: str | None = None  # "round N, stage: ExceptionType: message"
    traceback: str | None = None
    workers_seen: list[int] = field(default_factory=list)
    warmup_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    start_to_first_result_s: list[float] = field(default_factory=list)
    shutdown_s: list[float] = field(default_factory=list)

    def fail(self, stage: str, exc: BaseException) -> None:
        self.status = "FAIL"
        if self.error is None:
            self.error = f"{stage}: {type(exc).__qualname__}: {exc}"
            self.traceback = "".join(traceback.format_exception(exc))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def median(self) -> float | None:
        return _median(self.times_s) if self.ok else None

    def summary(self) -> dict[str, Any]:
        return asdict(self) | {
            "median_s": self.median,
            "start_to_first_result_median_s": _median(self.start_to_first_result_s),
            "shutdown_median_s": _median(self.shutdown_s),
        }


def _close_with_timeout(runner: Runner, timeout: float) -> bool:
    """Close a runner that has failed; give up (leave it behind) if it hangs."""
    done = threading.Event()

    def target() -> None:
        try:
            runner.close()
        except Exception:
            _log.exception("closing a failed pool raised")
        finally:
            done.set()

    threading.Thread(target=target, name="bench-cleanup", daemon=True).start()
    return done.wait(timeout)


def procqueue_options(args: argparse.Namespace) -> dict[str, int]:
    """Keywords given to both procqueue front doors."""
    return {"prefetch": args.prefetch, "retain_finished": args.retain_finished}


def _checked_run(runner: Runner, wl: Workload, calls: Sequence[Call], timeout: float) -> float:
    """Run ``calls`` once; the wall time, or raise on a wrong answer."""
    t0 = time.perf_counter()
    results = runner.run(wl.fn, calls, timeout)
    elapsed = time.perf_counter() - t0
    total, expected = sum(results), wl.expected_for(calls)
    if len(results) != len(calls) or total != expected:
        raise AssertionError(
            f"wrong answer: {len(results)} results summing to {total}, "
            f"expected {len(calls)} summing to {expected}"
        )
    return elapsed


def measure_round(m: Measurement, wl: Workload, rnd: int, args: argparse.Namespace) -> bool:
    """One round for one contestant, on a fresh pool: start it, time the first
    result, warm every worker and run a slice of the workload (untimed), time one
    whole run, time the shutdown. Round 0 is the warm-up round. Returns whether
    the pool was closed (``False``: its cleanup hung and was abandoned)."""
    name = m.contestant
    stage = f"round {rnd}, start-up"
    runner: Runner | None = None
    try:
        t0 = time.perf_counter()
        runner = open_runner(name, args.workers, args.start_method, procqueue_options(args))
        m.start_method = runner.start_method
        first = runner.run(add_one, [(41,)], args.timeout)
        first_s = time.perf_counter() - t0
        if first != [42]:
            raise AssertionError(f"first result {first!r}, expected [42]")

        stage = f"round {rnd}, warming the workers"
        seen: set[int] = set()
        for _ in range(WARM_ROUNDS):  # until every worker has run a task
            seen.update(
                runner.run(worker_pid, [(WARM_SLEEP_S,)] * (2 * args.workers), args.timeout)
            )
            if len(seen) >= args.workers or name not in PROCESS_POOLS:
                break
        stage = f"round {rnd}, warm-up slice"
        k = max(2 * args.workers, len(wl.calls) // 20)
        _checked_run(runner, wl, wl.calls[:k], args.timeout)

        stage = f"round {rnd}, {'warm-up run' if rnd == 0 else 'timed run'}"
        elapsed = _checked_run(runner, wl, wl.calls, args.timeout)

        stage = f"round {rnd}, shutdown"
        t0 = time.perf_counter()
        live, runner = runner, None
        live.close()
        shutdown_s = time.perf_counter() - t0
    except Exception as exc:
        _log.exception("%s raised during %s", m.label, stage)
        m.fail(stage, exc)
    else:
        if name in PROCESS_POOLS:
            m.workers_seen.append(len(seen))
        if rnd == 0:
            m.warmup_s = elapsed
        else:
            m.times_s.append(elapsed)
            m.start_to_first_result_s.append(first_s)
            m.shutdown_s.append(shutdown_s)
    if runner is None:
        return True
    closed = _close_with_timeout(runner, CLEANUP_TIMEOUT_S)
    if not closed:
        _log.error("%s: cleanup hung for %.0f s; abandoned", m.label, CLEANUP_TIMEOUT_S)
    return closed


def measure_workload(
    wl: Workload, contestants: list[str], args: argparse.Namespace
) -> tuple[list[Measurement], bool]:
    """Round 0 (warm-up) then ``args.reps`` timed rounds; in each round every
    contestant still standing runs once, the order rotated by one each round, so
    a burst of load on a shared machine lands on all contestants alike."""
    results = [Measurement(name, LABELS[name]) for name in contestants]
    all_closed = True
    for rnd in range(args.reps + 1):
        shift = rnd % len(results)
        for m in results[shift:] + results[:shift]:
            if m.ok:
                all_closed &= measure_round(m, wl, rnd, args)
        _log.info(
            "%s: round %d/%d done%s", wl.key, rnd, args.reps, " (warm-up)" if rnd == 0 else ""
        )
    for m in results:
        if m.ok:
            _log.info(
                "%s: %s median %.4f s (min %.4f, max %.4f)",
                wl.key,
                m.label,
                statistics.median(m.times_s),
                min(m.times_s),
                max(m.times_s),
            )
    return results, all_closed


# --- reporting ---------------------------------------------------------------------


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def _pool_cells(m: Measurement) -> str:
    """Start-up to first result and shutdown (medians over the timed rounds), and
    the workers that answered the warm-up (the fewest over the rounds)."""
    seen = str(min(m.workers_seen)) if m.workers_seen else "—"
    return (
        f"{_fmt_s(_median(m.start_to_first_result_s))} | {_fmt_s(_median(m.shutdown_s))} | {seen}"
    )


def _speed_vs(base: Measurement | None, m: Measurement) -> str:
    if base is None or base.median is None or m.median is None:
        return "n/a"
    return f"{base.median / m.median:.2f}x"


def report_tiny(wl: Workload, results: list[Measurement], args: argparse.Namespace) -> str:
    n = len(wl.calls)
    base = next((m for m in results if m.contestant == BASELINE), None)
    lines = [
        f"### {wl.title}",
        "",
        f"workers={args.workers}; {args.reps} timed rounds after a warm-up round, "
        "each on a fresh pool, contestants interleaved. "
        "'vs PPE' = ProcessPoolExecutor's median time / this one's (>1: faster).",
        "",
        "| contestant | start method | vs PPE | tasks/s median | tasks/s min | tasks/s max "
        "| start→1st result | shutdown | workers seen | answer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in results:
        if m.ok and m.median is not None:
            rates = (n / m.median, n / max(m.times_s), n / min(m.times_s))
            cells = [_fmt_rate(r) for r in rates]
        else:
            cells = ["—"] * 3
        lines.append(
            f"| {m.label} | {m.start_method} | {_speed_vs(base, m)} | {' | '.join(cells)} "
            f"| {_pool_cells(m)} | {m.status} |"
        )
    return "\n".join(lines)


def report_cpu(wl: Workload, results: list[Measurement], args: argparse.Namespace) -> str:
    base = next((m for m in results if m.contestant == BASELINE), None)
    seq = next((m for m in results if m.contestant == SEQUENTIAL), None)
    seq_time = seq.median if seq is not None else None
    lines = [
        f"### {wl.title}",
        "",
        f"workers={args.workers}; {args.reps} timed rounds after a warm-up round, "
        "each on a fresh pool, contestants interleaved. "
        "'vs PPE' = ProcessPoolExecutor's median time / this one's (>1: faster). "
        "efficiency = sequential median / (wall x workers); min-max from the "
        "fastest and slowest round.",
        "",
        "| contestant | start method | vs PPE | efficiency median (min-max) | wall median "
        "| wall min | wall max | start→1st result | shutdown | workers seen | answer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in results:
        if m.contestant == SEQUENTIAL:
            eff = "reference"
        elif m.ok and m.median is not None and seq_time is not None:
            w = args.workers
            e_med = seq_time / (m.median * w)
            e_lo, e_hi = seq_time / (max(m.times_s) * w), seq_time / (min(m.times_s) * w)
            eff = f"{e_med:.2f} ({e_lo:.2f}-{e_hi:.2f})"
        else:
            eff = "n/a"
        walls = (
            [_fmt_s(m.median), _fmt_s(min(m.times_s)), _fmt_s(max(m.times_s))]
            if m.ok and m.times_s
            else ["—"] * 3
        )
        lines.append(
            f"| {m.label} | {m.start_method} | {_speed_vs(base, m)} | {eff} "
            f"| {' | '.join(walls)} | {_pool_cells(m)} | {m.status} |"
        )
    return "\n".join(lines)


def headline(wl: Workload, results: list[Measurement], workers: int) -> list[str]:
    """Ratio first, then the absolute numbers, for procqueue's two front doors."""
    base = next((m for m in results if m.contestant == BASELINE), None)
    seq = next((m for m in results if m.contestant == SEQUENTIAL), None)
    out = []
    for m in results:
        if m.contestant not in ("ProcQueue", "TaskQueue"):
            continue
        if not m.ok:
            out.append(f"- {wl.key}: {m.label} FAIL ({m.error})")
            continue
        if base is None or base.median is None or m.median is None:
            continue
        ratio = base.median / m.median
        if wl.key == "tiny":
            n = len(wl.calls)
            out.append(
                f"- {wl.key}: {m.label} {ratio:.2f}x ProcessPoolExecutor "
                f"({n / m.median:,.0f} vs {n / base.median:,.0f} tasks/s)"
            )
        else:
            eff = ""
            if seq is not None and seq.median is not None:
                eff = (
                    f"; efficiency {seq.median / (m.median * workers):.2f} "
                    f"vs {seq.median / (base.median * workers):.2f}"
                )
            out.append(
                f"- {wl.key}: {m.label} {ratio:.2f}x ProcessPoolExecutor "
                f"({m.median:.3f} s vs {base.median:.3f} s wall{eff})"
            )
    return out


def _load(loadavg: list[float] | None) -> str:
    return "n/a" if loadavg is None else f"{loadavg[0]:.2f}"


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def context(args: argparse.Namespace, started: datetime) -> dict[str, Any]:
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "cpus_usable": affinity,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "workers": args.workers,
        "start_method": args.start_method,
        "procqueue_options": procqueue_options(args),
        "reps": args.reps,
        "quick": args.quick,
        "packages": _versions(),
        "git": _git_commit(),
    }


# --- main --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    p.add_argument(
        "--start-method",
        default="fork",
        choices=multiprocessing.get_all_start_methods(),
        help="start method for every process pool (default fork)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for a CI smoke run (well under 60 s on 2 cores)",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=None,
        help="timed repetitions after the warm-up (>= 3; default 5, quick 3)",
    )
    p.add_argument(
        "--tiny-tasks",
        type=int,
        default=None,
        help="calls in the tiny workload (default 20000, quick 1000)",
    )
    p.add_argument(
        "--cpu-tasks",
        type=int,
        default=None,
        help="calls in the CPU workload (default 40 x workers, quick 8 x workers)",
    )
    p.add_argument(
        "--task-ms",
        type=float,
        default=20.0,
        help="sequential duration of one CPU task (default 20 ms)",
    )
    p.add_argument("--prefetch", type=int, default=1, help="procqueue prefetch (default 1)")
    p.add_argument(
        "--retain-finished",
        type=int,
        default=None,
        help="procqueue retain_finished (default: procqueue's 10000, raised to fit one "
        "run's tasks: TaskQueue.result(id) needs the finished task still retained)",
    )
    p.add_argument(
        "--only",
        default=",".join(CONTESTANTS),
        help=f"comma-separated contestants (default all: {','.join(CONTESTANTS)})",
    )
    p.add_argument("--workloads", default="tiny,cpu", help="comma-separated: tiny,cpu")
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds one run may take before it counts as hung (FAIL)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="directory for the JSON result (default bench-results/)",
    )
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    if args.reps < 3:
        p.error("--reps must be at least 3")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.tiny_tasks is None:
        args.tiny_tasks = 1_000 if args.quick else 20_000
    if args.cpu_tasks is None:
        args.cpu_tasks = (8 if args.quick else 40) * args.workers
    if args.retain_finished is None:
        # Submit-all-then-gather asks for the first result after the whole run is
        # queued; with the default bound the oldest ids may already be forgotten.
        args.retain_finished = max(PQ_DEFAULT_RETAIN, args.tiny_tasks + 64, args.cpu_tasks + 64)
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(args.only) - set(CONTESTANTS)
    if unknown:
        p.error(f"unknown contestant(s): {', '.join(sorted(unknown))}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if set(args.workloads) - {"tiny", "cpu"}:
        p.error("--workloads takes tiny and/or cpu")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    ctx = context(args, started)
    contestants = [c for c in CONTESTANTS if c in args.only]  # sequential first

    workloads: list[Workload] = []
    if "tiny" in args.workloads:
        workloads.append(tiny_workload(args.tiny_tasks))
    if "cpu" in args.workloads:
        iterations, measured_ms = calibrate(args.task_ms)
        _log.info("calibrated: %d iterations = %.1f ms", iterations, measured_ms)
        ctx["cpu_calibration"] = {
            "iterations": iterations,
            "measured_ms": measured_ms,
            "target_ms": args.task_ms,
        }
        workloads.append(cpu_workload(args.cpu_tasks, iterations, measured_ms))

    all_closed = True
    sections: list[str] = []
    headlines: list[str] = []
    raw: dict[str, Any] = {}
    for wl in workloads:
        results, closed = measure_workload(wl, contestants, args)
        all_closed &= closed
        report = report_tiny if wl.key == "tiny" else report_cpu
        sections.append(report(wl, results, args))
        headlines += headline(wl, results, args.workers)
        raw[wl.key] = {
            "title": wl.title,
            "tasks": len(wl.calls),
            "expected_sum": wl.expected,
            "results": [m.summary() for m in results],
        }

    failed = [
        f"{wl_key}/{r['contestant']}"
        for wl_key, data in raw.items()
        for r in data["results"]
        if r["status"] != "ok"
    ]
    wall = time.perf_counter() - t_start
    ctx["wall_s"] = wall
    ctx["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    md = [
        f"## procqueue core benchmark ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Python {platform.python_version()}, nproc {ctx['nproc']}, workers {args.workers}, "
        f"start method {args.start_method} for every process pool, procqueue "
        f"{ctx['packages']['procqueue']} (prefetch {args.prefetch}, retain_finished "
        f"{args.retain_finished}); `{ctx['command']}`",
        "",
        *(headlines or ["- (no procqueue contestant, or no ProcessPoolExecutor baseline)"]),
        "",
        *[s + "\n" for s in sections],
        f"Total wall time {wall:.1f} s; load average (1 min) {_load(ctx['loadavg_at_start'])} "
        f"at start, {_load(ctx['loadavg_at_end'])} at end. "
        + (f"FAIL: {', '.join(failed)}" if failed else "Every answer checked: all correct."),
    ]
    text = "\n".join(md)
    print(text, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_core-{started:%Y%m%dT%H%M%SZ}"
    json_path = args.out / f"{stem}.json"
    json_path.write_text(
        json.dumps({"context": ctx, "workloads": raw, "failed": failed}, indent=2) + "\n"
    )
    (args.out / f"{stem}.md").write_text(text + "\n")
    _log.info("wrote %s", json_path)

    status = 1 if failed else 0
    if not all_closed:
        # A hung pool's threads could keep the interpreter from exiting.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    # Re-import this file under its own module name and run that copy, so the task
    # functions are ``bench_core.add_one`` rather than ``__main__.add_one``:
    # cloudpickle (procqueue) ships functions defined in ``__main__`` by value, the
    # stdlib pickle by reference; through a named module every contestant sends the
    # same small by-reference pickle. Workers import it via the parent's sys.path.
    _name = __spec__.name if __spec__ is not None else Path(__file__).stem
    sys.exit(importlib.import_module(_name).main())
