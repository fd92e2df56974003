"""Does reading state stall the engine? Tiny-task throughput under observers.

Tiny tasks (``add_one``) are submitted one by one and then gathered, as in the
suite's ``tiny`` workload, under four variants: ``none`` (the baseline);
``ticker``, a thread waking at ``--hz`` that calls nothing (what any such thread
costs); ``get_stats``, another thread calling ``get_stats()`` at ``--hz``
(target: under 3 % of throughput at 100 Hz); ``slow listener``, a subscribed
listener that blocks ``--listener-ms`` per call. Each round opens a fresh pool
with the same settings and runs the four in an order rotated by one each round,
so each goes first in turn; round 0 is the warm-up. Exit status 1 only for a
wrong answer or an error, never for speed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FuturesTimeout
from datetime import datetime, timezone

from procqueue import ProcQueue, TaskStatus
from procqueue.bench import _tasks
from procqueue.bench._context import footer

_log = logging.getLogger("observer_overhead")
VARIANTS = ("none", "ticker", "get_stats", "slow listener")
Metrics = dict[str, float]


def add_one(x: int) -> int:
    """The tiny task, defined in ``__main__`` (it travels by value under cloudpickle)."""
    return x + 1


class StatsPoller(threading.Thread):
    """Calls ``get_stats()`` every ``1/hz`` s on a fixed schedule (no drift), timing each."""

    def __init__(self, pool: ProcQueue, hz: float, call: Callable[[], object]) -> None:
        super().__init__(name="stats-poller", daemon=True)
        self.call, self.period, self.stop = call, 1.0 / hz, threading.Event()
        self.seconds: list[float] = []
        self.error: Exception | None = None

    def run(self) -> None:
        due = time.perf_counter()
        while not self.stop.wait(max(0.0, due - time.perf_counter())):
            t0 = time.perf_counter()
            try:
                self.call()
            except Exception as e:  # reported as the variant's FAIL
                self.error = e
                return
            self.seconds.append(time.perf_counter() - t0)
            due += self.period


def run_variant(
    pool: ProcQueue, fn: Callable[[int], int], variant: str, args: argparse.Namespace
) -> Metrics:
    """One timed run of ``args.tasks`` tiny tasks under ``variant``; checks the sum."""
    n, pause, events = args.tasks, threading.Event(), [0]
    # "ticker": a thread waking as often, doing nothing: what any 100 Hz
    # thread costs the process (the GIL), apart from what get_stats() costs.
    poller = None
    if variant == "get_stats":
        poller = StatsPoller(pool, args.hz, pool.get_stats)
    elif variant == "ticker":
        poller = StatsPoller(pool, args.hz, lambda: None)

    timed = threading.Event()

    def slow_listener(status: TaskStatus) -> None:
        if timed.is_set():
            return  # the timed run is over: let the backlog drain at once
        events[0] += 1
        pause.wait(args.listener_ms / 1000)  # blocks, as a listener doing I/O would

    unsubscribe = pool.subscribe(slow_listener) if variant == "slow listener" else None
    if poller is not None:
        poller.start()
    futures = []
    try:
        t0 = time.perf_counter()
        submit = pool.submit
        futures = [submit(fn, i) for i in range(n)]
        deadline = t0 + args.timeout
        try:
            got = sum(f.result(max(0.0, deadline - time.perf_counter())) for f in futures)
        except FuturesTimeout:
            raise FuturesTimeout(f"not done within --timeout {args.timeout:g} s") from None
        wall = time.perf_counter() - t0
    finally:
        timed.set()
        if unsubscribe is not None:
            unsubscribe()
        if poller is not None:
            poller.stop.set()
            poller.join()
        for f in futures:
            f.cancel()  # after an error: leave nothing queued for the next variant
    if poller is not None and poller.error is not None:
        raise poller.error
    if got != n * (n + 1) // 2:
        raise AssertionError(f"sum {got}, expected {n * (n + 1) // 2}")
    out: Metrics = {"tasks_per_s": n / wall}
    if poller is not None and poller.seconds:
        out["hz"] = len(poller.seconds) / wall
        out["stats_p50_ms"] = statistics.median(poller.seconds) * 1000
        out["stats_max_ms"] = max(poller.seconds) * 1000
    if unsubscribe is not None:
        out["events_per_task"] = events[0] / n
    return out


def spread(values: list[float], fmt: str) -> str:
    """``median (min-max)`` of the timed rounds."""
    if not values:
        return "—"
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def measure(args: argparse.Namespace) -> tuple[dict[str, list[Metrics]], dict[str, str], str]:
    """Every round's metrics per variant (warm-up left out), the FAILs, the start method."""
    fn = _tasks.add_one if args.importable else add_one
    reps: dict[str, list[Metrics]] = {v: [] for v in VARIANTS}
    failed: dict[str, str] = {}
    method = "?"
    for rnd in range(args.reps + 1):
        with ProcQueue(max_workers=args.workers, start_method=args.start_method) as pool:
            method = pool.start_method
            list(pool.map(fn, range(8 * args.workers)))  # every worker up and answering
            pool.get_stats()  # psutil's first cpu_percent reading only primes it
            got: dict[str, Metrics] = {}
            k = rnd % len(VARIANTS)
            for variant in VARIANTS[k:] + VARIANTS[:k]:
                if variant in failed:
                    continue
                try:
                    got[variant] = m = run_variant(pool, fn, variant, args)
                except Exception as e:  # a wrong answer, an error or a hang: FAIL
                    failed[variant] = f"round {rnd}: {type(e).__name__}: {e}"
                    _log.error("FAIL %s: %s", variant, failed[variant])
                    continue
                warm = " (warm-up)" if rnd == 0 else ""
                _log.info("round %d%s %-13s %9.0f tasks/s", rnd, warm, variant, m["tasks_per_s"])
        if rnd == 0:
            continue  # the warm-up never enters a median
        for variant, m in got.items():
            if "none" in got:
                m["ratio"] = m["tasks_per_s"] / got["none"]["tasks_per_s"]
            reps[variant].append(m)
    return reps, failed, method


def report(args: argparse.Namespace, started: datetime) -> int:
    reps, failed, method = measure(args)
    how = "by reference" if args.importable else "by value"
    task = f"{'procqueue.bench._tasks' if args.importable else '__main__'}.add_one ({how})"
    print(f"# Observer overhead: {args.tasks:,} tiny tasks, one by one, then gathered\n")
    print(
        f"{args.workers} workers, start method {method}, task {task}; {args.reps} timed rounds "
        "after a warm-up round, a fresh pool per round, variants rotated each round.\n"
    )
    print("| observer | vs none | tasks/s | observer figures |\n|---|---|---|---|")
    labels = {
        "none": "none",
        "ticker": f"a thread waking at {args.hz:g} Hz, no call",
        "get_stats": f"get_stats() at {args.hz:g} Hz",
        "slow listener": f"listener blocking {args.listener_ms:g} ms",
    }
    for v in VARIANTS:
        label = labels[v]
        if v in failed:
            print(f"| {label} | FAIL | FAIL | {failed[v]} |")
            continue

        def col(key: str, runs: list[Metrics] = reps[v]) -> list[float]:
            return [m[key] for m in runs if key in m]

        ratio, extra = spread(col("ratio"), ".3f"), ""
        if v == "none":
            ratio = "baseline"
        elif v in ("get_stats", "ticker"):
            extra = (
                f"{spread(col('hz'), '.0f')} calls/s done; one call takes p50 "
                f"{spread(col('stats_p50_ms'), '.3f')} ms, "
                f"max {spread(col('stats_max_ms'), '.2f')} ms"
            )
        else:
            per_task = col("events_per_task")
            cap = 1000 / (3 * args.listener_ms)  # three statuses a task: pending, running, done
            extra = (
                f"{spread(per_task, '.2f')} calls per task within the timed run (listeners "
                f"run in their own thread; run inline this one would cap throughput at "
                f"{cap:,.0f} tasks/s)"
            )
        print(f"| {label} | {ratio} | {spread(col('tasks_per_s'), ',.0f')} | {extra} |")
    print(
        "\nMedian (min-max) over the timed rounds; 'vs none' is variant / none in the same round."
    )
    ratios = [m["ratio"] for m in reps["get_stats"] if "ratio" in m]
    if ratios and args.hz == 100:
        cost = 1 - statistics.median(ratios)
        verdict = "met" if cost < 0.03 else "NOT met"
        print(
            "Target: get_stats() at 100 Hz costs < 3 % of tiny-task throughput: "
            f"{verdict} ({cost:.1%})."
        )
        ticks = [m["ratio"] for m in reps["ticker"] if "ratio" in m]
        if ticks:
            print(
                f"Of which any thread waking at 100 Hz costs {1 - statistics.median(ticks):.1%} "
                "(the ticker row): the rest is get_stats() itself."
            )
    print(footer(started))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--tasks", type=int, default=20_000, help="tiny tasks per run (20000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--reps", type=int, default=5, help="timed rounds after the warm-up (5, >= 3)")
    methods = ("fork", "forkserver", "spawn")
    p.add_argument("--start-method", choices=methods, help="default: procqueue's own")
    p.add_argument("--hz", type=float, default=100.0, help="get_stats() calls per second (100)")
    p.add_argument("--listener-ms", type=float, default=1.0, help="listener's block (1 ms)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take (600)")
    p.add_argument("--importable", action="store_true", help="run an importable add_one")
    args = p.parse_args(argv)
    if args.reps < 3:
        p.error("--reps must be at least 3")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return report(args, datetime.now(timezone.utc))


if __name__ == "__main__":
    sys.exit(main())
