"""The markdown report: a header with the run's context, the targets, a table
per workload and a footer.

Every table puts the ratio against ProcessPoolExecutor first (the PPE row on
the same start method; the main one for libraries that offer no choice), then
the absolute numbers: median, min and max over the timed rounds. A FAILed
cell shows ``FAIL`` and never a time; ``n/a`` means the library has no API for
that workload.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from typing import Any

from ._config import BenchConfig, workload_group
from ._measure import FAIL, NA, Cell, WorkloadResult
from ._memprobe import BARE_FUTURE
from ._targets import Target

#: Contestants whose ``submit`` returns a ``concurrent.futures.Future``.
FUTURE_HANDLES = ("ppe", "ProcQueue")

# --- number formats ------------------------------------------------------------------


def fmt_rate(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def fmt_s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def _spread(cell: Cell, metric: str, fmt: Callable[[float | None], str]) -> str:
    """``median (min-max)``, or the status when there is no number."""
    if cell.status == FAIL:
        return "FAIL"
    if cell.status == NA:
        return "n/a"
    med = cell.median(metric)
    if med is None:
        return "—"
    lo_hi = cell.spread(metric)
    assert lo_hi is not None
    return f"{fmt(med)} ({fmt(lo_hi[0])}-{fmt(lo_hi[1])})"


def _status(cell: Cell) -> str:
    if cell.status == FAIL:
        return f"FAIL: {cell.error}"
    if cell.status == NA:
        return f"n/a ({cell.error})"
    return "ok"


def baseline_key(key: str, family: str = "ppe") -> str:
    """The row a ratio is taken against: ``family`` on the same start method.
    A row keyed without a start method (the main one, or a library that offers
    no choice: the loop, threads, joblib) is taken against the main one."""
    if "/" in key:
        return f"{family}/{key.split('/', 1)[1]}"
    return family


def _ratio(
    r: WorkloadResult, cell: Cell, metric: str, *, family: str = "ppe", invert: bool = False
) -> str:
    # No fallback to another start method's baseline: a forkserver row divided
    # by the fork PPE would read as a like-for-like ratio. Without its own
    # baseline in this table, the row shows "—".
    base = r.cell(baseline_key(cell.contestant, family))
    if base is None:
        return "—"
    mine, theirs = cell.median(metric), base.median(metric)
    if mine is None or theirs is None or theirs == 0 or mine == 0:
        return "—"
    return fmt_ratio(theirs / mine if invert else mine / theirs)


# --- tables --------------------------------------------------------------------------

Column = tuple[str, str, Callable[[Cell], str]]  # header, alignment, cell -> text


def _table(r: WorkloadResult, columns: Sequence[Column], notes: Sequence[str] = ()) -> str:
    head: list[Column] = [
        ("contestant", "---", lambda c: c.label),
        ("start method", "---", lambda c: c.start_method),
    ]
    cols = [*head, *columns, ("answer", "---", _status)]
    lines = [f"### {r.title}", ""]
    if notes:
        lines += [" ".join(notes), ""]
    lines.append("| " + " | ".join(h for h, _, _ in cols) + " |")
    lines.append("|" + "|".join(a for _, a, _ in cols) + "|")
    for cell in r.cells.values():
        lines.append("| " + " | ".join(f(cell) for _, _, f in cols) + " |")
    return "\n".join(lines)


def _rate_table(r: WorkloadResult, metric: str, unit: str, notes: Sequence[str] = ()) -> str:
    return _table(
        r,
        [
            (f"{unit} ÷ PPE", "---:", lambda c: _ratio(r, c, metric)),
            (f"{unit} median (min-max)", "---:", lambda c: _spread(c, metric, fmt_rate)),
        ],
        notes,
    )


def _span(c: Cell, metric: str) -> str:
    """A count over the rounds (trips, items): ``n``, or ``lo-hi`` when it varied."""
    vals = c.values(metric)
    if not vals or not c.ok:
        return "—"
    lo, hi = min(vals), max(vals)
    return f"{lo:,.0f}" if lo == hi else f"{lo:,.0f}-{hi:,.0f}"


def table_latency(r: WorkloadResult) -> str:
    def own(c: Cell) -> str:
        p50, p99 = c.median("p50_ms"), c.median("p99_ms")
        return "—" if p50 is None or p99 is None else fmt_ratio(p99 / p50)

    def trips(c: Cell) -> str:
        return _span(c, "trips")

    return _table(
        r,
        [
            ("p50 ÷ PPE p50", "---:", lambda c: _ratio(r, c, "p50_ms")),
            ("p50 ms median (min-max)", "---:", lambda c: _spread(c, "p50_ms", fmt_ms)),
            ("p99 ms median (min-max)", "---:", lambda c: _spread(c, "p99_ms", fmt_ms)),
            ("p99 ÷ own p50", "---:", own),
            ("trips a round", "---:", trips),
        ],
        [
            "Percentiles by nearest rank over each round's trips (p99 of 1,000 trips has 10 "
            "above it; fewer trips, fewer); lower is better.",
        ],
    )


def table_startup(r: WorkloadResult) -> str:
    def seen(c: Cell) -> str:
        counts = [n["workers_seen"] for n in c.notes if "workers_seen" in n]
        return str(min(counts)) if counts else "—"

    return _table(
        r,
        [
            ("start ÷ PPE", "---:", lambda c: _ratio(r, c, "start_s")),
            ("start→1st result median (min-max)", "---:", lambda c: _spread(c, "start_s", fmt_s)),
            ("shutdown median (min-max)", "---:", lambda c: _spread(c, "shutdown_s", fmt_s)),
            ("workers seen", "---:", seen),
        ],
        [
            "Start: pool constructor to add_one's answer, fresh pool each round. Shutdown: "
            "after the session's work (waits for the workers). Lower is better.",
        ],
    )


def table_against_pool(
    r: WorkloadResult, pool_api: str, more: Sequence[Column] = (), notes: Sequence[str] = ()
) -> str:
    """tasks/s against ProcessPoolExecutor and multiprocessing.Pool (its
    ``pool_api``) on the same start method: the tiny and map tables."""
    return _table(
        r,
        [
            ("tasks/s ÷ PPE", "---:", lambda c: _ratio(r, c, "tasks_per_s")),
            (f"÷ mp.Pool.{pool_api}", "---:",
             lambda c: _ratio(r, c, "tasks_per_s", family="mp.Pool")),
            ("tasks/s median (min-max)", "---:", lambda c: _spread(c, "tasks_per_s", fmt_rate)),
            *more,
        ],
        notes,
    )  # fmt: skip


#: Families that run in this process (no pool of processes).
IN_PROCESS = ("sequential", "threads", "asyncio")


def _is_process_pool(cell: Cell) -> bool:
    return cell.contestant.split("/")[0].split("-")[0] not in IN_PROCESS


def _sized_note(r: WorkloadResult, sized: dict[str, Any]) -> str:
    """The note under a table sized by time: the size, how it was chosen, and
    the fastest process pool's median run."""
    walls = [
        (w, c.label)
        for c in r.cells.values()
        if _is_process_pool(c) and (w := c.median("wall_s")) is not None
    ]
    fastest = ""
    if walls:
        w, label = min(walls)
        fastest = f" The fastest process pool's median run here: {label}, {fmt_s(w)}."
    max_s = sized.get("max_s")
    cap = sized.get("max_tasks")
    capped = f", capped at {cap:,} items" if sized.get("capped") and cap else ""
    note = (
        f"Sized by time: {r.params['tasks']:,} items"
        + ("" if max_s else " for every contestant")
        + f", so that the fastest process pool's run lasts {sized['min_s']:g} s or more ("
        f"{sized['fastest']} ran {sized['warmup_tasks_per_s']:,.0f} tasks/s in the warm-up "
        f"round, at {sized['warmup_tasks']:,} items){capped}."
    )
    if max_s:
        note += (
            f" A contestant that would need more than {max_s:g} s for them (at its warm-up "
            f"rate) runs about {max_s:g} s' worth of whole chunks instead: see 'items a run'."
        )
    return note + fastest


def _wall(c: Cell) -> str:
    return _spread(c, "wall_s", fmt_s) if c.ok else "—"


def table_map(r: WorkloadResult) -> str:
    sized = r.params.get("sized_by_time")
    if not sized:
        return table_against_pool(r, "imap")

    def items(c: Cell) -> str:
        return _span(c, "tasks")

    more: list[Column] = [("wall median (min-max)", "---:", _wall)]
    if sized.get("max_s"):  # some contestants may run fewer items: show each one's
        more.insert(0, ("items a run", "---:", items))
    return table_against_pool(r, "imap", more, [_sized_note(r, sized)])


def table_tiny(r: WorkloadResult) -> str:
    sized = r.params.get("sized_by_time")
    if not sized:
        return table_against_pool(r, "apply_async")
    more: list[Column] = [("wall median (min-max)", "---:", _wall)]
    return table_against_pool(r, "apply_async", more, [_sized_note(r, sized)])


def table_payload(r: WorkloadResult) -> str:
    both = r.params.get("direction") == "echo"
    return _rate_table(
        r,
        "mb_per_s",
        "MB/s",
        [
            "MB/s = payload bytes "
            + ("in + out" if both else "moved (one way)")
            + " per second (MB = 10^6 B)."
        ],
    )


def table_io(r: WorkloadResult, cfg: BenchConfig) -> str:
    ideal = cfg.workers * 1000 / cfg.io_ms
    text = _table(
        r,
        [
            ("tasks/s ÷ PPE", "---:", lambda c: _ratio(r, c, "tasks_per_s")),
            ("tasks/s median (min-max)", "---:", lambda c: _spread(c, "tasks_per_s", fmt_rate)),
        ],
        [
            f"At {cfg.workers} workers the ceiling is {ideal:,.0f} tasks/s for everyone; the "
            "64-wide thread pool and event loop rows are not the same worker count: they show "
            "what threads and asyncio are chosen for.",
        ],
    )
    return text + "\n\n" + io_verdict(r)


def io_verdict(r: WorkloadResult) -> str:
    """One sentence: who wins the I/O workload, read from this run's medians."""
    in_proc = {"threads", "asyncio"}
    best_in: tuple[float, str] | None = None
    best_proc: tuple[float, str] | None = None
    best_wide: tuple[float, str] | None = None
    for key, cell in r.cells.items():
        v = cell.median("tasks_per_s")
        if v is None or key == "sequential":
            continue
        family = key.split("-")[0]
        if family in in_proc and "-" in key:
            best_wide = max(best_wide or (v, cell.label), (v, cell.label))
        elif family in in_proc:
            best_in = max(best_in or (v, cell.label), (v, cell.label))
        else:
            best_proc = max(best_proc or (v, cell.label), (v, cell.label))
    if best_proc is None or (best_in is None and best_wide is None):
        return "Verdict: not enough contestants measured to compare threads/asyncio with processes."
    parts = []
    if best_in is not None:
        won = best_in[0] >= best_proc[0]
        parts.append(
            f"at the same worker count, {best_in[1]} {'wins' if won else 'does not win'} "
            f"({best_in[0]:,.0f} vs {best_proc[0]:,.0f} tasks/s for the best process pool, "
            f"{best_proc[1]}: {best_in[0] / best_proc[0]:.2f}x)"
        )
    if best_wide is not None:
        parts.append(
            f"at the concurrency they are built for, {best_wide[1]} reaches "
            f"{best_wide[0]:,.0f} tasks/s, {best_wide[0] / best_proc[0]:.1f}x the best "
            "process pool"
        )
    return (
        "Verdict: threads and asyncio are the right tool for I/O-bound work: "
        + "; ".join(parts)
        + ". Processes add a pickle and a pipe per task and buy nothing while a task sleeps."
    )


def table_cpu(r: WorkloadResult, cfg: BenchConfig) -> str:
    seq = r.cell("sequential")
    seq_wall = seq.median("wall_s") if seq is not None else None

    def eff(c: Cell) -> str:
        if c.contestant == "sequential":
            return "reference"
        wall = c.median("wall_s")
        lo_hi = c.spread("wall_s")
        if seq_wall is None or wall is None or lo_hi is None:
            return _spread(c, "wall_s", fmt_s) if not c.ok else "—"
        w = cfg.workers
        return (
            f"{seq_wall / (wall * w):.1%} "
            f"({seq_wall / (lo_hi[1] * w):.1%}-{seq_wall / (lo_hi[0] * w):.1%})"
        )

    return _table(
        r,
        [
            ("speed ÷ PPE", "---:", lambda c: _ratio(r, c, "wall_s", invert=True)),
            ("efficiency median (min-max)", "---:", eff),
            ("wall median (min-max)", "---:", lambda c: _spread(c, "wall_s", fmt_s)),
        ],
        [
            f"Efficiency = sequential median wall / (wall x {cfg.workers} workers); the range "
            "comes from the slowest and fastest round. Over 100 % means the sequential "
            "reference ran slow (noise), not free cores.",
        ],
    )


def table_sweep(points: Sequence[WorkloadResult], cfg: BenchConfig) -> str:
    if not points:
        return ""
    keys: list[str] = []
    for p in points:
        keys += [k for k in p.cells if k not in keys]
    head = ["contestant"] + [
        f"{p.params['task_ms']:g} ms x {p.params['tasks']:,}" if p.params["task_ms"] else
        f"add_one x {p.params['tasks']:,}" for p in points
    ]  # fmt: skip
    lines = [
        "### Throughput against task size (tasks/s median; efficiency for sized tasks)",
        "",
        f"Same one-by-one submission as the tiny workload, {cfg.workers} workers. Efficiency "
        "= sequential wall / (wall x workers) at the same size.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(points),
    ]
    for key in keys:
        label = key
        cells = []
        for p in points:
            cell = p.cell(key)
            if cell is None:
                cells.append("—")
                continue
            label = cell.label
            v = cell.median("tasks_per_s")
            if v is None:
                cells.append(cell.status if not cell.ok else "—")
                continue
            text = fmt_rate(v)
            seq = p.cell("sequential")
            seq_wall = seq.median("wall_s") if seq is not None else None
            wall = cell.median("wall_s")
            if p.params["task_ms"] and key != "sequential" and seq_wall and wall:
                text += f" ({seq_wall / (wall * cfg.workers):.0%})"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_scale(r: WorkloadResult) -> str:
    sizes: list[int] = r.params["sizes"]

    def at(n: int) -> Callable[[Cell], str]:
        metric = f"tasks_per_s@{n}"

        def text(c: Cell) -> str:
            if c.ok and not c.values(metric):
                return "—"  # above this pool's largest size
            return _spread(c, metric, fmt_rate)

        return text

    def keep(c: Cell) -> str:
        lo = c.median(f"tasks_per_s@{sizes[0]}")
        hi = None
        for n in sizes[::-1]:
            hi = c.median(f"tasks_per_s@{n}")
            if hi is not None:
                break
        return "—" if lo is None or hi is None else fmt_ratio(hi / lo)

    cols: list[Column] = [(f"tasks/s at {n:,}", "---:", at(n)) for n in sizes]
    cols.append(("largest ÷ smallest", "---:", keep))
    return _table(r, cols, ["A fresh pool per measurement; tasks/s median (min-max)."])


def table_memory(r: WorkloadResult) -> str:
    def growth(c: Cell) -> str:
        vals = [n["rss_after"] - n["rss_before"] for n in c.notes if "rss_after" in n]
        if not vals or not c.ok:
            return "—"
        vals.sort()
        return f"{vals[len(vals) // 2] / 2**20:,.1f} MiB"

    bare = r.cell(BARE_FUTURE)
    future = bare.median("bytes_per_task") if bare is not None else None

    def beyond(c: Cell) -> str:
        mine = c.median("bytes_per_task")
        if future is None or mine is None or c.contestant.split("/")[0] not in FUTURE_HANDLES:
            return "—"
        return fmt_rate(mine - future)

    return _table(
        r,
        [
            ("÷ PPE", "---:", lambda c: _ratio(r, c, "bytes_per_task")),
            ("beyond a bare Future", "---:", beyond),
            (
                "bytes per pending task median (min-max)",
                "---:",
                lambda c: _spread(c, "bytes_per_task", fmt_rate),
            ),
            ("RSS growth (median round)", "---:", growth),
        ],
        [
            "Each measurement in a fresh interpreter (python -m procqueue.bench._memprobe): "
            "every worker parked on a blocker task, RSS read before and after submitting "
            "the tasks; the argument tuples exist before the first reading. Lower is better.",
        ],
    )


def _kill_survived(n: int) -> Callable[[Cell], str]:
    def text(c: Cell) -> str:
        vals = c.values("survived")
        if not vals or not c.ok:
            return _status(c) if not c.ok else "—"
        return f"{min(vals):.0f}-{max(vals):.0f} of {n}"

    return text


def _spread_if_measured(metric: str) -> Callable[[Cell], str]:
    """``median (min-max)`` of ``metric`` in ms; ``—`` where no round measured it."""
    return lambda c: _spread(c, metric, fmt_ms) if c.values(metric) else "—"


def _kill_errors(c: Cell) -> str:
    seen: dict[str, int] = {}
    for note in c.notes:
        for k, v in note.get("errors", {}).items():
            seen[k] = seen.get(k, 0) + v
    return ", ".join(f"{k} x{v}" for k, v in sorted(seen.items())) or "none"


def _kill_usable(c: Cell) -> str:
    vals = c.values("usable")
    if not vals:
        return "—"
    return "yes" if min(vals) == 1 else "no" if max(vals) == 0 else "sometimes"


def _kill_rerun_on(c: Cell) -> str:
    where = {n.get("rerun_on") for n in c.notes if n.get("rerun_on")}
    return ", ".join(sorted(str(w) for w in where)) or "—"


def _kill_rss(c: Cell) -> str:
    vals = sorted(n["coordinator_rss"] for n in c.notes if n.get("coordinator_rss"))
    return f"{vals[len(vals) // 2] / 2**20:,.0f} MiB" if vals else "—"


def _kill_restarts(c: Cell) -> str:
    vals = [n["restarts"] for n in c.notes if n.get("restarts") is not None]
    return "—" if not vals else f"{min(vals)}-{max(vals)}"


def table_kill(r: WorkloadResult) -> str:
    return _table(
        r,
        [
            ("results kept (min-max)", "---:", _kill_survived(r.params["tasks"])),
            ("killed task ran again after, ms", "---:", _spread_if_measured("recovery_ms")),
            ("re-ran on", "---", _kill_rerun_on),
            ("first task on a replacement, ms", "---:", _spread_if_measured("replacement_ms")),
            ("pool usable after", "---", _kill_usable),
            ("errors seen (all rounds)", "---", _kill_errors),
            ("worker restarts", "---:", _kill_restarts),
            ("coordinator RSS", "---:", _kill_rss),
        ],
        [
            "Times run from the kill to the task's own start (wall clock in the worker). "
            "Lost results are what is measured here, not a FAIL; a wrong answer would be. "
            "Under fork a replacement costs more the larger the coordinator (page tables "
            "to copy): its RSS at the kill is in the last column.",
        ],
    )


def table_targets(targets: Sequence[Target]) -> str:
    lines = [
        "### procqueue against its targets (issues #11 and #4)",
        "",
        "procqueue against the same run's numbers, each on the start method shown (its "
        "baselines on the same one). A miss is information, not a failure: the exit status "
        "never depends on speed. A target this run did not measure says so; it is never met.",
        "",
        "| issue | target | start method | goal | measured | ratio | met |",
        "|---|---|---|---|---|---:|---|",
    ]
    for t in targets:
        met = "not measured" if t.met is None else "yes" if t.met else "**no**"
        lines.append(
            f"| #{t.issue} | {t.name} | {t.start_method} | {t.goal} | {t.measured} | "
            f"{fmt_ratio(t.ratio)} | {met} |"
        )
    return "\n".join(lines)


def _header(cfg: BenchConfig, ctx: dict[str, Any]) -> list[str]:
    """The title, the run's context in one paragraph, and the command."""
    pk = ctx["packages"]
    peers = ", ".join(f"{p} {pk[p]}" for p in ("loky", "joblib", "pebble", "mpire") if pk.get(p))
    extra = ", ".join(m for m in cfg.extra_start_methods if m != cfg.start_method)
    fns = " and ".join(
        {"main": "one defined in __main__", "importable": "an importable one"}[k]
        for k in cfg.task_fns
    )
    prefetch = "adaptive" if cfg.prefetch is None else str(cfg.prefetch)
    lines = [
        f"## procqueue comparative benchmark ({ctx['date']})",
        "",
        f"Python {platform.python_version()}, nproc {ctx['nproc']}, {cfg.workers} workers for "
        f"every pool; start method {cfg.start_method} for every process pool that lets you "
        "choose"
        + (
            f" (ProcessPoolExecutor, multiprocessing.Pool, ProcQueue and TaskQueue also on {extra})"
            if extra
            else ""
        )
        + f"; the latency, tiny and map workloads run a tiny task {fns}, each in its own table"
        + f"; procqueue {pk.get('procqueue')} (prefetch {prefetch}); "
        + (f"peers: {peers}" if peers else "no optional peers installed")
        + f"; {'quick' if cfg.quick_mode else 'full'} mode, {cfg.reps} timed rounds after a "
        "warm-up round, contestants rotated each round; git "
        f"{ctx.get('git') or 'n/a'}.",
        "",
        f"Command: `{ctx['command']}`",
        "",
    ]
    if ctx.get("not_installed"):
        lines += [f"Not installed, skipped: {', '.join(ctx['not_installed'])}.", ""]
    return lines


def _renderers(cfg: BenchConfig) -> dict[str, Callable[[WorkloadResult], str]]:
    """The table of each workload group (the sweep's points share one table)."""
    return {
        "latency": table_latency,
        "startup": table_startup,
        "tiny": table_tiny,
        "map": table_map,
        "payload": table_payload,
        "io": lambda r: table_io(r, cfg),
        "cpu": lambda r: table_cpu(r, cfg),
        "scale": table_scale,
        "memory": table_memory,
        "kill": table_kill,
    }


def _workload_tables(results: dict[str, WorkloadResult], cfg: BenchConfig) -> list[str]:
    """A table per workload, in ``results`` order; the sweep points share one."""
    renderers = _renderers(cfg)
    sweep = [r for k, r in results.items() if k.startswith("sweep@")]
    done_sweep = False
    lines: list[str] = []
    for key, r in results.items():
        group = workload_group(key)
        if group == "sweep":
            if not done_sweep:
                lines += [table_sweep(sweep, cfg), ""]
                done_sweep = True
        elif group in renderers:
            lines += [renderers[group](r), ""]
    return lines


def _footer(ctx: dict[str, Any], failed: Sequence[str]) -> str:
    """Total wall time, the load, and whether every answer was right."""
    load0, load1 = ctx.get("loadavg_at_start"), ctx.get("loadavg_at_end")
    load = (
        f"load average (1 min) {load0[0]:.2f} at start, {load1[0]:.2f} at end"
        if load0 and load1
        else "load average n/a"
    )
    return f"Total wall time {ctx.get('wall_s', 0):.1f} s; {load} on {ctx['nproc']} CPUs. " + (
        f"FAIL: {', '.join(failed)}." if failed else "Every answer checked: all correct."
    )


def render(
    results: dict[str, WorkloadResult],
    targets: Sequence[Target],
    cfg: BenchConfig,
    ctx: dict[str, Any],
    failed: Sequence[str],
) -> str:
    """The whole markdown report."""
    lines = _header(cfg, ctx)
    lines += [table_targets(targets), ""]
    lines += _workload_tables(results, cfg)
    lines.append(_footer(ctx, failed))
    return "\n".join(lines)
