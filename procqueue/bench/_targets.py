"""procqueue's performance targets (issue #4), judged on this run's medians.

A target is met or missed on the numbers of this one run, on this machine: the
table says so, and never turns a slow run into a failure (``BENCHMARKS.md``
rule 7: benchmarks are not tests). procqueue is the ``ProcQueue`` row on the main
start method; the baseline is ``ProcessPoolExecutor`` on the same start method.
"""

from __future__ import annotations

from collections.abc import Callable
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


#: What a judge found: the measured text, the ratio and whether the goal is met.
Verdict = tuple[str, float, bool]


@dataclass(frozen=True)
class _Run:
    """This run's numbers, as the judges read them."""

    results: dict[str, WorkloadResult]
    cfg: BenchConfig

    def median(self, wl: str, key: str, metric: str) -> float | None:
        return _median(self.results, wl, key, metric)


@dataclass(frozen=True)
class _Goal:
    """One row of the targets table: a name, the goal in words, and the judge
    that reads this run's medians (``None``: not measured in this run)."""

    name: str
    goal: str
    judge: Callable[[_Run], Verdict | None]
    #: The goal shown when not measured (``None``: ``goal``).
    unmeasured_goal: str | None = None

    def target(self, run: _Run) -> Target:
        verdict = self.judge(run)
        if verdict is None:
            goal = self.goal if self.unmeasured_goal is None else self.unmeasured_goal
            return Target(self.name, goal, "not measured in this run", None, None)
        return Target(self.name, self.goal, *verdict)


# --- the judges, one per target ------------------------------------------------------


def _times_ppe_and_ahead(
    wl: str, metric: str, unit: str, factor: float
) -> Callable[[_Run], Verdict | None]:
    """The judge of "at least ``factor`` x ProcessPoolExecutor's ``metric`` on
    ``wl``, and ahead of every peer"."""

    def judge(run: _Run) -> Verdict | None:
        pq, ppe = (run.median(wl, k, metric) for k in (PQ, PPE))
        if pq is None or ppe is None:
            return None
        ahead, best = _ahead_of_peers(run.results, wl, metric, pq)
        ratio = pq / ppe
        return f"{pq:,.0f} vs {ppe:,.0f} {unit}; {best}", ratio, ratio >= factor and ahead

    return judge


def _map(cs: int) -> Callable[[_Run], Verdict | None]:
    """The judge of one map chunk size, against multiprocessing.Pool.imap."""

    def judge(run: _Run) -> Verdict | None:
        pq, mp = (run.median(f"map{cs}", k, "tasks_per_s") for k in (PQ, "mp.Pool"))
        if pq is None or mp is None:
            return None
        return f"{pq:,.0f} vs {mp:,.0f} tasks/s", pq / mp, pq / mp >= 1.0

    return judge


def _cpu(run: _Run) -> Verdict | None:
    wall = run.median("cpu", PQ, "wall_s")
    seq = run.median("cpu", "sequential", "wall_s")
    if wall is None or seq is None:
        return None
    workers = run.cfg.workers
    eff = seq / (wall * workers)
    ceiling = run.median("cpu", "ceiling", "wall_s")
    note = ""
    if ceiling is not None:
        note = f"; this machine's ceiling (bare processes) {seq / (ceiling * workers):.1%}"
    return f"{eff:.1%} ({workers} workers{note})", eff, eff >= 0.98


def _p50(run: _Run) -> Verdict | None:
    p50, ppe50 = (run.median("latency", k, "p50_ms") for k in (PQ, PPE))
    if p50 is None or ppe50 is None:
        return None
    return f"{p50:.3f} vs {ppe50:.3f} ms", p50 / ppe50, p50 / ppe50 <= 0.7


def _p99(run: _Run) -> Verdict | None:
    p50, p99 = (run.median("latency", PQ, m) for m in ("p50_ms", "p99_ms"))
    if p50 is None or p99 is None:
        return None
    return f"p99 {p99:.3f} ms, p50 {p50:.3f} ms", p99 / p50, p99 / p50 <= 2.0


def _startup(run: _Run) -> Verdict | None:
    pq, ppe = (run.median("startup", k, "start_s") for k in (PQ, PPE))
    if pq is None or ppe is None:
        return None
    return f"{pq * 1000:.1f} vs {ppe * 1000:.1f} ms", pq / ppe, pq <= ppe


def _scale(run: _Run) -> Verdict | None:
    sizes = sorted(run.cfg.scale_sizes)
    if len(sizes) < 2:
        return None
    lo = run.median("scale", PQ, f"tasks_per_s@{sizes[0]}")
    hi = run.median("scale", PQ, f"tasks_per_s@{sizes[-1]}")
    if lo is None or hi is None:
        return None
    note = "" if (sizes[0], sizes[-1]) == (10_000, 1_000_000) else " (not the target sizes)"
    measured = f"{hi:,.0f} tasks/s at {sizes[-1]:,} vs {lo:,.0f} at {sizes[0]:,}{note}"
    return measured, hi / lo, hi / lo >= 0.9


def _memory(run: _Run) -> Verdict | None:
    mem = run.median("memory", PQ, "bytes_per_task")
    if mem is None:
        return None
    ppe_mem = run.median("memory", PPE, "bytes_per_task")
    vs = f"; ProcessPoolExecutor {ppe_mem:,.0f} B" if ppe_mem is not None else ""
    return f"ProcQueue {mem:,.0f} B, its Future included{vs}", mem / 1024, mem <= 1024


def _memory_own(run: _Run) -> Verdict | None:
    mem, fut, tq = (
        run.median("memory", k, "bytes_per_task") for k in (PQ, BARE_FUTURE, "TaskQueue")
    )
    if mem is None or fut is None or tq is None:
        return None
    own = max(mem - fut, tq)
    measured = f"ProcQueue {mem - fut:,.0f} B beyond a {fut:,.0f} B Future; TaskQueue {tq:,.0f} B"
    return measured, own / 1024, own <= 1024


def _recovery(run: _Run) -> Verdict | None:
    rec = run.median("kill", PQ, "recovery_ms")
    kept = run.median("kill", PQ, "survived")
    if rec is None or kept is None:
        return None
    n = run.cfg.kill_tasks
    return f"{rec:.1f} ms; {kept:.0f} of {n} results kept", rec / 50, rec <= 50 and kept == n


# --- the table -----------------------------------------------------------------------

_MEMORY_GOAL = "<= 1 KB coordinator memory per pending task"


def _goals(cfg: BenchConfig) -> list[_Goal]:
    """Every target, in report order (map once per chunk size)."""
    return [
        # Issue #4's targets 1 to 9, in its order.
        _Goal("tiny tasks one by one",
              ">= 4x ProcessPoolExecutor, ahead of every peer (incl. mp.Pool.apply_async)",
              _times_ppe_and_ahead("tiny", "tasks_per_s", "tasks/s", 4)),
        *(_Goal(f"map, chunksize {cs}", ">= 1.0x multiprocessing.Pool.imap", _map(cs))
          for cs in cfg.chunksizes),
        _Goal("CPU-bound efficiency",
              ">= 98 % parallel efficiency (sequential time / (wall x workers))", _cpu),
        _Goal("idle round trip p50", "p50 <= 0.7x ProcessPoolExecutor's p50", _p50),
        _Goal("idle round trip p99", "p99 <= 2x procqueue's own p50", _p99),
        _Goal("4 MB arguments and results",
              ">= 2x ProcessPoolExecutor's MB/s, ahead of every peer",
              _times_ppe_and_ahead("payload", "mb_per_s", "MB/s", 2)),
        _Goal("start-up", "start-up to first result no slower than ProcessPoolExecutor",
              _startup),
        _Goal("throughput at scale", "throughput at 1M tasks within 10 % of 10k", _scale),
        _Goal("memory per pending task", _MEMORY_GOAL, _memory),
        _Goal("memory per pending task, the Future aside",
              _MEMORY_GOAL + " (ProcQueue beyond a bare Future; TaskQueue, whose handle is "
              "an int)", _memory_own,
              # Kept from before the table: unmeasured, the row shows the plain goal.
              unmeasured_goal=_MEMORY_GOAL),
        _Goal("recovery after SIGKILL",
              f"killed task re-running within 50 ms ({cfg.start_method}); every result kept",
              _recovery),
    ]  # fmt: skip


def evaluate(results: dict[str, WorkloadResult], cfg: BenchConfig) -> list[Target]:
    """Every target this run has the numbers for, and ``None`` verdicts for the rest."""
    run = _Run(results, cfg)
    return [goal.target(run) for goal in _goals(cfg)]
