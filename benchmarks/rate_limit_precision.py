"""Does a rate limit hold its rate? A ``RateLimit("1000/s")`` key against unkeyed work.

``rate * (seconds + 2)`` tiny keyed tasks (``limit_key="api"``, ``RateLimit("<rate>/s")``,
burst 1) each return ``time.monotonic()`` at their start in the worker (system-wide on
Linux). Reported: starts per second over the central ``--seconds`` window (target: within
2 % of ``--rate``) and the most starts in any 1 s window (bound: rate + burst, plus
``rate * catchup`` made up after a stall; ``--catchup``, default the library's). Meanwhile
another thread runs unkeyed tiny tasks in batches until the last keyed one is done; their
throughput is compared with the same stream run alone on the same pool. A fresh pool per
round; the phase order alternates.
Exit status 1 only for a wrong answer or an error, never for speed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from datetime import datetime, timezone

from procqueue import ProcQueue, RateLimit
from procqueue.bench._context import footer

_log = logging.getLogger("rate_limit_precision")
BATCH = 500  # unkeyed tasks in flight per batch
Metrics = dict[str, float]


def add_one(x: int) -> int:
    """The unkeyed tiny task, defined in ``__main__`` (it travels by value under cloudpickle)."""
    return x + 1


def stamp(i: int) -> tuple[int, float]:
    """The keyed tiny task: its index and when it started, on the system-wide monotonic clock."""
    return i, time.monotonic()


def unkeyed_stream(
    pool: ProcQueue, seconds: float, out: Metrics, stop: threading.Event | None = None
) -> None:
    """Unkeyed ``add_one`` in batches for ``seconds`` or until ``stop``; checks each sum."""
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds and not (stop and stop.is_set()):
        futures = [pool.submit(add_one, done + i) for i in range(BATCH)]
        got, want = sum(f.result(60) for f in futures), BATCH * (2 * done + BATCH + 1) // 2
        if got != want:
            raise AssertionError(f"unkeyed batch sum {got}, expected {want}")
        done += BATCH
    out["tasks_per_s"] = done / (time.perf_counter() - t0)


def keyed_run(pool: ProcQueue, args: argparse.Namespace) -> tuple[Metrics, Metrics]:
    """The keyed tasks with an unkeyed stream alongside: the keyed figures, the unkeyed one."""
    n, side, errors = int(args.rate * (args.seconds + 2)), Metrics(), list[BaseException]()
    futures = [pool.submit_task(stamp, i, limit_key="api") for i in range(n)]
    keyed_done = threading.Event()

    def alongside() -> None:
        try:
            unkeyed_stream(pool, float("inf"), side, keyed_done)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=alongside, name="unkeyed", daemon=True)
    thread.start()
    deadline = time.perf_counter() + args.seconds + 2 + args.timeout
    try:
        results = [f.result(max(0.0, deadline - time.perf_counter())) for f in futures]
    finally:
        keyed_done.set()  # the stream runs as long as the keyed tasks do
    thread.join(args.timeout)
    if errors:
        raise errors[0]
    if thread.is_alive():
        raise TimeoutError("the unkeyed stream did not finish")
    if sorted(i for i, _ in results) != list(range(n)):
        raise AssertionError(f"keyed results are not tasks 0..{n - 1}")
    starts = sorted(t for _, t in results)
    a = (starts[0] + starts[-1] - args.seconds) / 2  # the central window [a, a + seconds)
    in_window = sum(a <= t < a + args.seconds for t in starts)
    peak, j = 0, 0
    for i, t in enumerate(starts):  # the most starts in [t, t + 1 s) over every start t
        while j < n and starts[j] < t + 1.0:
            j += 1
        peak = max(peak, j - i)
    rate, span = in_window / args.seconds, starts[-1] - starts[0]
    return {"rate": rate, "dev": rate / args.rate - 1, "peak": peak, "span": span}, side


def spread(values: list[float], fmt: str) -> str:
    """``median (min-max)`` of the rounds."""
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def measure(args: argparse.Namespace) -> tuple[list[Metrics], str | None, str]:
    """Every round's figures, the first FAIL (or ``None``), the start method."""
    rounds: list[Metrics] = []
    method = "?"
    limits = {"api": RateLimit(f"{args.rate}/s", catchup=args.catchup)}
    for rnd in range(args.reps):
        opts = {"start_method": args.start_method, "key_limits": limits}
        try:
            with ProcQueue(max_workers=args.workers, **opts) as pool:
                method = pool.start_method
                list(pool.map(add_one, range(8 * args.workers)))  # every worker up and answering
                unkeyed_stream(pool, 0.5, {})  # warm-up, untimed
                alone: Metrics = {}
                if rnd % 2 == 0:
                    unkeyed_stream(pool, args.alone_seconds, alone)
                keyed, side = keyed_run(pool, args)
                if rnd % 2 == 1:
                    unkeyed_stream(pool, args.alone_seconds, alone)
        except Exception as e:  # a wrong answer, an error or a hang: FAIL
            _log.error("FAIL round %d: %s: %s", rnd, type(e).__name__, e)
            return rounds, f"round {rnd}: {type(e).__name__}: {e}", method
        m = {**keyed, "alone": alone["tasks_per_s"], "during": side["tasks_per_s"]}
        m["ratio"] = m["during"] / m["alone"]
        rounds.append(m)
        _log.info(
            "round %d: keyed %.1f/s (%+.2f %%), peak %d in 1 s; unkeyed %.0f/s vs %.0f/s alone",
            rnd, m["rate"], 100 * m["dev"], m["peak"], m["during"], m["alone"],
        )  # fmt: skip
    return rounds, None, method


def report(args: argparse.Namespace, started: datetime) -> int:
    rounds, failed, method = measure(args)
    n = int(args.rate * (args.seconds + 2))
    print(f'# Rate-limit precision: RateLimit("{args.rate:g}/s") against unkeyed tiny tasks\n')
    print(
        f"{args.workers} workers, start method {method}, tasks `__main__`.stamp / add_one (by "
        f"value); {n:,} keyed tasks, a central window of {args.seconds:g} s; unkeyed "
        f"in batches of {BATCH}, alone for {args.alone_seconds:g} s; {args.reps} rounds, "
        "a fresh pool each.\n"
    )
    if failed:
        print(f"FAIL: {failed}")
    if rounds:

        def col(key: str, scale: float = 1.0) -> list[float]:
            return [m[key] * scale for m in rounds]

        print("| figure | median (min-max) |\n|---|---|")
        print(f"| keyed starts/s in the window | {spread(col('rate'), ',.1f')} |")
        print(f"| deviation from {args.rate:g}/s | {spread(col('dev', 100), '+.2f')} % |")
        print(f"| most keyed starts in any 1 s | {spread(col('peak'), ',.0f')} |")
        print(f"| keyed first to last start | {spread(col('span'), '.2f')} s |")
        print(f"| unkeyed during / alone | {spread(col('ratio'), '.3f')} |")
        print(f"| unkeyed tasks/s during | {spread(col('during'), ',.0f')} |")
        print(f"| unkeyed tasks/s alone | {spread(col('alone'), ',.0f')} |")
        dev, peak = statistics.median(col("dev")), max(col("peak"))
        bound = args.rate * (1 + args.catchup + 0.01) + 1
        verdict = "met" if all(abs(d) <= 0.02 for d in col("dev")) else "NOT met"
        print(
            f"\nTarget: the key holds {args.rate:g}/s within 2 % over {args.seconds:g} s: "
            f"{verdict} (median {dev:+.2%}, every round counted).\n"
            f"Bound: at most {args.rate:g} + burst 1 + catch-up {args.rate * args.catchup:g} "
            f"+ slack {args.rate * 0.01:g} = {bound:,.0f} starts in any 1 s: "
            f"{'met' if peak <= bound else 'NOT met'} (max {peak:,.0f}).\n"
            "The unkeyed stream shares the workers with the keyed tasks, so 'during' is "
            "below 'alone' by about the keyed tasks' share of worker time."
        )
    print(footer(started))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rate", type=int, default=1000, help="the key's starts per second (1000)")
    p.add_argument("--seconds", type=float, default=10.0, help="the central window, s (10)")
    p.add_argument(
        "--catchup",
        type=float,
        default=RateLimit("1/s").catchup,
        help="RateLimit(catchup=...): lateness a backlog makes up, s (the library's default)",
    )
    p.add_argument("--alone-seconds", type=float, default=3.0, help="unkeyed run alone, s (3)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--reps", type=int, default=3, help="rounds, a fresh pool each (3, >= 3)")
    methods = ("fork", "forkserver", "spawn")
    p.add_argument("--start-method", choices=methods, help="default: procqueue's own")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds beyond the expected (120)")
    args = p.parse_args(argv)
    if args.reps < 3:
        p.error("--reps must be at least 3 (BENCHMARKS.md rule 2)")
    if min(args.rate, args.seconds, args.alone_seconds) <= 0:
        p.error("--rate, --seconds and --alone-seconds must be positive")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return report(args, datetime.now(timezone.utc))


if __name__ == "__main__":
    sys.exit(main())
