"""The workloads that share one pool per contestant per round ("sessions").

A round opens each contestant's pool once, in rotated order, and runs every
session workload on it::

    open the pool ─ first result (start-up) ─ warm every worker ─ latency (idle;
      __main__ fn, importable fn) ─ tiny one by one (both) ─ map chunksize 1
      (both) ─ map chunksize 1000 (both) ─ payload (both ways, args only,
      results only) ─ io ─ cpu ─ sweep points ─ shutdown (timed)

so a contestant pays one start-up per round, not one per workload, and only one
pool is alive at a time (no other pool's threads run during a fork, or steal a
core during a timing). Round 0 is the warm-up: its figures are kept apart and
never enter a median, but they size what must be sized by time (tiny tasks one
by one, and map at every chunk size: :meth:`SessionWorkload.after_warm_up`,
:func:`size_by_time`), one size for the timed rounds (:class:`MapChunks` says
when, with a chunk size above 1, a slow contestant runs fewer items, and the
table shows it). A contestant that FAILs a workload sits
out that workload for the remaining rounds; its pool is closed and a fresh one
serves the rest of the session.

The other workloads (scale, memory, kill) need a pool of their own each time
and live in :mod:`._phases`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import _tasks
from ._config import BenchConfig
from ._contestants import Contestant
from ._measure import (
    CLEANUP_TIMEOUT_S,
    WARM_SLEEP_S,
    Cell,
    WorkloadResult,
    check,
    close_within,
    percentile,
    rotate,
    timed,
    warm_workers,
)
from ._pool import Pool, Unsupported, deadline_after, time_left
from ._sizing import size_by_time
from ._task_fns import TaskFns, task_fns

_log = logging.getLogger("procqueue.bench")

IN_PROCESS = frozenset({"sequential", "threads", "asyncio"})
#: Every contestant that keeps a pool of workers (threads included).
EVERY_POOL = frozenset(
    {"threads", "ppe", "mp.Pool", "ProcQueue", "TaskQueue", "loky", "joblib", "pebble", "mpire"}
)


def calibrate(target_ms: float) -> tuple[int, float]:
    """Iterations of :func:`_tasks.spin` that take ``target_ms`` here,
    sequentially, and the time (ms) they were last measured at.

    Takes the fastest of several samples: on a shared machine noise only ever
    adds time, and one slow sample would otherwise shrink every task.
    """
    iterations = 10_000
    while True:
        elapsed, _ = timed(functools.partial(_tasks.spin, iterations))
        if elapsed >= 0.005:
            break
        iterations *= 2
    for _ in range(4):  # scale, re-measure; stop once within 5 %
        iterations = max(1, round(iterations * target_ms / 1000 / elapsed))
        elapsed = min(timed(functools.partial(_tasks.spin, iterations))[0] for _ in range(5))
        if abs(elapsed * 1000 / target_ms - 1) < 0.05:
            break
    return iterations, elapsed * 1000


class SessionWorkload:
    """One workload run inside a session. ``run`` returns the metrics of one
    repetition and raises :class:`~._measure.AnswerError` on a wrong answer."""

    #: The results key (``tiny:main``, ``map1000:importable``, ``payload:args``).
    key = ""
    #: The workload it belongs to, as ``--workloads`` and ``Contestant.only`` name it.
    group = ""
    title = ""
    #: Families entered (``None``: every contestant but asyncio).
    families: frozenset[str] | None = None

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.params: dict[str, Any] = {}

    def applies(self, c: Contestant) -> bool:
        if c.only is not None and self.group not in c.only:
            return False
        if self.families is None:
            return c.family != "asyncio"
        return c.family in self.families

    def run(self, pool: Pool) -> dict[str, float | None]:
        raise NotImplementedError

    def after_warm_up(self, cells: Mapping[str, Cell], pools: frozenset[str]) -> None:
        """Called once the warm-up round is done, with this workload's cells and
        the keys of the contestants that are process pools: a workload sized by
        time sets its size for the timed rounds here (``title`` and ``params``
        included). Most are sized by count."""


def _expected_sum(n: int) -> int:
    """``sum(add_one(i) for i in range(n))``."""
    return n * (n - 1) // 2 + n


#: Latency: a pool that took ``latency_max_s`` for its trips stops after at
#: least this many (joblib's round trip opens a ``Parallel`` each time: ~11 ms).
LATENCY_MIN_TRIPS = 200
#: Latency: trips per ``Pool.round_trips`` call, between which the time is read.
LATENCY_BATCH = 100


class Latency(SessionWorkload):
    """Round trips on an idle pool, with the tiny task of ``fns`` (its own rows)."""

    group = "latency"
    families = EVERY_POOL

    def __init__(self, cfg: BenchConfig, fns: TaskFns) -> None:
        super().__init__(cfg)
        self.fns = fns
        self.key = f"latency:{fns.kind}"
        trips, budget = cfg.latency_trips, cfg.latency_max_s
        self.min_trips = min(trips, LATENCY_MIN_TRIPS)
        cap = ""
        if self.min_trips < trips:
            cap = f" (a pool whose trips pass {budget:g} s stops after {self.min_trips:,} or more)"
        self.title = (
            f"Round trip of one task on an idle pool, {fns.label}: {trips:,} sequential "
            f"submit-and-wait calls of add_one per round{cap}; add_one is {fns.where}"
        )
        self.params = {
            "trips": trips,
            "min_trips": self.min_trips,
            "max_s": budget,
            "fn": fns.kind,
            "fn_where": fns.where,
        }

    def run(self, pool: Pool) -> dict[str, float | None]:
        self.fns.check_runs_on(pool)
        n, fn = self.cfg.latency_trips, self.fns.add_one
        deadline = deadline_after(self.cfg.timeout)
        trips: list[tuple[Any, float]] = []
        spent = 0.0  # seconds inside the trips themselves
        while len(trips) < n:
            calls = [(i,) for i in range(len(trips), min(n, len(trips) + LATENCY_BATCH))]
            batch = pool.round_trips(fn, calls, time_left(deadline))
            trips += batch
            spent += sum(s for _v, s in batch)
            if len(trips) >= self.min_trips and spent >= self.cfg.latency_max_s:
                break
        for i, (value, _s) in enumerate(trips):
            check(value == i + 1, f"round trip {i}: got {value!r}, expected {i + 1}")
        samples = sorted(s for _v, s in trips)
        return {
            "p50_ms": percentile(samples, 50) * 1000,
            "p99_ms": percentile(samples, 99) * 1000,
            "max_ms": samples[-1] * 1000,
            "trips": float(len(samples)),
        }


class Tiny(SessionWorkload):
    """Tiny tasks one by one, with the tiny task of ``fns`` (its own rows).

    The warm-up round runs ``tiny_tasks``; the timed rounds run as many as the
    fastest process pool's warm-up rate needs for a run of at least
    ``tiny_min_s`` (:meth:`after_warm_up`, :func:`size_by_time`), at most
    ``tiny_max_tasks``, the same for every contestant of the row.
    """

    group = "tiny"

    def __init__(self, cfg: BenchConfig, fns: TaskFns) -> None:
        super().__init__(cfg)
        self.fns = fns
        self.key = f"tiny:{fns.kind}"
        self._size(cfg.tiny_tasks, "")

    def _size(self, n: int, sized: str) -> None:
        """Run ``n`` tasks from now on. A ``range``: each run builds its calls
        (untimed), so that 100k of them are not held through later forks."""
        self.items = range(n)
        self.title = (
            f"Tiny tasks, one by one, {self.fns.label}: {n:,} x add_one(x) = x + 1, a handle "
            f"each; add_one is {self.fns.where}{sized}"
        )
        self.params = {**self.params, "tasks": n, "fn": self.fns.kind, "fn_where": self.fns.where}

    def after_warm_up(self, cells: Mapping[str, Cell], pools: frozenset[str]) -> None:
        cfg = self.cfg
        size = size_by_time(
            cells,
            pools,
            base=len(self.items),
            min_s=cfg.tiny_min_s,
            max_items=cfg.tiny_max_tasks,
        )
        if size is None:
            return
        self.params["sized_by_time"] = size.params()
        _log.info("%s: %s tasks (%s warmed up at %.0f tasks/s)", self.key, f"{size.items:,}",
                  size.fastest, size.rate)  # fmt: skip
        self._size(size.items, size.title())

    def run(self, pool: Pool) -> dict[str, float | None]:
        if not pool.one_by_one:
            raise Unsupported("no per-task handle (joblib runs batches of calls)")
        self.fns.check_runs_on(pool)
        calls = [(i,) for i in self.items]
        n, fn = len(calls), self.fns.add_one
        wall, results = timed(lambda: pool.run_all(fn, calls, self.cfg.timeout))
        check(len(results) == n, f"{len(results)} results for {n} tasks")
        got = sum(results)
        check(got == _expected_sum(n), f"sum {got}, expected {_expected_sum(n)}")
        return {"tasks_per_s": n / wall, "wall_s": wall, "tasks": float(n)}


class MapChunks(SessionWorkload):
    """``map`` with one chunk size, with the tiny task of ``fns`` (its own rows).

    A run of a few thousand items is too short to time on a fast pool (with
    a chunk size above 1, milliseconds); so the warm-up round runs a size by
    count (``map_tasks``; with a chunk size above 1, at least
    ``map_chunks_per_worker`` chunks per worker), and the timed rounds run as
    many items as the fastest process pool's warm-up rate needs for a run of
    at least ``map_min_s`` (:meth:`after_warm_up`, :func:`size_by_time`), at
    most ``map1_max_tasks`` at chunk size 1 (where every contestant runs
    them) and ``map_max_tasks`` above, where a contestant that would need more
    than ``map_max_s`` for them runs about ``map_max_s`` seconds' worth, in
    whole chunks (a steady state all the same; a full-size run would cost
    minutes), and every run records its items.
    """

    group = "map"

    def __init__(self, cfg: BenchConfig, chunksize: int, fns: TaskFns) -> None:
        super().__init__(cfg)
        n = cfg.map_tasks
        if chunksize > 1:
            n = max(n, cfg.map_chunks_per_worker * chunksize * cfg.workers)
        self.chunksize = chunksize
        self.fns = fns
        self.key = f"map{chunksize}:{fns.kind}"
        #: Contestants that run fewer than ``len(self.items)``: key -> items.
        self.fewer: dict[str, int] = {}
        self._size(n, "")

    def _size(self, n: int, sized: str) -> None:
        """Run ``n`` items from now on. A ``range``, not a list: a million
        items held through the sessions would slow every later fork."""
        self.items = range(n)
        self.title = (
            f"Tiny tasks through map, chunksize {self.chunksize}, {self.fns.label}: {n:,} x "
            "add_one (mp.Pool.imap, Executor.map, joblib batch_size, mpire chunk_size); add_one "
            f"is {self.fns.where}{sized}"
        )
        self.params = {
            **self.params,
            "tasks": n,
            "chunksize": self.chunksize,
            "fn": self.fns.kind,
            "fn_where": self.fns.where,
        }

    def after_warm_up(self, cells: Mapping[str, Cell], pools: frozenset[str]) -> None:
        cfg = self.cfg
        one = self.chunksize == 1
        step = self.chunksize * cfg.workers  # whole chunks, the same number per worker
        base = len(self.items)
        size = size_by_time(
            cells,
            pools,
            base=base,
            min_s=cfg.map_min_s,
            max_items=cfg.map1_max_tasks if one else cfg.map_max_tasks,
            step=step,
        )
        if size is None:
            return
        n = size.items
        sized = size.params()
        if not one:  # chunk size 1: the same items for every contestant
            for key, cell in cells.items():
                own = cell.warmup.get("tasks_per_s")
                if cell.ok and own and n / own > cfg.map_max_s:
                    fewer = max(base, math.floor(own * cfg.map_max_s / step) * step)
                    if fewer < n:
                        self.fewer[key] = fewer
            sized["max_s"] = cfg.map_max_s
            sized["fewer"] = {cells[k].label: m for k, m in self.fewer.items()}
        self.params["sized_by_time"] = sized
        _log.info("%s: %s items (%s warmed up at %.0f tasks/s)", self.key, f"{n:,}",
                  size.fastest, size.rate)  # fmt: skip
        self._size(n, size.title())

    def run(self, pool: Pool) -> dict[str, float | None]:
        self.fns.check_runs_on(pool)
        items = self.items
        if pool.contestant in self.fewer:
            items = range(self.fewer[pool.contestant])
        n, fn = len(items), self.fns.add_one
        wall, results = timed(lambda: pool.map(fn, items, self.chunksize, self.cfg.timeout))
        check(len(results) == n, f"{len(results)} results for {n} tasks")
        check(results[0] == 1 and results[-1] == n, "results out of order")
        got = sum(results)
        check(got == _expected_sum(n), f"sum {got}, expected {_expected_sum(n)}")
        return {"tasks_per_s": n / wall, "wall_s": wall, "tasks": float(n)}


#: The payload workload's directions: what goes in, what comes out, per task.
PAYLOAD_DIRECTIONS = {
    "echo": "echo(payload) -> the same bytes back: the payload goes both ways",
    "args": "payload_digest(payload) -> (length, head, middle byte, tail): the payload "
    "goes in only",
    "results": "payload_result(index, size) -> (index, the payload): it comes out only "
    "(each worker builds the payload once, before the timing, and returns it every time)",
}


class Payload(SessionWorkload):
    """Large payloads one way (``args``, ``results``) or both (``echo``)."""

    group = "payload"
    families = EVERY_POOL

    def __init__(self, cfg: BenchConfig, direction: str, payloads: list[bytes]) -> None:
        super().__init__(cfg)
        self.size = int(cfg.payload_mb * 1_000_000)
        self.direction = direction
        self.key = f"payload:{direction}"
        # Built once and shared by the three directions: what is sent, and what
        # must come back.
        self.payloads = payloads
        # What payload_result returns (results only).
        self.result = (
            _tasks.make_payload(_tasks.RESULT_INDEX, self.size) if direction == "results" else b""
        )
        n = len(payloads)
        ways = {"echo": "in and out", "args": "arguments only", "results": "results only"}
        self.title = (
            f"Large payloads, {ways[direction]}: {n} x {cfg.payload_mb:g} MB; "
            f"{PAYLOAD_DIRECTIONS[direction]}"
        )
        self.params = {"tasks": n, "bytes": self.size, "direction": direction}

    def run(self, pool: Pool) -> dict[str, float | None]:
        n, size, timeout = len(self.payloads), self.size, self.cfg.timeout
        if self.direction == "echo":
            calls: list[tuple[Any, ...]] = [(p,) for p in self.payloads]
            wall, results = timed(lambda: pool.run_all(_tasks.echo, calls, timeout))
        elif self.direction == "args":
            calls = [(p,) for p in self.payloads]
            wall, results = timed(lambda: pool.run_all(_tasks.payload_digest, calls, timeout))
        else:
            # Every worker builds the result once, untimed (as warm_workers does,
            # the sleep hands each worker its share of the calls).
            prime = [(size, WARM_SLEEP_S)] * (2 * self.cfg.workers)
            pool.run_all(_tasks.prime_payload_result, prime, timeout)
            calls = [(i, size) for i in range(n)]
            wall, results = timed(lambda: pool.run_all(_tasks.payload_result, calls, timeout))
        check(len(results) == n, f"{len(results)} results for {n} tasks")
        for i, (got, sent) in enumerate(zip(results, self.payloads)):
            if self.direction == "args":
                want = _tasks.payload_digest(sent)
                check(got == want, f"payload {i}: digest {got!r}, expected {want!r}")
            elif self.direction == "results":
                index, data = got
                check(index == i, f"result {i} came back as {index}'s")
                check(data == self.result, f"result {i} is different ({len(data)} bytes)")
            else:
                check(got == sent, f"payload {i} came back different ({len(got)} bytes)")
        moved = size * n * (2 if self.direction == "echo" else 1)
        return {"mb_per_s": moved / wall / 1e6, "wall_s": wall}


class Io(SessionWorkload):
    key = group = "io"
    families = None

    def __init__(self, cfg: BenchConfig) -> None:
        super().__init__(cfg)
        n = cfg.io_tasks
        self.seconds = cfg.io_ms / 1000
        self.calls = [(i, self.seconds) for i in range(n)]
        self.title = f"I/O-bound tasks: {n} x sleep {cfg.io_ms:g} ms"
        self.params = {"tasks": n, "sleep_ms": cfg.io_ms}

    def applies(self, c: Contestant) -> bool:
        return c.only is None or self.group in c.only

    def run(self, pool: Pool) -> dict[str, float | None]:
        n = len(self.calls)
        wall, results = timed(lambda: pool.run_all(_tasks.io_task, self.calls, self.cfg.timeout))
        check(sum(results) == _expected_sum(n), f"sum {sum(results)}")
        return {"tasks_per_s": n / wall, "wall_s": wall}


class Cpu(SessionWorkload):
    key = group = "cpu"

    def __init__(self, cfg: BenchConfig, iterations: int, measured_ms: float) -> None:
        super().__init__(cfg)
        n = cfg.cpu_tasks_per_worker * cfg.workers
        self.calls = [(i, iterations) for i in range(n)]
        self.unit = _tasks.spin(iterations)
        self.title = (
            f"CPU-bound tasks: {n} x ~{measured_ms:.1f} ms pure-Python loop "
            f"({iterations:,} iterations)"
        )
        self.params = {"tasks": n, "iterations": iterations, "task_ms": measured_ms}

    def run(self, pool: Pool) -> dict[str, float | None]:
        n = len(self.calls)
        wall, results = timed(lambda: pool.run_all(_tasks.cpu_task, self.calls, self.cfg.timeout))
        expected = n * (n - 1) // 2 + n * self.unit
        check(sum(results) == expected, f"sum {sum(results)}, expected {expected}")
        return {"wall_s": wall, "tasks_per_s": n / wall}


class SweepPoint(SessionWorkload):
    """One task size of the throughput-against-task-size sweep."""

    group = "sweep"
    families = frozenset({"sequential", "ppe", "mp.Pool", "ProcQueue"})

    def __init__(self, cfg: BenchConfig, task_ms: float, iters_per_ms: float) -> None:
        super().__init__(cfg)
        self.task_ms = task_ms
        self.key = f"sweep@{task_ms:g}ms"
        if task_ms == 0:
            n = cfg.tiny_tasks
            self.iterations = 0
            self.calls: list[tuple[Any, ...]] = [(i,) for i in range(n)]
            self.unit = 1
        else:
            self.iterations = max(1, round(task_ms * iters_per_ms))
            n = max(4 * cfg.workers, min(20_000, round(cfg.sweep_work_s * 1000 / task_ms)))
            self.calls = [(i, self.iterations) for i in range(n)]
            self.unit = _tasks.spin(self.iterations)
        self.title = f"sweep point {task_ms:g} ms x {n:,}"
        self.params = {"tasks": n, "task_ms": task_ms, "iterations": self.iterations}

    def applies(self, c: Contestant) -> bool:
        # The sweep runs on the main start method only: one line per library.
        return super().applies(c) and "/" not in c.key

    def run(self, pool: Pool) -> dict[str, float | None]:
        n = len(self.calls)
        fn = _tasks.add_one if self.iterations == 0 else _tasks.cpu_task
        wall, results = timed(lambda: pool.run_all(fn, self.calls, self.cfg.timeout))
        expected = n * (n - 1) // 2 + n * self.unit
        check(sum(results) == expected, f"sum {sum(results)}, expected {expected}")
        return {"tasks_per_s": n / wall, "wall_s": wall}


def session_workloads(
    cfg: BenchConfig, calibration: tuple[int, float] | None
) -> list[SessionWorkload]:
    """The session workloads ``cfg`` asks for, in session order."""
    out: list[SessionWorkload] = []
    wants_fns = any(cfg.wants(w) for w in ("latency", "tiny", "map"))
    fns = task_fns(cfg.task_fns) if wants_fns else []
    if cfg.wants("latency"):
        out.extend(Latency(cfg, f) for f in fns)
    if cfg.wants("tiny"):
        out.extend(Tiny(cfg, f) for f in fns)
    if cfg.wants("map"):
        out.extend(MapChunks(cfg, c, f) for c in cfg.chunksizes for f in fns)
    if cfg.wants("payload"):
        size = int(cfg.payload_mb * 1_000_000)
        payloads = [_tasks.make_payload(i, size) for i in range(cfg.payload_tasks)]
        out.extend(Payload(cfg, d, payloads) for d in PAYLOAD_DIRECTIONS)
    if cfg.wants("io"):
        out.append(Io(cfg))
    if calibration is not None:
        iterations, measured_ms = calibration
        if cfg.wants("cpu"):
            out.append(Cpu(cfg, iterations, measured_ms))
        if cfg.wants("sweep"):
            per_ms = iterations / measured_ms
            out.extend(SweepPoint(cfg, ms, per_ms) for ms in cfg.sweep_task_ms)
    return out


def run_sessions(
    cfg: BenchConfig, contestants: Sequence[Contestant], workloads: Sequence[SessionWorkload]
) -> dict[str, WorkloadResult]:
    """Warm-up round plus ``cfg.reps`` timed rounds over every session workload;
    returns one :class:`WorkloadResult` per workload key, plus ``startup``."""
    results = {wl.key: WorkloadResult(wl.key, wl.title, dict(wl.params)) for wl in workloads}
    startup = WorkloadResult(
        "startup",
        "Start-up to first result (pool constructor to add_one's answer) and shutdown "
        "(after the session's work)",
    )
    entered = []
    for c in contestants:
        wls = [wl for wl in workloads if wl.applies(c)]
        timed_start = cfg.wants("startup") and c.family not in ("sequential", "asyncio")
        timed_start = timed_start and (c.only is None or "startup" in c.only)
        if not wls and not timed_start:
            continue
        entered.append(c)
        for wl in wls:
            results[wl.key].cells[c.key] = Cell(c.key, c.label)
        if timed_start:
            startup.cells[c.key] = Cell(c.key, c.label)
    for rnd in range(cfg.reps + 1):
        for c in rotate(entered, rnd):
            t0 = time.perf_counter()
            _session(cfg, c, workloads, results, startup, rnd)
            _log.debug("session: %s round %d took %.1f s", c.label, rnd, time.perf_counter() - t0)
        _log.info("sessions: round %d/%d done%s", rnd, cfg.reps, " (warm-up)" if rnd == 0 else "")
        if rnd == 0:
            pools = frozenset(c.key for c in entered if c.family not in IN_PROCESS)
            for wl in workloads:
                r = results[wl.key]
                wl.after_warm_up(r.cells, pools)
                r.title, r.params = wl.title, dict(wl.params)
    if cfg.wants("startup"):
        results["startup"] = startup
    return results


def _session(
    cfg: BenchConfig,
    c: Contestant,
    workloads: Sequence[SessionWorkload],
    results: dict[str, WorkloadResult],
    startup: WorkloadResult,
    rnd: int,
) -> None:
    """One contestant's session in round ``rnd`` (0: the warm-up)."""
    todo = [wl for wl in workloads if c.key in results[wl.key].cells]
    todo = [wl for wl in todo if results[wl.key].cells[c.key].ok]
    start_cell = startup.cells.get(c.key)
    if start_cell is not None and not start_cell.ok:
        start_cell = None
    if not todo and start_cell is None:
        return
    session = _Session(cfg, c, rnd, start_cell)
    cells = [results[wl.key].cells[c.key] for wl in todo]
    if not session.open(cells):
        return
    for wl, cell in zip(todo, cells):
        session.run(wl, cell)
    session.close()


class _Session:
    """The pool one contestant holds through one session, and what its start-up
    and shutdown figures need. ``start_cell`` is ``None`` when start-up is not
    timed for this contestant (or it FAILed before)."""

    def __init__(self, cfg: BenchConfig, c: Contestant, rnd: int, start_cell: Cell | None) -> None:
        self.cfg = cfg
        self.c = c
        self.rnd = rnd
        self.start_cell = start_cell
        self.pool: Pool | None = None
        self.first_s: float | None = None
        self.clean = True  # no failure in this session: the shutdown time counts

    def open(self, cells: Sequence[Cell]) -> bool:
        """Open the pool, time its first result, warm every worker. On failure
        every cell of the session FAILs and ``False`` comes back."""
        cfg, start_cell = self.cfg, self.start_cell
        try:
            t0 = time.perf_counter()
            self.pool = pool = self.c.open(cfg.workers, cfg.pq_options())
            if start_cell is not None:
                value = pool.round_trip(_tasks.add_one, (41,), cfg.timeout)
                self.first_s = time.perf_counter() - t0
                check(value == 42, f"first result {value!r}, expected 42")
                start_cell.start_method = pool.start_method
            seen = warm_workers(pool, cfg.workers, cfg.timeout)
            if start_cell is not None and pool.is_process_pool:
                start_cell.notes.append({"round": self.rnd, "workers_seen": len(seen)})
        except Exception as e:
            _log.exception("%s: start-up failed in round %d", self.c.label, self.rnd)
            for cell in [*cells, *([start_cell] if start_cell is not None else [])]:
                cell.fail(f"round {self.rnd}, start-up", e)
            if self.pool is not None:
                close_within(self.pool, CLEANUP_TIMEOUT_S, broken=True)
            return False
        return True

    def _reopen(self, cell: Cell) -> Pool | None:
        """A fresh pool after the last workload broke the old one (``None``, and
        ``cell`` FAILed, if that fails too)."""
        try:
            pool = self.c.open(self.cfg.workers, self.cfg.pq_options())
            warm_workers(pool, self.cfg.workers, self.cfg.timeout)
        except Exception as e:
            cell.fail(f"round {self.rnd}, reopening after a failure", e)
            return None
        return pool

    def run(self, wl: SessionWorkload, cell: Cell) -> None:
        """One repetition of ``wl`` into ``cell``; a failure closes the pool."""
        if self.pool is None:  # the last workload broke it
            self.pool = self._reopen(cell)
            if self.pool is None:
                return
        pool = self.pool
        cell.start_method = pool.start_method
        try:
            metrics = wl.run(pool)
        except Unsupported as e:
            cell.not_applicable(str(e))
            return
        except Exception as e:
            _log.exception("%s: %s failed in round %d", self.c.label, wl.key, self.rnd)
            cell.fail(f"round {self.rnd}, {wl.key}", e)
            self.clean = False
            if not close_within(pool, CLEANUP_TIMEOUT_S, broken=True):
                _log.error("%s: cleanup hung; abandoned", self.c.label)
            self.pool = None
            return
        cell.add(metrics, warm_up=self.rnd == 0)

    def close(self) -> None:
        """Close the pool, timing the shutdown for the start-up table."""
        if self.pool is None:
            return
        t0 = time.perf_counter()
        closed = close_within(self.pool, CLEANUP_TIMEOUT_S)
        shutdown_s = time.perf_counter() - t0
        start_cell = self.start_cell
        if start_cell is None:
            return
        if not closed:
            start_cell.fail(f"round {self.rnd}, shutdown", TimeoutError("shutdown hung"))
        elif self.clean and self.first_s is not None:
            metrics: dict[str, float | None] = {"start_s": self.first_s, "shutdown_s": shutdown_s}
            start_cell.add(metrics, warm_up=self.rnd == 0)
