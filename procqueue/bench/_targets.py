"""procqueue's performance targets (issues #11 and #4), judged on this run's medians.

A target is met or missed on the numbers of this one run, on this machine: the
table says so, and never turns a slow run into a failure (``BENCHMARKS.md``
rule 8: benchmarks are not tests). Issue #11's targets are judged on every start
method the run measures procqueue on (the main one and each extra one), each
against its baselines on the same start method; issue #4's remaining targets
(start-up, scale, memory beyond a Future, recovery) on the main one. A target
whose numbers this run lacks (a workload or contestant left out, a FAIL) reads
"not measured", never met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ._config import BenchConfig
from ._measure import WorkloadResult
from ._memprobe import BARE_FUTURE

PQ = "ProcQueue"
TQ = "TaskQueue"
PPE = "ppe"
POOL = "mp.Pool"
#: Process pools other than procqueue ("ahead of every peer"); on an extra start
#: method, those of them that run there.
PEERS = ("ppe", "mp.Pool", "loky", "joblib", "pebble", "mpire")


@dataclass(frozen=True)
class Target:
    """One goal on one start method: what was asked, what this run measured,
    and the verdict (``None``: not measured in this run)."""

    name: str
    goal: str
    measured: str
    ratio: float | None
    met: bool | None
    start_method: str = ""
    #: The issue that set the goal.
    issue: int = 11

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: What a judge found: the measured text, the ratio and whether the goal is met.
Verdict = tuple[str, float, bool]


@dataclass(frozen=True)
class _Run:
    """This run's numbers on one start method, as the judges read them."""

    results: dict[str, WorkloadResult]
    cfg: BenchConfig
    method: str

    def key(self, family: str) -> str:
        """The contestant key of ``family`` on this start method."""
        return family if self.method == self.cfg.start_method else f"{family}/{self.method}"

    def median(self, wl: str, family: str, metric: str) -> float | None:
        r = self.results.get(wl)
        cell = r.cell(self.key(family)) if r is not None else None
        return cell.median(metric) if cell is not None else None

    def label(self, wl: str, family: str) -> str:
        cell = self.results[wl].cell(self.key(family))
        return cell.label if cell is not None else family


Judge = Callable[[_Run], Verdict | None]


@dataclass(frozen=True)
class _Goal:
    """One row of the targets table per start method: a name, the goal in
    words, and the judge that reads this run's medians (``None``: not measured)."""

    name: str
    goal: str
    judge: Judge
    issue: int = 11
    #: Judged on every start method the run measures (else the main one only).
    every_method: bool = True
    #: The goal shown when not measured (``None``: ``goal``).
    unmeasured_goal: str | None = None

    def target(self, run: _Run) -> Target:
        verdict = self.judge(run)
        if verdict is None:
            goal = self.goal if self.unmeasured_goal is None else self.unmeasured_goal
            return Target(
                self.name, goal, "not measured in this run", None, None, run.method, self.issue
            )
        return Target(self.name, self.goal, *verdict, run.method, self.issue)


# --- the judges, one per kind of target ----------------------------------------------


def _at_least(wl: str, base: str, factor: float) -> Judge:
    """``ProcQueue``'s tasks/s on ``wl`` at least ``factor`` x ``base``'s."""

    def judge(run: _Run) -> Verdict | None:
        pq, other = (run.median(wl, k, "tasks_per_s") for k in (PQ, base))
        if pq is None or other is None:
            return None
        ratio = pq / other
        return f"{pq:,.0f} vs {other:,.0f} tasks/s", ratio, ratio >= factor

    return judge


def _ahead_of_peers(run: _Run, wl: str, metric: str, mine: float) -> tuple[bool, str]:
    """Whether ``mine`` beats every peer's median on this start method; and the
    best peer, named."""
    best: tuple[float, str] | None = None
    for family in PEERS:
        v = run.median(wl, family, metric)
        if v is not None and (best is None or v > best[0]):
            best = (v, run.label(wl, family))
    if best is None:
        return True, "no peer measured"
    return mine > best[0], f"best peer {best[1]} {best[0]:,.0f} ({mine / best[0]:.2f}x)"


def _times_ppe_and_ahead(wl: str, metric: str, unit: str, factor: float) -> Judge:
    """At least ``factor`` x ProcessPoolExecutor's ``metric`` on ``wl``, and
    ahead of every peer."""

    def judge(run: _Run) -> Verdict | None:
        pq, ppe = (run.median(wl, k, metric) for k in (PQ, PPE))
        if pq is None or ppe is None:
            return None
        ahead, best = _ahead_of_peers(run, wl, metric, pq)
        ratio = pq / ppe
        return f"{pq:,.0f} vs {ppe:,.0f} {unit}; {best}", ratio, ratio >= factor and ahead

    return judge


def _cpu(front: str) -> Judge:
    """``front``'s parallel efficiency on the CPU workload, at least 98 %."""

    def judge(run: _Run) -> Verdict | None:
        wall = run.median("cpu", front, "wall_s")
        r = run.results.get("cpu")
        seq_cell = r.cell("sequential") if r is not None else None  # in-process: no method
        seq = seq_cell.median("wall_s") if seq_cell is not None else None
        if wall is None or seq is None:
            return None
        workers = run.cfg.workers
        eff = seq / (wall * workers)
        ceiling = run.median("cpu", "ceiling", "wall_s")
        note = ""
        if ceiling is not None:
            note = f"; this machine's ceiling (bare processes) {seq / (ceiling * workers):.1%}"
        return f"{eff:.1%} ({workers} workers{note})", eff, eff >= 0.98

    return judge


def _p50(front: str, factor: float) -> Judge:
    """``front``'s idle round trip p50 at most ``factor`` x ProcessPoolExecutor's."""

    def judge(run: _Run) -> Verdict | None:
        p50, ppe50 = (run.median("latency", k, "p50_ms") for k in (front, PPE))
        if p50 is None or ppe50 is None:
            return None
        return f"{p50:.3f} vs {ppe50:.3f} ms", p50 / ppe50, p50 / ppe50 <= factor

    return judge


def _p99(front: str) -> Judge:
    """``front``'s idle round trip p99 at most twice its own p50."""

    def judge(run: _Run) -> Verdict | None:
        p50, p99 = (run.median("latency", front, m) for m in ("p50_ms", "p99_ms"))
        if p50 is None or p99 is None:
            return None
        return f"p99 {p99:.3f} ms, p50 {p50:.3f} ms", p99 / p50, p99 / p50 <= 2.0

    return judge


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
_MAIN = "`__main__` fn"
_IMPORTABLE = "importable fn"
#: Issue #11's map targets: chunk size -> at least this x multiprocessing.Pool.imap.
MAP_TARGETS = {1: 1.0, 1000: 1.1}


def _goals() -> list[_Goal]:
    """Every target, in report order: issue #11's, then what issue #4 set that
    #11 did not restate."""
    return [
        _Goal(f"tiny tasks one by one, {_MAIN}", ">= 1.5x multiprocessing.Pool.apply_async",
              _at_least("tiny:main", POOL, 1.5)),
        _Goal(f"tiny tasks one by one, {_MAIN}", ">= 4x ProcessPoolExecutor",
              _at_least("tiny:main", PPE, 4.0)),
        _Goal(f"tiny tasks one by one, {_IMPORTABLE}", ">= 1.5x multiprocessing.Pool.apply_async",
              _at_least("tiny:importable", POOL, 1.5)),
        *(_Goal(f"map, chunksize {cs}, {_MAIN}", f">= {factor:.1f}x multiprocessing.Pool.imap",
                _at_least(f"map{cs}:main", POOL, factor))
          for cs, factor in MAP_TARGETS.items()),
        _Goal("idle round trip p50, ProcQueue", "<= 0.7x ProcessPoolExecutor's p50",
              _p50(PQ, 0.7)),
        _Goal("idle round trip p50, TaskQueue", "<= 1.0x ProcessPoolExecutor's p50",
              _p50(TQ, 1.0)),
        _Goal("idle round trip p99, ProcQueue", "p99 <= 2x its own p50", _p99(PQ)),
        _Goal("idle round trip p99, TaskQueue", "p99 <= 2x its own p50", _p99(TQ)),
        _Goal("~20 ms CPU tasks, ProcQueue",
              ">= 98 % parallel efficiency (sequential time / (wall x workers))", _cpu(PQ)),
        _Goal("~20 ms CPU tasks, TaskQueue",
              ">= 98 % parallel efficiency (sequential time / (wall x workers))", _cpu(TQ)),
        _Goal("4 MB arguments (in only)", ">= 2x ProcessPoolExecutor's MB/s, ahead of every peer",
              _times_ppe_and_ahead("payload:args", "mb_per_s", "MB/s", 2)),
        _Goal("4 MB results (out only)", ">= 2x ProcessPoolExecutor's MB/s, ahead of every peer",
              _times_ppe_and_ahead("payload:results", "mb_per_s", "MB/s", 2)),
        _Goal("memory per pending task", _MEMORY_GOAL, _memory, every_method=False),
        # Issue #4's targets that #11 did not restate.
        _Goal("memory per pending task, the Future aside",
              _MEMORY_GOAL + " (ProcQueue beyond a bare Future; TaskQueue, whose handle is "
              "an int)", _memory_own, issue=4, every_method=False,
              # Kept from before the table: unmeasured, the row shows the plain goal.
              unmeasured_goal=_MEMORY_GOAL),
        _Goal("start-up", "start-up to first result no slower than ProcessPoolExecutor",
              _startup, issue=4, every_method=False),
        _Goal("throughput at scale", "throughput at 1M tasks within 10 % of 10k", _scale,
              issue=4, every_method=False),
        _Goal("recovery after SIGKILL", "killed task re-running within 50 ms; every result kept",
              _recovery, issue=4, every_method=False),
    ]  # fmt: skip


def measured_methods(cfg: BenchConfig) -> list[str]:
    """The main start method, then each extra one (once each)."""
    out = [cfg.start_method]
    out += [m for m in cfg.extra_start_methods if m not in out]
    return out


def evaluate(results: dict[str, WorkloadResult], cfg: BenchConfig) -> list[Target]:
    """Every target on every start method it is judged on, in table order: a
    verdict where this run has the numbers, ``None`` (not measured) elsewhere."""
    methods = measured_methods(cfg)
    runs = [_Run(results, cfg, m) for m in methods]
    out = []
    for goal in _goals():
        for run in runs if goal.every_method else runs[:1]:
            out.append(goal.target(run))
    return out
