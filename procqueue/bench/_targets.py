"""procqueue's performance targets (issue #4), judged on this run's medians.

A target is met or missed on the numbers of this one run, on this machine: the
table says so, and never turns a slow run into a failure (``BENCHMARKS.md``
rule 7: benchmarks are not tests). procqueue is the ``ProcQueue`` row on the main
start method; the baseline is ``ProcessPoolExecutor`` on the same start method.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._config import BenchConfig
from ._measure import WorkloadResult
from ._memprobe import BARE_FUTURE

PQ = "ProcQueue"
PPE = "ppe"
#: Process pools other than procqueue, on the main start method.
PEERS = ("ppe", "mp.Pool", "loky", "joblib", "pebble", "mpire")


@dataclass(frozen=True)
class Target:
    """One goal: what was asked, what this run measured, and the verdict
    (``None``: not measured in this run)."""

    name: str
    goal: str
    measured: str
    ratio: float | None
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median(results: dict[str, WorkloadResult], wl: str, key: str, metric: str) -> float | None:
    r = results.get(wl)
    cell = r.cell(key) if r is not None else None
    return cell.median(metric) if cell is not None else None


def _ahead_of_peers(
    results: dict[str, WorkloadResult], wl: str, metric: str, mine: float
) -> tuple[bool, str]:
    """Whether ``mine`` beats every peer's median; and the best peer, named."""
    best_key, best = None, None
    for key in PEERS:
        v = _median(results, wl, key, metric)
        if v is not None and (best is None or v > best):
            best_key, best = key, v
    if best is None:
        return True, "no peer measured"
    r = results[wl]
    cell = r.cell(best_key) if best_key else None
    label = cell.label if cell is not None else str(best_key)
    return mine > best, f"best peer {label} {best:,.0f} ({mine / best:.2f}x)"


def evaluate(results: dict[str, WorkloadResult], cfg: BenchConfig) -> list[Target]:
    """Every target this run has the numbers for, and ``None`` verdicts for the rest."""
    out: list[Target] = []

    def missing(name: str, goal: str, why: str = "not measured in this run") -> None:
        out.append(Target(name, goal, why, None, None))

    # 1. tiny tasks one by one
    goal = ">= 4x ProcessPoolExecutor, ahead of every peer (incl. mp.Pool.apply_async)"
    pq, ppe = (_median(results, "tiny", k, "tasks_per_s") for k in (PQ, PPE))
    if pq is not None and ppe is not None:
        ahead, best = _ahead_of_peers(results, "tiny", "tasks_per_s", pq)
        ratio = pq / ppe
        out.append(
            Target(
                "tiny tasks one by one",
                goal,
                f"{pq:,.0f} vs {ppe:,.0f} tasks/s; {best}",
                ratio,
                ratio >= 4 and ahead,
            )
        )
    else:
        missing("tiny tasks one by one", goal)

    # 2. map, each chunk size, against multiprocessing.Pool.imap
    for cs in cfg.chunksizes:
        wl = f"map{cs}"
        goal = ">= 1.0x multiprocessing.Pool.imap"
        pq, mp = (_median(results, wl, k, "tasks_per_s") for k in (PQ, "mp.Pool"))
        if pq is not None and mp is not None:
            out.append(
                Target(
                    f"map, chunksize {cs}",
                    goal,
                    f"{pq:,.0f} vs {mp:,.0f} tasks/s",
                    pq / mp,
                    pq / mp >= 1.0,
                )
            )
        else:
            missing(f"map, chunksize {cs}", goal)

    # 3. CPU efficiency
    goal = ">= 98 % parallel efficiency (sequential time / (wall x workers))"
    wall = _median(results, "cpu", PQ, "wall_s")
    seq = _median(results, "cpu", "sequential", "wall_s")
    if wall is not None and seq is not None:
        eff = seq / (wall * cfg.workers)
        ceiling = _median(results, "cpu", "ceiling", "wall_s")
        note = ""
        if ceiling is not None:
            note = f"; this machine's ceiling (bare processes) {seq / (ceiling * cfg.workers):.1%}"
        out.append(
            Target("CPU-bound efficiency", goal, f"{eff:.1%} ({cfg.workers} workers{note})", eff,
                   eff >= 0.98)
        )  # fmt: skip
    else:
        missing("CPU-bound efficiency", goal)

    # 4. idle round trip
    p50, p99 = (_median(results, "latency", PQ, m) for m in ("p50_ms", "p99_ms"))
    ppe50 = _median(results, "latency", PPE, "p50_ms")
    goal = "p50 <= 0.7x ProcessPoolExecutor's p50"
    if p50 is not None and ppe50 is not None:
        out.append(
            Target("idle round trip p50", goal, f"{p50:.3f} vs {ppe50:.3f} ms", p50 / ppe50,
                   p50 / ppe50 <= 0.7)
        )  # fmt: skip
    else:
        missing("idle round trip p50", goal)
    goal = "p99 <= 2x procqueue's own p50"
    if p50 is not None and p99 is not None:
        out.append(
            Target("idle round trip p99", goal, f"p99 {p99:.3f} ms, p50 {p50:.3f} ms", p99 / p50,
                   p99 / p50 <= 2.0)
        )  # fmt: skip
    else:
        missing("idle round trip p99", goal)

    # 5. large payloads
    goal = ">= 2x ProcessPoolExecutor's MB/s, ahead of every peer"
    pq, ppe = (_median(results, "payload", k, "mb_per_s") for k in (PQ, PPE))
    if pq is not None and ppe is not None:
        ahead, best = _ahead_of_peers(results, "payload", "mb_per_s", pq)
        ratio = pq / ppe
        out.append(
            Target("4 MB arguments and results", goal,
                   f"{pq:,.0f} vs {ppe:,.0f} MB/s; {best}", ratio, ratio >= 2 and ahead)
        )  # fmt: skip
    else:
        missing("4 MB arguments and results", goal)

    # 6. start-up
    goal = "start-up to first result no slower than ProcessPoolExecutor"
    pq, ppe = (_median(results, "startup", k, "start_s") for k in (PQ, PPE))
    if pq is not None and ppe is not None:
        out.append(
            Target("start-up", goal, f"{pq * 1000:.1f} vs {ppe * 1000:.1f} ms", pq / ppe,
                   pq <= ppe)
        )  # fmt: skip
    else:
        missing("start-up", goal)

    # 7. throughput at scale
    sizes = sorted(cfg.scale_sizes)
    goal = "throughput at 1M tasks within 10 % of 10k"
    lo = _median(results, "scale", PQ, f"tasks_per_s@{sizes[0]}") if sizes else None
    hi = _median(results, "scale", PQ, f"tasks_per_s@{sizes[-1]}") if sizes else None
    if lo is not None and hi is not None and len(sizes) > 1:
        note = "" if (sizes[0], sizes[-1]) == (10_000, 1_000_000) else " (not the target sizes)"
        out.append(
            Target("throughput at scale", goal,
                   f"{hi:,.0f} tasks/s at {sizes[-1]:,} vs {lo:,.0f} at {sizes[0]:,}{note}",
                   hi / lo, hi / lo >= 0.9)
        )  # fmt: skip
    else:
        missing("throughput at scale", goal)

    # 8. memory per pending task
    goal = "<= 1 KB coordinator memory per pending task"
    mem = _median(results, "memory", PQ, "bytes_per_task")
    ppe_mem = _median(results, "memory", PPE, "bytes_per_task")
    fut = _median(results, "memory", BARE_FUTURE, "bytes_per_task")
    tq = _median(results, "memory", "TaskQueue", "bytes_per_task")
    if mem is not None:
        vs = f"; ProcessPoolExecutor {ppe_mem:,.0f} B" if ppe_mem is not None else ""
        out.append(
            Target("memory per pending task", goal, f"ProcQueue {mem:,.0f} B, its Future "
                   f"included{vs}", mem / 1024, mem <= 1024)
        )  # fmt: skip
    else:
        missing("memory per pending task", goal)
    own = "memory per pending task, the Future aside"
    if mem is not None and fut is not None and tq is not None:
        out.append(
            Target(own, goal + " (ProcQueue beyond a bare Future; TaskQueue, whose handle is "
                   "an int)", f"ProcQueue {mem - fut:,.0f} B beyond a {fut:,.0f} B Future; "
                   f"TaskQueue {tq:,.0f} B", max(mem - fut, tq) / 1024,
                   max(mem - fut, tq) <= 1024)
        )  # fmt: skip
    else:
        missing(own, goal)

    # 9. recovery after a SIGKILL
    goal = f"killed task re-running within 50 ms ({cfg.start_method}); every result kept"
    rec = _median(results, "kill", PQ, "recovery_ms")
    kept = _median(results, "kill", PQ, "survived")
    if rec is not None and kept is not None:
        n = cfg.kill_tasks
        out.append(
            Target("recovery after SIGKILL", goal,
                   f"{rec:.1f} ms; {kept:.0f} of {n} results kept", rec / 50,
                   rec <= 50 and kept == n)
        )  # fmt: skip
    else:
        missing("recovery after SIGKILL", goal)
    return out
