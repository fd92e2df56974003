"""One run of the suite: pick the contestants, run every phase, judge the targets."""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._config import WORKLOADS, BenchConfig, workload_group
from ._contestants import Contestant, contestant_table
from ._context import context, loadavg
from ._measure import ABANDONED, FAIL, WorkloadResult, reap_strays
from ._phases import run_kill, run_memory, run_scale
from ._plots import write_plots
from ._report import render
from ._targets import Target, evaluate
from ._task_fns import FN_KINDS
from ._workloads import calibrate, run_sessions, session_workloads

_log = logging.getLogger("procqueue.bench")


@dataclass
class SuiteResult:
    """Everything one run measured, with its context and the target verdicts."""

    config: BenchConfig
    context: dict[str, Any]
    workloads: dict[str, WorkloadResult]
    targets: list[Target]
    started: datetime
    files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """``workload/contestant`` for every FAILed cell (wrong answer, error, hang)."""
        return [
            f"{key}/{cell.contestant}"
            for key, r in self.workloads.items()
            for cell in r.cells.values()
            if cell.status == FAIL
        ]

    def markdown(self) -> str:
        return render(self.workloads, self.targets, self.config, self.context, self.failed)

    def as_json(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "targets": [t.as_dict() for t in self.targets],
            "workloads": {k: r.summary() for k, r in self.workloads.items()},
            "failed": self.failed,
        }

    def write(self, out: Path | None = None) -> list[Path]:
        """``<stem>.md``, ``<stem>.json`` and the charts into ``out`` (default
        ``config.out``); returns the paths."""
        out = self.config.out if out is None else out
        out.mkdir(parents=True, exist_ok=True)
        stem = f"bench-{self.started:%Y%m%dT%H%M%SZ}"
        md, js = out / f"{stem}.md", out / f"{stem}.json"
        md.write_text(self.markdown() + "\n")
        js.write_text(json.dumps(self.as_json(), indent=2, default=str) + "\n")
        files = [md, js]
        if self.config.plots:
            try:
                files += write_plots(self.workloads, self.config, out, stem)
            except Exception:
                _log.exception("plotting failed (the numbers are in the JSON)")
        self.files = files
        return files


def select_contestants(cfg: BenchConfig) -> tuple[list[Contestant], list[str]]:
    """The contestants to run, and the optional ones skipped for not being installed."""
    table = contestant_table(cfg.start_method, cfg.extra_start_methods, cfg.workers)
    if cfg.only is not None:
        known = {c.key for c in table}
        unknown = set(cfg.only) - known
        if unknown:
            raise ValueError(
                f"unknown contestant(s) {sorted(unknown)}; known: {', '.join(sorted(known))}"
            )
        table = [c for c in table if c.key in cfg.only]
    missing = [c.key for c in table if not c.available()]
    return [c for c in table if c.available()], missing


def run_suite(cfg: BenchConfig, command: Sequence[str] | None = None) -> SuiteResult:
    """Run every workload ``cfg`` asks for; nothing is printed or written.

    >>> cfg = BenchConfig.quick().with_overrides(               # doctest: +SKIP
    ...     workloads=("tiny",), only=("sequential", "ProcQueue"), tiny_tasks=100)
    >>> run_suite(cfg).failed                                 # doctest: +SKIP
    []
    """
    if cfg.reps < 3:
        raise ValueError("reps must be at least 3")
    if cfg.workers < 1:
        raise ValueError("workers must be at least 1")
    unknown = set(cfg.workloads) - set(WORKLOADS)
    if unknown:
        raise ValueError(f"unknown workload(s) {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    if not cfg.task_fns or set(cfg.task_fns) - set(FN_KINDS):
        raise ValueError(f"task_fns must be among {', '.join(FN_KINDS)}: {cfg.task_fns!r}")
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    ctx = context(cfg, started, command if command is not None else [sys.executable, *sys.argv])
    contestants, missing = select_contestants(cfg)
    ctx["not_installed"] = missing
    ctx["contestants"] = [c.key for c in contestants]

    calibration = None
    if cfg.wants("cpu") or cfg.wants("sweep"):
        calibration = calibrate(cfg.task_ms)
        _log.info("calibrated: %d iterations = %.1f ms", *calibration)
        ctx["cpu_calibration"] = {
            "iterations": calibration[0],
            "measured_ms": calibration[1],
            "target_ms": cfg.task_ms,
        }

    results: dict[str, WorkloadResult] = {}
    session = session_workloads(cfg, calibration)
    if session or cfg.wants("startup"):
        results.update(run_sessions(cfg, contestants, session))
    _log.info("sessions done after %.1f s", time.perf_counter() - t0)
    # Drop the sessions' inputs (payloads, call lists) before the kill: under
    # fork a replacement worker's start costs time in proportion to this
    # process's memory, so the kill runs on a lean coordinator, before scale.
    del session
    gc.collect()
    for key, phase in (("kill", run_kill), ("memory", run_memory), ("scale", run_scale)):
        if cfg.wants(key):
            results[key] = phase(cfg, contestants)
            _log.info("%s done after %.1f s", key, time.perf_counter() - t0)
    if ABANDONED:
        ctx["abandoned_pools"] = list(ABANDONED)
        ctx["stray_processes_killed"] = reap_strays()
    ordered = _report_order(results)

    ctx["wall_s"] = time.perf_counter() - t0
    ctx["loadavg_at_end"] = loadavg()
    return SuiteResult(cfg, ctx, ordered, evaluate(ordered, cfg), started)


def _report_order(results: dict[str, WorkloadResult]) -> dict[str, WorkloadResult]:
    """Workloads in :data:`WORKLOADS` order; map by chunk size, the sweep by task
    size; otherwise (the ``__main__`` and importable rows, the payload
    directions) in the order they ran."""

    def rank(key: str) -> tuple[int, float]:
        group = workload_group(key)
        pos = WORKLOADS.index(group) if group in WORKLOADS else len(WORKLOADS)
        if group == "map":
            return pos, float(key.split(":", 1)[0][3:])
        if group == "sweep":
            return pos, float(key.split("@")[1].rstrip("ms"))
        return pos, 0.0

    return {k: results[k] for k in sorted(results, key=rank)}
