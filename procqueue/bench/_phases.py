"""The workloads that need a fresh pool (or process) for every measurement.

* **scale**: tiny tasks one by one at growing counts; procqueue runs every size,
  ProcessPoolExecutor and multiprocessing.Pool up to ``scale_peer_max``.
* **memory**: coordinator memory per pending task, one fresh interpreter per
  measurement (:mod:`._memprobe`).
* **kill**: a worker SIGKILLed mid-run. How many results survive, how long until
  the killed task runs again (procqueue, which retries it), how long until a
  replacement worker runs anything, and whether the pool is usable afterwards.

Each has a warm-up round and ``reps`` timed rounds, contestants rotated.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procqueue import RetryPolicy

from . import _tasks
from ._config import BenchConfig
from ._contestants import Contestant
from ._measure import (
    CLEANUP_TIMEOUT_S,
    Cell,
    WorkloadResult,
    check,
    close_within,
    rotate,
    timed,
    warm_workers,
)
from ._memprobe import BARE_FUTURE
from ._pool import Pool

_log = logging.getLogger("procqueue.bench")

SCALE_FAMILIES = ("ProcQueue", "ppe", "mp.Pool")
MEMORY_FAMILIES = ("ProcQueue", "TaskQueue", "ppe", "mp.Pool")
KILL_FAMILIES = ("ppe", "mp.Pool", "ProcQueue", "TaskQueue", "loky", "joblib", "pebble", "mpire")
#: The families the kill also runs on the extra start methods.
KILL_EXTRA_FAMILIES = ("ppe", "ProcQueue")
#: Seconds a lost task is waited for, beyond the time the remaining work needs.
KILL_GRACE_S = 1.0
#: Seconds one add_one may take after the kill for the pool to count as usable
#: (a replacement worker may have to start first: loky's fork+exec takes ~1 s).
USABLE_TIMEOUT_S = 2.0
#: Seconds a broken pool gets to close before its workers are killed for it.
BROKEN_CLEANUP_S = 15.0


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _main_method(cs: Sequence[Contestant], families: Sequence[str]) -> list[Contestant]:
    """The contestants of ``families`` on the main start method (no ``/`` key)."""
    return [c for c in cs if c.family in families and "/" not in c.key]


# --- scale ---------------------------------------------------------------------------


def run_scale(cfg: BenchConfig, contestants: Sequence[Contestant]) -> WorkloadResult:
    sizes = sorted(cfg.scale_sizes)
    entered = _main_method(contestants, SCALE_FAMILIES)
    result = WorkloadResult(
        "scale",
        "Scale: tiny tasks (add_one) one by one at "
        + " / ".join(f"{n:,}" for n in sizes)
        + f" tasks; stdlib pools up to {cfg.scale_peer_max:,}",
        {"sizes": sizes, "peer_max": cfg.scale_peer_max},
    )
    for c in entered:
        result.cells[c.key] = Cell(c.key, c.label)
    calls = [(i,) for i in range(sizes[-1])]

    def limit(c: Contestant) -> int:
        return sizes[-1] if c.is_procqueue else cfg.scale_peer_max

    for rnd in range(cfg.reps + 1):
        # The warm-up round runs the smallest size only.
        for n in sizes[:1] if rnd == 0 else sizes:
            for c in rotate(entered, rnd):
                cell = result.cells[c.key]
                if not cell.ok or n > limit(c):
                    continue
                stage = f"round {rnd}, {n:,} tasks"
                pool = None
                try:
                    pool = c.open(cfg.workers, cfg.pq_options())
                    cell.start_method = pool.start_method
                    warm_workers(pool, cfg.workers, cfg.timeout)
                    batch = calls if n == len(calls) else calls[:n]
                    wall, results = timed(
                        lambda: pool.run_all(_tasks.add_one, batch, cfg.timeout)  # noqa: B023
                    )
                    got = sum(results)
                    del results
                    expected = n * (n - 1) // 2 + n
                    check(got == expected, f"sum {got}, expected {expected}")
                except Exception as e:
                    _log.exception("%s: scale failed (%s)", c.label, stage)
                    cell.fail(stage, e)
                    if pool is not None:
                        close_within(pool, CLEANUP_TIMEOUT_S, broken=True)
                    continue
                if not close_within(pool, CLEANUP_TIMEOUT_S):
                    cell.fail(stage, TimeoutError("shutdown hung"))
                    continue
                cell.add({f"tasks_per_s@{n}": n / wall}, warm_up=rnd == 0)
                _log.info("scale: %s %s tasks: %.0f tasks/s", c.label, f"{n:,}", n / wall)
    return result


# --- memory --------------------------------------------------------------------------


def run_memory(cfg: BenchConfig, contestants: Sequence[Contestant]) -> WorkloadResult:
    n = cfg.memory_tasks
    entered = _main_method(contestants, MEMORY_FAMILIES)
    result = WorkloadResult(
        "memory",
        f"Coordinator memory per pending task: {n:,} add_one tasks queued behind "
        "blocked workers; RSS growth / tasks, handles included, arguments excluded",
        {"tasks": n},
    )
    keys = [c.key for c in entered]
    for c in entered:
        result.cells[c.key] = Cell(c.key, c.label)
    if any(c.family in ("ppe", "ProcQueue") for c in entered):
        keys.append(BARE_FUTURE)
        result.cells[BARE_FUTURE] = Cell(
            BARE_FUTURE, "concurrent.futures.Future() alone (reference: what submit returns)"
        )
    # Every measurement runs in a fresh interpreter that warms its own pool first
    # (every worker answers before the blockers go in), and nothing carries over
    # from one measurement to the next: so no separate warm-up round here.
    for rnd in range(1, cfg.reps + 1):
        for key in rotate(keys, rnd):
            cell = result.cells[key]
            if not cell.ok:
                continue
            try:
                out = _memory_probe(cfg, key, n)
            except Exception as e:
                _log.exception("%s: memory probe failed", cell.label)
                cell.fail(f"round {rnd}", e)
                continue
            cell.start_method = str(out["start_method"])
            cell.add({"bytes_per_task": float(out["bytes_per_task"])}, warm_up=rnd == 0)
            cell.notes.append({"round": rnd, **out})
    return result


def _memory_probe(cfg: BenchConfig, key: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pq-bench-mem-") as tmp:
        out_path = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "procqueue.bench._memprobe",
            "--contestant", key,
            "--tasks", str(n),
            "--workers", str(cfg.workers),
            "--start-method", cfg.start_method,
            "--timeout", str(cfg.timeout),
            "--result", str(out_path),
        ]  # fmt: skip
        if cfg.prefetch is not None:
            cmd += ["--prefetch", str(cfg.prefetch)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=cfg.timeout + 60, check=False
        )
        if proc.returncode != 0 or not out_path.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"memory probe exited {proc.returncode}:\n{tail}")
        data: dict[str, Any] = json.loads(out_path.read_text())
        return data


# --- kill ----------------------------------------------------------------------------


def run_kill(cfg: BenchConfig, contestants: Sequence[Contestant]) -> WorkloadResult:
    n = cfg.kill_tasks
    k = max(1, n // 4)
    # On the extra start methods only ProcessPoolExecutor and ProcQueue: the
    # recovery they are compared on, without a minute of multiprocessing.Pool
    # waiting for its lost task on each one.
    entered = [
        c
        for c in contestants
        if c.family in KILL_FAMILIES and ("/" not in c.key or c.family in KILL_EXTRA_FAMILIES)
    ]
    result = WorkloadResult(
        "kill",
        f"A worker SIGKILLed mid-run: {n} tasks of {cfg.kill_task_ms:g} ms (sleep); the "
        f"worker that answered task {k} is killed at once, while it runs the next one. "
        "procqueue runs with max_retries=1 and no backoff (RetryPolicy(max_retries=1, "
        "backoff_base=0)); no other pool retries",
        {"tasks": n, "kill_after": k, "task_ms": cfg.kill_task_ms},
    )
    for c in entered:
        result.cells[c.key] = Cell(c.key, c.label)
    for rnd in range(cfg.reps + 1):
        for c in rotate(entered, rnd):
            cell = result.cells[c.key]
            if not cell.ok:
                continue
            t0 = time.perf_counter()
            try:
                metrics, notes = _kill_round(cfg, c, n, k, cell)
            except Exception as e:
                _log.exception("%s: kill round %d failed", c.label, rnd)
                cell.fail(f"round {rnd}", e)
                continue
            _log.debug("kill: %s round %d took %.1f s", c.label, rnd, time.perf_counter() - t0)
            cell.add(metrics, warm_up=rnd == 0)
            cell.notes.append({"round": rnd, **notes})
    return result


@dataclass
class _Killing:
    """What one kill round saw, filled in step by step."""

    #: Pids of the workers that answered before any task was submitted.
    before: set[int]
    handles: list[Any]
    task_s: float
    answers: dict[int, tuple[int, int, float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    killed_pid: int | None = None
    t_kill: float = 0.0
    coordinator_rss: int = 0
    recovery: float | None = None
    rerun_pid: int | None = None
    replaced: list[float] = field(default_factory=list)
    usable: float = 0.0
    restarts: int | None = None

    def metrics(self) -> dict[str, float | None]:
        return {
            "survived": float(len(self.answers)),
            "recovery_ms": None if self.recovery is None else self.recovery * 1000,
            "replacement_ms": min(self.replaced) * 1000 if self.replaced else None,
            "usable": self.usable,
        }

    def notes(self) -> dict[str, Any]:
        rerun_on = None
        if self.rerun_pid is not None:
            rerun_on = "surviving worker" if self.rerun_pid in self.before else "replacement worker"
        return {
            "coordinator_rss": self.coordinator_rss,
            "errors": dict(self.errors),
            "killed_pid": self.killed_pid,
            "rerun_pid": self.rerun_pid,
            "rerun_on": rerun_on,
            "restarts": self.restarts,
        }


def _kill_round(
    cfg: BenchConfig, c: Contestant, n: int, k: int, cell: Cell
) -> tuple[dict[str, float | None], dict[str, Any]]:
    options = dict(cfg.pq_options())
    if c.is_procqueue:
        options["retry"] = RetryPolicy(max_retries=1, backoff_base=0.0)
    pool = c.open(cfg.workers, options)
    cell.start_method = pool.start_method
    broken = True
    try:
        before = warm_workers(pool, cfg.workers, cfg.timeout)
        task_s = cfg.kill_task_ms / 1000
        handles = pool.submit_many(_tasks.tagged_sleep, [(i, task_s) for i in range(n)])
        run = _Killing(before, handles, task_s)
        _collect_and_kill(pool, cfg, run, k)
        check(run.killed_pid is not None, "the run ended before a worker could be killed")
        run.coordinator_rss = _rss()
        _find_rerun(pool, run)
        _check_usable(pool, run)
        run.restarts = pool.restarts()
        broken = bool(run.errors)
    finally:
        # A pool the kill broke gets less time to close before its workers are
        # killed for it (mpire's terminate() can wait for ever on a dead worker).
        if not close_within(pool, BROKEN_CLEANUP_S if broken else CLEANUP_TIMEOUT_S, broken=broken):
            _log.error("%s: cleanup after the kill hung; abandoned", c.label)
    return run.metrics(), run.notes()


def _collect_and_kill(pool: Pool, cfg: BenchConfig, run: _Killing, k: int) -> None:
    """Wait for every task in order; once ``k`` have answered, SIGKILL the worker
    that answered the ``k``-th (it is running the next one by then)."""
    n = len(run.handles)
    deadline = time.monotonic() + cfg.timeout
    for i, h in enumerate(run.handles):
        try:
            answer = pool.wait(h, max(0.0, deadline - time.monotonic()))
        except Exception as e:
            run.errors[type(e).__name__] += 1
            continue
        value, pid, _started = answer
        check(value == i + 1, f"task {i} answered {value!r}")
        run.answers[i] = answer
        if run.killed_pid is None and len(run.answers) == k:
            os.kill(pid, signal.SIGKILL)
            run.t_kill = time.time()
            run.killed_pid = pid
            # From now on a task still missing once the rest of the work had
            # time to finish is counted lost (mp.Pool never answers it).
            left = (n - i) * run.task_s / cfg.workers
            deadline = time.monotonic() + 2 * left + KILL_GRACE_S


def _find_rerun(pool: Pool, run: _Killing) -> None:
    """The killed task's second start (from its attempts, procqueue only) and the
    starts of tasks on replacement workers, both counted from the kill."""
    for i, h in enumerate(run.handles):
        tries = pool.attempts(h) if i in run.answers else None
        if tries is not None and tries > 1:
            run.recovery = run.answers[i][2] - run.t_kill
            run.rerun_pid = run.answers[i][1]
    run.replaced = [
        started - run.t_kill
        for _v, pid, started in run.answers.values()
        if pid not in run.before and pid != run.killed_pid and started >= run.t_kill
    ]


def _check_usable(pool: Pool, run: _Killing) -> None:
    """Whether one more task gets its answer in time after the kill."""
    try:
        answer = pool.round_trip(_tasks.add_one, (1,), USABLE_TIMEOUT_S)
        run.usable = 1.0 if answer == 2 else 0.0
    except Exception as e:
        run.errors[f"afterwards: {type(e).__name__}"] += 1
