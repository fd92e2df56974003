"""What do task dependencies cost? A DAG of tiny tasks against the same tasks without.

Throughput (``TaskQueue``): ``--tasks`` tiny tasks in ``--chains`` chains, each
task ``after=[prev]``, plus a fan-in after every tail; the same with values passed
on by ``result_of(prev)``; and the same calls without dependencies (target: >= 80 %
of that). Memory: ``--mem-tasks`` tasks held back pending, scheduled or waiting on
one held task (target: <= 1 KB per waiting task beyond a pending one). Exit status
1 only for a wrong answer or an error, never for speed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import logging
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from procqueue import TaskQueue, result_of
from procqueue.bench import _tasks
from procqueue.bench._context import footer

_log = logging.getLogger("dag_overhead")
GRAPHS = ("none", "after", "result_of")
HELD = ("pending", "scheduled", "waiting", "waiting result_of")
LABELS = {
    "none": "no dependencies",
    "after": "chains `after=[prev]`, fan-in `after=[every tail]`",
    "result_of": "chains `add_one(result_of(prev))`, fan-in summing `[result_of(tail), ...]`",
    "pending": "pending (every worker busy)",
    "scheduled": "scheduled (`delay=3600`)",
    "waiting": "waiting, `add_one(i, after=[held])`",
    "waiting result_of": "waiting, `add_one(result_of(held))`",
}


def add_one(x: int) -> int:
    """The tiny task, defined in ``__main__`` (it travels by value under cloudpickle)."""
    return x + 1


def total(values: list[int]) -> int:
    """The fan-in of the ``result_of`` graph: the sum of every chain's last value."""
    return sum(values)


async def open_queue(args: argparse.Namespace, **options: Any) -> TaskQueue:
    """A started queue whose every worker has answered (the warm-up is untimed)."""
    q = TaskQueue(args.workers, start_method=args.start_method, **options)
    await q.start()
    for t in [await q.submit(args.fn, i) for i in range(8 * args.workers)]:
        await q.result(t)
    return q


async def submit_graph(
    q: TaskQueue, args: argparse.Namespace, graph: str
) -> tuple[list[int], list[list[int]]]:
    """Submit ``graph`` chain by chain, so most tasks wait on one not yet done.
    Task ``k`` of chain ``c`` answers ``c * L + k + 1`` in every graph."""
    fn, submit, length = args.fn, q.submit, args.tasks // args.chains
    chains: list[list[int]] = []
    for c in range(args.chains):
        chain = [await submit(fn, c * length)]
        for x in range(c * length + 1, (c + 1) * length):
            if graph == "none":
                chain.append(await submit(fn, x))
            elif graph == "after":
                chain.append(await submit(fn, x, after=chain[-1:]))
            else:
                chain.append(await submit(fn, result_of(chain[-1])))
        chains.append(chain)
    tails = [ch[-1] for ch in chains]
    if graph == "result_of":
        fan_in = await submit(args.fan_in, [result_of(t) for t in tails])
    else:
        fan_in = await submit(fn, length * args.chains, after=tails if graph == "after" else None)
    return [*itertools.chain(*chains), fan_in], chains


async def verify(q: TaskQueue, graph: str, ids: list[int], chains: list[list[int]]) -> None:
    """Each chain task and the fan-in started after its upstream finished
    (worker clocks; read before the results are claimed), then every result."""
    if graph != "none":
        last = q.get_task_status(ids[-1])
        for chain in chains:
            st = [*(q.get_task_status(t) for t in chain), last]
            for a, b in itertools.pairwise(st):
                if b.started_at is None or a.finished_at is None or b.started_at < a.finished_at:
                    raise AssertionError(f"task {b.task_id} started before {a.task_id} ended")
    n, length = len(ids) - 1, len(chains[0])
    tails = sum(range(length, n + 1, length))  # what the fan-in of "result_of" adds up
    expected = [*range(1, n + 1), tails if graph == "result_of" else n + 1]
    for i, (t, want) in enumerate(zip(ids, expected)):
        got = await q.result(t)
        if got != want:
            raise AssertionError(f"task #{i} (id {t}) answered {got!r}, expected {want}")


async def run_graph(args: argparse.Namespace, graph: str) -> float:
    """One timed run on a fresh, warmed queue: submit every task, then ``join``."""
    q = await open_queue(args)
    try:
        t0 = time.perf_counter()
        ids, chains = await submit_graph(q, args, graph)
        await q.join()
        wall = time.perf_counter() - t0
        await verify(q, graph, ids, chains)
    finally:
        await q.stop(cancel_pending=True, timeout=0)
    args.method = q.start_method
    return len(ids) / wall


async def held_bytes(args: argparse.Namespace, how: str) -> float:
    """Traced bytes still allocated per task after submitting ``--mem-tasks``
    tasks held back as ``how`` (``prefetch=0``, so no worker pipe takes any)."""
    q = await open_queue(args, prefetch=0)
    fn, n = args.fn, args.mem_tasks
    try:
        held = await q.submit(fn, -1, delay=3600)
        kw: Any = {"scheduled": {"delay": 3600}, "waiting": {"after": [held]}}.get(how, {})
        if how == "pending":
            for _ in range(args.workers):
                await q.submit(time.sleep, 3600)  # every worker busy, so the rest stay pending
            while q.get_stats().running < args.workers:
                await asyncio.sleep(0.01)
        gc.collect()
        tracemalloc.start()
        marker = how == "waiting result_of"
        ids = [await q.submit(fn, result_of(held) if marker else i, **kw) for i in range(n)]
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0]
        s = q.get_stats()
        counts = {"pending": s.pending, "scheduled": s.scheduled - 1}
        if counts.get(how, s.waiting) != len(ids):
            raise AssertionError(f"{len(ids)} tasks submitted, but not all {how}: {s}")
    finally:
        tracemalloc.stop()
        await q.stop(cancel_pending=True, timeout=0)
    return grown / len(ids)


def spread(values: list[float], fmt: str) -> str:
    """``median (min to max)`` of the timed rounds."""
    if not values:
        return "—"
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:{fmt}} ({lo:{fmt}} to {hi:{fmt}})"


async def rounds(
    args: argparse.Namespace, names: tuple[str, ...], run: Callable[[str], Any], unit: str
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Round 0 (warm-up) and ``--reps`` timed rounds, the order rotated by one
    each round; a variant that fails sits out the rest."""
    reps: dict[str, list[float]] = {v: [] for v in names}
    failed: dict[str, str] = {}
    for rnd in range(args.reps + 1):
        for v in names[rnd % len(names) :] + names[: rnd % len(names)]:
            if v in failed:
                continue
            try:
                value = await asyncio.wait_for(run(v), args.timeout)
            except Exception as e:  # a wrong answer, an error or a hang: FAIL
                failed[v] = f"round {rnd}: {type(e).__name__}: {e}"[:300].replace("\n", " ")
                _log.error("FAIL %s: %s", v, failed[v])
                continue
            _log.info("round %d%s %-17s %10.1f %s", rnd, " (warm-up)" * (rnd == 0), v, value, unit)
            if rnd:
                reps[v].append(value)
    return reps, failed


def table(
    head: str, reps: dict[str, list[float]], failed: dict[str, str], vs: str, fmt: str
) -> dict[str, float]:
    """One markdown table, every row against the first row's run of the same
    round (a ratio or a difference, per ``vs``); returns their medians."""
    names = list(reps)
    print(f"| {head} |\n|---|---|---|")
    base = [] if names[0] in failed else reps[names[0]]
    medians: dict[str, float] = {}
    for v in names:
        if v in failed:
            print(f"| {LABELS[v]} | FAIL | {failed[v]} |")
            continue
        cmp = [a / b if vs == "ratio" else a - b for a, b in zip(reps[v], base)]
        if cmp and v != names[0]:
            medians[v] = statistics.median(cmp)
        col = "baseline" if v == names[0] else spread(cmp, ".3f" if vs == "ratio" else "+,.0f")
        print(f"| {LABELS[v]} | {col} | {spread(reps[v], fmt)} |")
    print(f"\nMedian (min to max); the {vs} is against the first row's run of the same round.")
    return medians


def unmeasured(row: str, base: str, failed: dict[str, str]) -> str:
    """Why a target on ``row`` against ``base`` has no figure in this run."""
    why = [f"`{r}` FAILed" for r in (base, row) if r in failed]
    if base in failed and row not in failed:
        why[0] += ", so there is nothing to compare with"
    return "; ".join(why) or "no round measured both"


def verdict(
    goal: str,
    row: str,
    base: str,
    values: dict[str, float],
    failed: dict[str, str],
    judge: Callable[[float], tuple[bool, str]],
) -> None:
    """Print ``goal``'s line: met or NOT met (``judge``: whether, and the
    figure shown), or not measured, and why."""
    if row not in values:
        print(f"{goal} not measured ({unmeasured(row, base, failed)}).")
        return
    met, shown = judge(values[row])
    print(f"{goal} {'met' if met else 'NOT met'} ({shown}).")


async def report(args: argparse.Namespace, started: datetime) -> int:
    speed, failed = await rounds(args, GRAPHS, lambda g: run_graph(args, g), "tasks/s")
    memory, mem_failed = await rounds(args, HELD, lambda h: held_bytes(args, h), "B/task")
    length = args.tasks // args.chains
    n, how = length * args.chains, "by reference" if args.importable else "by value"
    print(f"# DAG overhead: {n:,} tiny tasks in {args.chains:,} chains of {length:,}, + a fan-in\n")
    print(
        f"`TaskQueue`, {args.workers} workers, start method {args.method}, `add_one` from "
        f"{args.fn.__module__} ({how}); {n + 1:,} tasks in every graph, submitted chain by "
        f"chain, timed to `join()`, a fresh warmed queue per run. {args.reps} rounds after a "
        "warm-up, rotated. Checked: every result, and that every task started after its "
        "upstream tasks finished (worker clocks).\n"
    )
    ratios = table("graph | vs no deps | tasks/s", speed, failed, "ratio", ",.0f")
    for g in GRAPHS[1:]:
        goal = f"Target: `{g}` DAG >= 80 % of no-dependency throughput:"
        verdict(goal, g, GRAPHS[0], ratios, failed, lambda r: (r >= 0.8, f"{r:.1%}"))
    print(
        f"\n## Coordinator memory per task: {args.mem_tasks:,} tasks held back\n\n"
        "tracemalloc: bytes still allocated after the submits and `gc.collect()`, per task "
        "(the pickled call and the returned ids are in it). `prefetch=0`; `held` is one "
        "task with `delay=3600`.\n"
    )
    head = "held back as | beyond pending | bytes per task"
    extras = table(head, memory, mem_failed, "difference", ",.0f")
    for h in HELD:
        if not h.startswith("waiting"):
            continue
        goal = f"Target: <= 1 KB per waiting task beyond a pending one, {LABELS[h]}:"
        verdict(goal, h, HELD[0], extras, mem_failed, lambda x: (x <= 1024, f"{x:+,.0f} B"))
    print(footer(started))
    return 1 if failed or mem_failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--tasks", type=int, default=100_000, help="tiny tasks in the DAG (100000)")
    p.add_argument("--chains", type=int, default=1_000, help="chains they form (1000)")
    p.add_argument("--mem-tasks", type=int, default=100_000, help="tasks held back (100000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--reps", type=int, default=3, help="timed rounds after the warm-up (3, >= 3)")
    methods = ("fork", "forkserver", "spawn")
    p.add_argument("--start-method", choices=methods, help="default: procqueue's own")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take (600)")
    p.add_argument("--importable", action="store_true", help="run procqueue.bench._tasks.add_one")
    args = p.parse_args(argv)
    if args.reps < 3 or not 1 <= args.chains <= args.tasks or args.mem_tasks < 1:
        p.error("need --reps >= 3, 1 <= --chains <= --tasks and --mem-tasks >= 1")
    args.fn, args.fan_in = (_tasks.add_one, sum) if args.importable else (add_one, total)
    args.method = "?"
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return asyncio.run(report(args, datetime.now(timezone.utc)))


if __name__ == "__main__":
    sys.exit(main())
