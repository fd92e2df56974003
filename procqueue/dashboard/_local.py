"""The dashboard's source for a queue in this process: reads through the
engine's read side (``_runtime/state.py``), each a short lock round; slow work
(reprs, sorting, JSON) happens after the lock is released."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from .._core.records import TaskState, TaskStatus
from ..errors import InvalidArgumentError, QueueClosedError, TaskNotFoundError
from ..stats import LatencyCache
from ._index import TaskIndex
from ._reprs import call_reprs, short_repr
from ._source import JSON, DeadLetterFilter, TaskQuery

if TYPE_CHECKING:
    from .._runtime.engine import Engine
    from ._options import DashboardOptions

__all__ = ["LocalSource", "status_row"]

_STATE_NAMES = {s.value: s for s in TaskState}
_SCHEDULE_OPS = {"pause": "pause", "resume": "resume", "run_now": "run_now", "run-now": "run_now"}
MAX_PAGE = 500
#: Seconds between readings of the workers' RSS and CPU (psutil).
FIGURES_EVERY = 2.0


def _progress(status: TaskStatus) -> JSON | None:
    p = status.progress
    if p is None:
        return None
    return {"done": p.done, "total": p.total, "message": p.message, "fraction": p.fraction}


def status_row(status: TaskStatus) -> JSON:
    """A task as a row of the tasks table."""
    errors = status.errors
    last = errors[-1] if errors else None
    return {
        "id": status.task_id,
        "name": status.name,
        "state": status.state.value,
        "priority": status.priority,
        "attempts": status.attempts,
        "max_retries": status.max_retries,
        "submitted_at": status.submitted_at,
        "started_at": status.started_at,
        "finished_at": status.finished_at,
        "due_at": status.due_at,
        "worker_pid": status.worker_pid,
        "schedule": status.schedule,
        "error": None if last is None else f"{last.exc_type}: {last.message}",
        "progress": _progress(status),
    }


def _attempt_error(e: Any) -> JSON:
    return {
        "attempt": e.attempt,
        "exc_type": e.exc_type,
        "message": e.message,
        "traceback": e.traceback,
        "worker_pid": e.worker_pid,
        "exitcode": e.exitcode,
        "started_at": e.started_at,
        "finished_at": e.finished_at,
    }


def parse_state(state: str | None) -> TaskState | None:
    if not state:
        return None
    try:
        return _STATE_NAMES[state]
    except KeyError:
        raise InvalidArgumentError(f"unknown task state {state!r}") from None


class LocalSource:
    """:class:`~procqueue.dashboard.DashboardSource` over a local engine."""

    kind = "local"

    def __init__(self, engine: Engine, options: DashboardOptions) -> None:
        self._engine = engine
        self._options = options
        self.index = TaskIndex(engine)
        # Percentiles sort 20,000 samples (~2 ms): once a second is plenty
        # for a page sampled 4 times a second.
        self._latencies = LatencyCache(max_age=1.0)
        # Workers' RSS and CPU walk /proc for each worker's process tree
        # (~2 ms a worker): read every FIGURES_EVERY seconds, reused between.
        self._figures: dict[int, tuple[int | None, int | None, float | None]] = {}
        self._figures_at = float("-inf")

    # ------------------------------------------------------------------ overview

    def stats(self) -> JSON:
        now = time.monotonic()
        fresh = now - self._figures_at >= FIGURES_EVERY
        stats = self._engine.stats(self._latencies, figures=fresh)
        if fresh:
            self._figures = {w.slot: (w.pid, w.rss, w.cpu_percent) for w in stats.workers}
            self._figures_at = now
        else:
            workers = []
            for w in stats.workers:
                pid, rss, cpu = self._figures.get(w.slot, (None, None, None))
                same = pid == w.pid  # a replaced worker shows "-" until the next reading
                workers.append(dataclasses.replace(w, rss=rss, cpu_percent=cpu) if same else w)
            stats = dataclasses.replace(stats, workers=tuple(workers))
        return {"kind": self.kind, "stats": dataclasses.asdict(stats)}

    def overview(self) -> JSON:
        engine = self._engine
        out = self.stats()
        out["state"] = engine.state.value
        out["num_workers"] = engine.config.num_workers
        out["start_method"] = engine.config.start_method
        out["features"] = {
            "schedules": bool(engine.core.schedules),
            "limits": bool(engine.config.key_limits),
        }
        return out

    def totals(self) -> tuple[int, int]:
        c = self._engine.counters().by_state
        return c[TaskState.COMPLETED.ordinal], c[TaskState.FAILED.ordinal]

    # ------------------------------------------------------------------ tasks

    def tasks(self, query: TaskQuery) -> JSON:
        engine, index = self._engine, self.index
        limit = max(1, min(MAX_PAGE, query.limit))
        state = parse_state(query.state)
        name = query.name or None
        if query.task_id is not None:
            (status,) = engine.snapshots([query.task_id])
            found = [] if status is None else [status_row(status)]
            return {"tasks": found, "total": len(found), "next_before": None}
        index.refresh()
        rows: list[JSON] = []
        before = query.before
        # Candidates come from the index; each is read afresh, and one whose
        # state or name has moved on is dropped (and its index bytes fixed).
        while len(rows) < limit:
            ids = index.candidates(state, name, before, limit - len(rows))
            if not ids:
                break
            before = ids[-1]
            for tid, status in zip(ids, engine.snapshots(ids)):
                if status is None:
                    index.forget(tid)
                elif (state is not None and status.state is not state) or (
                    name is not None and status.name != name
                ):
                    index.correct(tid, status.state, status.name)
                else:
                    rows.append(status_row(status))
        more = bool(rows) and bool(index.candidates(state, name, before, 1))
        return {
            "tasks": rows,
            "total": index.count(state, name),
            "next_before": before if more else None,
            "names": list(index.name_table),
        }

    def task(self, task_id: int) -> JSON:
        engine, opts = self._engine, self._options
        detail = engine.task_detail(task_id)
        status = detail.status
        row = status_row(status)
        row["errors"] = [_attempt_error(e) for e in status.errors]
        row["after"] = list(status.after)
        self.index.refresh()
        down = dict.fromkeys([*detail.dependents, *self.index.dependents(task_id)])
        row["dependents"] = list(down)
        if status.after or down:
            linked = list(status.after) + list(down)
            row["linked_states"] = {
                str(t): (s.state.value if s is not None else None)
                for t, s in zip(linked, engine.snapshots(linked))
            }
        row["limit_key"] = detail.limit_key
        row["timeout"] = detail.timeout
        row["throttled"] = detail.parked
        if status.started_at is not None:
            row["queue_wait"] = max(0.0, status.started_at - status.submitted_at)
        if status.started_at is not None and status.finished_at is not None:
            row["run_time"] = max(0.0, status.finished_at - status.started_at)
        row["show_args"] = opts.show_args
        if opts.show_args:
            payload = detail.payload
            if payload is None and status.state is TaskState.FAILED:
                payload = engine.dead_letter_payload(task_id)
            row["call"] = call_reprs(payload, opts.repr_limit)
            if detail.has_outcome:
                row["result"] = short_repr(detail.outcome, opts.repr_limit)
        row["in_dead_letters"] = engine.dead_letter_payload(task_id) is not None
        return row

    # ------------------------------------------------------------------ dead letters

    def dead_letters(self, flt: DeadLetterFilter, offset: int, limit: int) -> JSON:
        engine = self._engine
        letters = engine.dead_letters()
        letters.reverse()  # newest first
        matching = [
            d for d in letters if flt.matches(d.name, d.error.exc_type if d.error else None)
        ]
        page = matching[max(0, offset) : max(0, offset) + max(1, min(MAX_PAGE, limit))]
        names = sorted({d.name for d in letters})
        types = sorted({d.error.exc_type for d in letters if d.error is not None})
        return {
            "dead_letters": [
                {
                    "id": d.task_id,
                    "name": d.name,
                    "priority": d.priority,
                    "attempts": d.attempts,
                    "submitted_at": d.submitted_at,
                    "failed_at": d.failed_at,
                    "error": None if d.error is None else _attempt_error(d.error),
                }
                for d in page
            ],
            "total": len(matching),
            "size": len(letters),
            "dropped": engine.dead_letters_dropped,
            "names": names,
            "exceptions": types,
        }

    def retry_dead_letter(self, task_id: int) -> JSON:
        ids = self._engine.requeue_dead_letter(task_id)
        return {"old": task_id, "new": ids[task_id]}

    def retry_dead_letters(self, flt: DeadLetterFilter) -> JSON:
        done: dict[str, int] = {}
        for d in self._engine.dead_letters():
            if flt.matches(d.name, d.error.exc_type if d.error else None):
                try:
                    done[str(d.task_id)] = self._engine.requeue_dead_letter(d.task_id)[d.task_id]
                except TaskNotFoundError:
                    continue  # retried or purged meanwhile
        return {"requeued": done}

    def purge_dead_letters(self, flt: DeadLetterFilter, ids: list[int] | None) -> JSON:
        if ids is None:
            ids = [
                d.task_id
                for d in self._engine.dead_letters()
                if flt.matches(d.name, d.error.exc_type if d.error else None)
            ]
        return {"purged": self._engine.purge_dead_letters(ids)}

    # ------------------------------------------------------------------ schedules, limits

    def schedules(self) -> JSON:
        return {"schedules": self._engine.schedule_rows()}

    def control_schedule(self, name: str, op: str) -> JSON:
        action = _SCHEDULE_OPS.get(op)
        if action is None:
            raise InvalidArgumentError(f"unknown schedule action {op!r}")
        entry = self._engine.schedule_entry(name)
        if entry is None:
            raise TaskNotFoundError(f"no schedule named {name!r}")
        try:
            task_id = self._engine.control_schedule(entry, action)
        except QueueClosedError as e:
            raise InvalidArgumentError(str(e)) from e
        return {"schedule": name, "op": action, "task_id": task_id}

    def limits(self) -> JSON:
        rows, total = self._engine.limit_rows()
        return {"limits": rows, "keys_total": total}
