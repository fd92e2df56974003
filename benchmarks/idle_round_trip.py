"""Idle round trip, as a script does it: ``pool.submit(f, x).result()`` one
call at a time, ``f`` defined in this ``__main__``.

Side by side in one process tree, in rotated order each round: procqueue's
``ProcQueue`` on a *cold* pool (workers start on demand, so one-at-a-time use
starts one worker and leaves the other slots empty), ``ProcQueue`` on a *warm*
pool (every worker started first, as ``python -m procqueue.bench`` does), and
``concurrent.futures.ProcessPoolExecutor``. Prints each one's p50 and p99 per
round, then the median of the per-round ratios against the executor.

    python benchmarks/idle_round_trip.py [--trips 3000] [--rounds 3] [--workers 2]

It found that the submit-side dispatch (``Engine._step_here``) was off on a
cold pool: its p50 was the warm pool's plus the hop to the coordinator thread
and back (754337d).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor

from procqueue import ProcQueue

_log = logging.getLogger("idle_round_trip")


def add_one(x: int) -> int:
    return x + 1


def _hold(seconds: float) -> float:
    time.sleep(seconds)  # keeps a worker busy so that the next one starts
    return seconds


def _trips(pool: Executor, trips: int) -> tuple[float, float]:
    """p50 and p99 in microseconds, after 200 untimed trips."""
    for i in range(200):
        assert pool.submit(add_one, i).result() == i + 1
    times = []
    clock = time.perf_counter
    for i in range(trips):
        t0 = clock()
        value = pool.submit(add_one, i).result()
        times.append(clock() - t0)
        assert value == i + 1, (value, i)
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


def _cold(workers: int, trips: int) -> tuple[float, float]:
    with ProcQueue(workers, start_method="fork") as pool:
        return _trips(pool, trips)


def _warm(workers: int, trips: int) -> tuple[float, float]:
    with ProcQueue(workers, start_method="fork") as pool:
        for fut in [pool.submit(_hold, 0.3) for _ in range(workers)]:
            fut.result()
        return _trips(pool, trips)


def _ppe(workers: int, trips: int) -> tuple[float, float]:
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return _trips(pool, trips)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trips", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs: dict[str, Callable[[int, int], tuple[float, float]]] = {
        "ProcQueue, cold pool": _cold,
        "ProcQueue, warm pool": _warm,
        "ProcessPoolExecutor": _ppe,
    }
    p50s: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rnd in range(args.rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            p50, p99 = runs[name](args.workers, args.trips)
            p50s[name].append(p50)
            _log.info("round %d  %-22s p50 %6.1f us  p99 %6.1f us", rnd + 1, name, p50, p99)
    base = p50s["ProcessPoolExecutor"]
    for name in names[:2]:
        ratios = [mine / theirs for mine, theirs in zip(p50s[name], base, strict=True)]
        _log.info(
            "%-22s p50 / ProcessPoolExecutor's: median %.2fx (%.2f-%.2f)",
            name,
            statistics.median(ratios),
            min(ratios),
            max(ratios),
        )


if __name__ == "__main__":
    main()
