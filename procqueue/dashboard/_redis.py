"""The dashboard of a Redis cluster: ``procqueue dashboard --broker redis://...``.

:class:`ClusterSource` is the :class:`~procqueue.dashboard.DashboardSource`
over one queue in Redis, read through a broker client (``_RemoteCore``: the
connection, the secret, ``get_stats``, ``get_task_status``) and the broker's
read operations (``redis/_protocol_admin.py``). The pages, the JSON API, the
sampler and the security rules are the local dashboard's (``_app.py``,
``_server.py``); only what is read differs. What each page costs, in Redis
round trips (RT):

* overview: ``get_stats`` (1 RT, a pipeline: the sizes of ``ready``,
  ``delayed``, ``leases``, ``dlq``, ``parked``, ``waiting``, and the
  ``nodes``, ``caps`` and ``limits`` hashes) plus 1 RT every 2 s for the
  feature flags; sampled 4 times a second while a page is live.
* throughput and success rate: Redis keeps no counters of finished tasks, so
  this dashboard counts them itself from the queue's ``done`` channel (every
  task that becomes final is published there) and reads each one's state
  (1 RT a second, pipelined; above :data:`SAMPLE` ends a second, a random
  sample of them is read and the counts scaled, so they are approximate).
  History and counts start when the dashboard starts; ends published while
  its subscription was down are not counted.
* tasks: the listable places (``leases``, ``ready``/``parked``, ``delayed``,
  ``waiting``, ``dlq``) by position, 3 RT a page (sizes, ids, metas); a name
  filter reads on in chunks, at most :data:`SCAN_BUDGET` ids a page.
  Completed and cancelled tasks live only in per-task result keys (with a
  TTL): found by id, never listed (that would take a ``SCAN``).
* task: about 5 RT (status, meta, call and result, dependents, their states).
* dead letters: 3 RT a page (plus 4 RT every 2 s for the filters' name
  lists); a filter reads the newest :data:`DLQ_SCAN`, 2 RT per 500.
* schedules: 2 RT plus one per schedule (its fired ids); limits: 2 RT.

Arguments and results are unpickled here (only for the task page being
viewed, only below 1 MB, never with ``show_args=False``), after their
signatures are checked with the queue's secret, as a client would.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import (
    InvalidArgumentError,
    QueueClosedError,
    SignatureError,
    TaskNotFoundError,
)
from ..redis._codec import TB_SEP, split_error
from ..redis._protocol import announcement_or_none
from ._local import status_row
from ._reprs import MAX_DECODE, call_reprs, short_repr
from ._source import JSON, DeadLetterFilter, TaskQuery

if TYPE_CHECKING:
    from ..redis._protocol import Broker
    from ..redis._remote import _RemoteCore
    from ._options import DashboardOptions

__all__ = ["ClusterSource", "DoneCounter"]

_log = logging.getLogger("procqueue.dashboard")

MAX_PAGE = 500
#: Ids a name-filtered tasks page reads at most (in chunks of :data:`CHUNK`).
SCAN_BUDGET = 5000
CHUNK = 250
#: Newest dead letters a filtered dead letter page reads at most.
DLQ_SCAN = 10_000
#: Ends a second whose state is read; above it, a random sample of them.
SAMPLE = 2000
#: Messages taken off the ``done`` subscription per sample at most.
MAX_DRAIN = 200_000
#: Task names remembered for the filters.
MAX_NAMES = 254
#: Seconds the feature flags and the dead letters' name lists are reused.
CACHE_FOR = 2.0

#: Where each listable state lives, in the order "all states" lists them.
PLACES: dict[str, tuple[str, ...]] = {
    "running": ("running",),
    "pending": ("ready", "parked"),
    "scheduled": ("delayed",),
    "waiting": ("waiting",),
    "failed": ("dlq",),
}
ALL_PLACES = ("running", "ready", "parked", "delayed", "waiting", "dlq")
_SCHEDULE_OPS = {"pause": "pause", "resume": "resume", "run_now": "run_now", "run-now": "run_now"}


def _error_row(text: str, attempt: int, finished_at: float | None) -> JSON:
    """A node's error text (``Type: message``, then the worker's traceback) as
    the pages show an attempt's error. Redis keeps no pid or exit code."""
    text, tb = split_error(text)
    exc_type, sep, message = text.partition(": ")
    return {
        "attempt": attempt,
        "exc_type": exc_type if sep else "",
        "message": message if sep else text,
        "traceback": tb or None,
        "worker_pid": None,
        "exitcode": None,
        "started_at": None,
        "finished_at": finished_at,
    }


def _sec(ms: Any) -> float | None:
    return None if ms is None else float(ms) / 1000.0


class DoneCounter:
    """Tasks that ended since it was made, by outcome, from the queue's
    ``done`` channel: each :meth:`poll` takes the ids published since the last
    one and reads their states (one pipelined round trip; a random sample of
    :data:`SAMPLE` when more ended, the counts scaled). Called from one
    thread at a time (a lock guards it); the subscription is re-made after
    an error, and ends published meanwhile are missed."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._lock = threading.Lock()
        self._pubsub: Any = None
        self._counts = {"completed": 0.0, "failed": 0.0, "cancelled": 0.0}
        self.sampled = False
        self._subscribe()

    def _subscribe(self) -> None:
        try:
            pubsub = self._broker.r.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self._broker.keys.done)
            self._pubsub = pubsub
        except Exception as e:  # Redis away: the next poll tries again
            _log.warning("dashboard: cannot subscribe to the done channel (%s)", e)
            self._pubsub = None

    def poll(self) -> dict[str, int]:
        with self._lock:
            if self._pubsub is None:
                self._subscribe()
            ids: list[int] = []
            try:
                while self._pubsub is not None and len(ids) < MAX_DRAIN:
                    msg = self._pubsub.get_message(timeout=0.0)
                    if msg is None:
                        break
                    if msg.get("type") == "message":
                        ids += announcement_or_none(msg["data"])
            except Exception as e:
                _log.warning("dashboard: done channel lost (%s); resubscribing", e)
                self._close_pubsub()
            if ids:
                self._classify(ids)
            return self.counts()

    def _classify(self, ids: list[int]) -> None:
        sample = ids if len(ids) <= SAMPLE else random.sample(ids, SAMPLE)
        self.sampled = self.sampled or sample is not ids
        try:
            states = self._broker.states(sample)
        except Exception as e:
            _log.warning("dashboard: could not read %d ended tasks (%s)", len(sample), e)
            return
        scale = len(ids) / len(sample)
        for state in states:
            if state in self._counts:
                self._counts[state] += scale

    def counts(self) -> dict[str, int]:
        return {k: round(v) for k, v in self._counts.items()}

    def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        try:
            if pubsub is not None:
                pubsub.close()
        except Exception:
            pass

    def close(self) -> None:
        with self._lock:
            self._close_pubsub()


class ClusterSource:
    """:class:`~procqueue.dashboard.DashboardSource` over a queue in Redis.

    ``remote``: an opened broker client (its connection and secret);
    ``label``: how the header names the broker (no password)."""

    kind = "cluster"

    def __init__(self, remote: _RemoteCore, options: DashboardOptions, label: str = "") -> None:
        import redis.exceptions as redis_errors

        #: Errors meaning Redis is unreachable: a 503, one warning per 30 s.
        self.unavailable: tuple[type[BaseException], ...] = (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
        )
        self._remote = remote
        self._broker = remote._b()
        self._options = options
        self.label = label
        self.started_at = time.time()
        self.done = DoneCounter(self._broker)
        #: ``(monotonic, completed, failed)`` at each :meth:`totals`: the 10 s throughput.
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=11)
        self._names: OrderedDict[str, None] = OrderedDict()
        self._features: tuple[float, JSON] = (float("-inf"), {})
        self._dlq_lists: tuple[float, list[str], list[str]] = (float("-inf"), [], [])

    @property
    def queue(self) -> str:
        return self._broker.queue

    def close(self) -> None:
        """Stop counting and close the client's connection."""
        self.done.close()
        self._remote.close()

    # ------------------------------------------------------------------ overview

    def stats(self) -> JSON:
        return {"kind": self.kind, "stats": dataclasses.asdict(self._remote.get_stats())}

    def overview(self) -> JSON:
        out = self.stats()
        stats = out["stats"]
        counts = self.done.counts()
        out["state"] = "serving" if stats["nodes"] else "no nodes"
        out["queue"] = self.queue
        out["broker"] = self.label
        out["since"] = self.started_at
        out["totals"] = [counts["completed"], counts["failed"], counts["cancelled"]]
        out["throughput"] = self._throughput()
        ended = counts["completed"] + counts["failed"]
        out["success_rate"] = counts["completed"] / ended if ended else None
        out["approximate"] = self.done.sampled
        out["features"] = self._feature_flags()
        return out

    def totals(self) -> tuple[int, int]:
        counts = self.done.poll()
        completed, failed = counts["completed"], counts["failed"]
        self._samples.append((time.monotonic(), completed, failed))
        return completed, failed

    def _throughput(self) -> float:
        samples = list(self._samples)
        if len(samples) < 2:
            return 0.0
        (t0, c0, _), (t1, c1, _) = samples[0], samples[-1]
        return max(0.0, (c1 - c0) / (t1 - t0)) if t1 > t0 else 0.0

    def _feature_flags(self) -> JSON:
        at, flags = self._features
        now = time.monotonic()
        if now - at < CACHE_FOR:
            return flags
        k = self._broker.keys
        with self._broker.r.pipeline(transaction=False) as p:
            p.hlen(k.sched)
            p.hlen(k.limits)
            schedules, limits = p.execute()
        flags = {"schedules": bool(schedules), "limits": bool(limits)}
        self._features = (now, flags)
        return flags

    # ------------------------------------------------------------------ tasks

    def _remember(self, name: str) -> None:
        names = self._names
        if name in names:
            return
        names[name] = None
        while len(names) > MAX_NAMES:
            names.popitem(last=False)

    def _row(self, task_id: int, m: JSON, score: float | None, place: str) -> JSON:
        from ..redis._remote import status_from_meta

        row = status_row(status_from_meta(task_id, m))
        row["schedule"] = m.get("schedule")
        row["node"] = m.get("owner")
        if place == "delayed" and score is not None:
            row["due_at"] = score / 1000.0
        # The node's text ("Type: message", its traceback left for the task's
        # page): the last attempt's error, also while the task is retried.
        row["error"] = split_error(str(m["error"]))[0] if m.get("error") else None
        return row

    def tasks(self, query: TaskQuery) -> JSON:
        limit = max(1, min(MAX_PAGE, query.limit))
        names = list(self._names)
        if query.task_id is not None:
            try:
                row = _plain_error(status_row(self._remote.get_task_status(query.task_id)))
            except TaskNotFoundError:
                return {"tasks": [], "total": 0, "next_before": None, "names": names}
            return {"tasks": [row], "total": 1, "next_before": None, "names": names}
        if query.state and query.state not in PLACES:
            raise InvalidArgumentError(
                f"a cluster lists tasks {', '.join(PLACES)} (not {query.state!r}): completed and "
                "cancelled tasks live only in per-task result keys; search them by id"
            )
        broker = self._broker
        sizes = broker.listing_sizes()
        places = PLACES[query.state] if query.state else ALL_PLACES
        segments = [(p, sizes[p]) for p in places]
        end = sum(n for _, n in segments)
        name = query.name or None
        budget = SCAN_BUDGET if name else 2 * limit  # room for rows gone since read
        pos = max(0, query.before or 0)
        rows: list[JSON] = []
        read = 0
        # A position runs over the places in order; within each, its own
        # order. Positions move as tasks move: a live view, not a snapshot.
        while len(rows) < limit and read < budget and pos < end:
            place, local, size = _locate(segments, pos)
            want = min(size - local, budget - read, CHUNK if name else limit - len(rows))
            got = broker.list_ids(place, local, want)
            read += want
            if not got:  # the place shrank under us: on to the next one
                pos += size - local
                continue
            metas = broker.metas([tid for tid, _ in got])
            for (tid, score), m in zip(got, metas):
                pos += 1
                if m is None:
                    continue  # moved on since the ids were read
                self._remember(str(m["name"]))
                if name is not None and m["name"] != name:
                    continue
                rows.append(self._row(tid, m, score, place))
                if len(rows) >= limit:
                    break
            if len(got) < want and len(rows) < limit:  # all of it taken: the place ran out
                pos = _start_of_next(segments, place)
        return {
            "tasks": rows,
            "total": None if name else end,
            "next_before": pos if pos < end else None,
            "names": list(self._names),
            "states": list(PLACES),
        }

    def task(self, task_id: int) -> JSON:
        broker, opts = self._broker, self._options
        status = self._remote.get_task_status(task_id)  # raises TaskNotFoundError
        m = broker.meta(task_id) or {}
        row = _plain_error(status_row(status))
        row["schedule"] = m.get("schedule")
        row["node"] = m.get("owner")
        finished = status.finished_at
        if status.errors:
            e = status.errors[-1]
            row["errors"] = [_error_row(f"{e.message}{TB_SEP}{e.traceback}", e.attempt, finished)]
        elif m.get("error"):  # retried: the failed attempt's error, until the next one ends
            attempt = int(m.get("attempts", 1))
            row["errors"] = [_error_row(str(m["error"]), attempt, None)]
        else:
            row["errors"] = []
        row["after"] = list(status.after)
        row["dependents"] = broker.dependents(task_id)
        linked = [*status.after, *row["dependents"]]
        if linked:
            row["linked_states"] = dict(zip(map(str, linked), broker.states(linked)))
        row["limit_key"] = m.get("lk")
        row["timeout"] = m.get("timeout")
        row["throttled"] = m.get("state") in ("throttled", "parked")
        if status.started_at is not None:
            row["queue_wait"] = max(0.0, status.started_at - status.submitted_at)
            if finished is not None:
                row["run_time"] = max(0.0, finished - status.started_at)
        sealed, result, failed_at = broker.task_extras(task_id)
        row["in_dead_letters"] = failed_at is not None
        row["show_args"] = opts.show_args
        if opts.show_args:
            row["call"] = self._call(task_id, sealed)
            if result is not None:
                row["result"] = self._result(task_id, result)
        return row

    def _call(self, task_id: int, sealed: bytes | None) -> JSON | None:
        if sealed is None:
            return None
        from ..redis._codec import load_call
        from ..redis._signing import TASK

        if len(sealed) > MAX_DECODE:
            return {"note": f"arguments not decoded ({len(sealed):,} bytes pickled)"}
        try:
            data = self._broker.signer.open(TASK, self.queue, str(task_id), sealed)
        except SignatureError as e:
            return {"note": f"arguments not decoded: {e}"}
        return call_reprs(load_call(data), self._options.repr_limit)

    def _result(self, task_id: int, sealed: bytes) -> str:
        from ..redis._codec import load_outcome
        from ..redis._signing import RESULT

        if len(sealed) > MAX_DECODE:
            return f"<not decoded: {len(sealed):,} bytes pickled>"
        try:
            data = self._broker.signer.open(RESULT, self.queue, str(task_id), sealed)
            value = load_outcome(data)
        except Exception as e:  # a bad signature, or user data that will not unpickle here
            return f"<not decoded: {type(e).__name__}: {e}>"
        return short_repr(value, self._options.repr_limit)

    # ------------------------------------------------------------------ dead letters

    def _letters(self, scan: int) -> Iterator[tuple[int, JSON, float]]:
        """The newest ``scan`` dead letters, newest first, read in chunks."""
        start = 0
        while start < scan:
            page = self._broker.dead_letter_page(start, min(500, scan - start))
            yield from page
            if not page:
                return
            start += 500

    def dead_letters(self, flt: DeadLetterFilter, offset: int, limit: int) -> JSON:
        broker = self._broker
        offset, limit = max(0, offset), max(1, min(MAX_PAGE, limit))
        size = int(broker.r.zcard(broker.keys.dlq))
        partial = False
        if flt.name or flt.exception:
            matching = [
                row
                for row in self._letters(DLQ_SCAN)
                if flt.matches(str(row[1]["name"]), _exc_type(row[1]))
            ]
            partial = size > DLQ_SCAN
            total, page = len(matching), matching[offset : offset + limit]
        else:
            total, page = size, broker.dead_letter_page(offset, limit)
        names, types = self._dlq_names()
        return {
            "dead_letters": [
                {
                    "id": tid,
                    "name": m["name"],
                    "priority": m.get("priority", 0),
                    "attempts": m.get("attempts", 0),
                    "submitted_at": _sec(m.get("submitted")),
                    "failed_at": failed_at,
                    "error": _error_row(
                        str(m.get("error", "")), int(m.get("attempts", 0)), failed_at
                    ),
                }
                for tid, m, failed_at in page
            ],
            "total": total,
            "size": size,
            "dropped": 0,  # Redis keeps every dead letter until purged
            "partial": partial,
            "names": names,
            "exceptions": types,
        }

    def _dlq_names(self) -> tuple[list[str], list[str]]:
        """Task names and error types of the newest 1,000 dead letters (the
        filters' choices), reused for :data:`CACHE_FOR` seconds."""
        at, names, types = self._dlq_lists
        now = time.monotonic()
        if now - at >= CACHE_FOR:
            letters = list(self._letters(1000))
            names = sorted({str(m["name"]) for _, m, _ in letters})
            types = sorted({t for _, m, _ in letters if (t := _exc_type(m))})
            self._dlq_lists = (now, names, types)
        return names, types

    def retry_dead_letter(self, task_id: int) -> JSON:
        new = self._broker.requeue_dead(task_id)
        if new is None:
            raise TaskNotFoundError(f"task {task_id} is not a dead letter of {self.queue!r}")
        self._dlq_lists = (float("-inf"), [], [])
        return {"old": task_id, "new": new}

    def retry_dead_letters(self, flt: DeadLetterFilter) -> JSON:
        done: dict[str, int] = {}
        for tid, m, _ in self._broker.dead_letters():
            if flt.matches(str(m["name"]), _exc_type(m)):
                new = self._broker.requeue_dead(tid)
                if new is not None:  # else retried or purged meanwhile
                    done[str(tid)] = new
        self._dlq_lists = (float("-inf"), [], [])
        return {"requeued": done}

    def purge_dead_letters(self, flt: DeadLetterFilter, ids: list[int] | None) -> JSON:
        broker = self._broker
        if ids is None and (flt.name or flt.exception):
            ids = [
                tid
                for tid, m, _ in broker.dead_letters()
                if flt.matches(str(m["name"]), _exc_type(m))
            ]
        self._dlq_lists = (float("-inf"), [], [])
        return {"purged": broker.purge_dead(ids) if ids is None or ids else 0}

    # ------------------------------------------------------------------ schedules, limits

    def schedules(self) -> JSON:
        from ..redis._cron import trigger_of

        broker = self._broker
        defs = broker.schedules()
        fired: dict[str, list[int]] = {name: broker.fired_ids(name, 10) for name in defs}
        flat = [tid for ids in fired.values() for tid in ids]
        states = dict(zip(flat, broker.states(flat)))
        rows = []
        for name, s in sorted(defs.items()):
            paused = bool(s.get("paused"))
            rows.append(
                {
                    "name": name,
                    "trigger": trigger_of(s).describe(),
                    "paused": paused,
                    "next_run": None if paused else s["next_ms"] / 1000.0,
                    "runs": int(s.get("runs", 0)),
                    "skipped": {
                        "overlap": int(s.get("skipped_overlap", 0)),
                        "misfire": int(s.get("misfired", 0)),
                        "catchup": int(s.get("skipped_catchup", 0)),
                    },
                    "overlap": s.get("overlap"),
                    "last_runs": [(tid, states.get(tid)) for tid in fired[name]],
                }
            )
        return {"schedules": rows}

    def control_schedule(self, name: str, op: str) -> JSON:
        from ..redis._cron import RemoteSchedule, stored_policy

        action = _SCHEDULE_OPS.get(op)
        if action is None:
            raise InvalidArgumentError(f"unknown schedule action {op!r}")
        broker = self._broker
        s = broker.schedule(name)
        if s is None:
            raise TaskNotFoundError(f"no schedule named {name!r}")
        policy = stored_policy(s)  # a run now runs with the schedule's own policy
        payload = broker.schedule_payload(name) if action == "run_now" else b""
        handle = RemoteSchedule(broker, name, payload, int(s["priority"]), policy, s.get("timeout"))
        task_id = None
        try:
            if action == "pause":
                handle.pause()
            elif action == "resume":
                handle.resume()
            else:
                task_id = handle.run_now()
        except QueueClosedError as e:
            raise InvalidArgumentError(str(e)) from e
        return {"schedule": name, "op": action, "task_id": task_id}

    def limits(self) -> JSON:
        configured = self._broker.limits()
        busy = self._remote.get_stats().limits
        rows: list[JSON] = []
        for key, spec in configured.items():
            shown = [spec["rate"]] if spec.get("rate") else []
            if spec.get("cap") is not None:
                shown.append(f"Concurrency({spec['cap']})")
            rows.append({"key": key, "limits": shown, "pattern": any(c in key for c in "*?[")})
        for key, lim in busy.items():
            rows.append(
                {
                    "concrete": True,
                    "key": key,
                    "running": lim.running,
                    "max_running": lim.cap,
                    "waiting": lim.waiting,
                    "tokens": [],
                    "rates": [],
                    "rate": lim.rate,
                }
            )
        return {"limits": rows, "keys_total": len(busy)}


def _plain_error(row: JSON) -> JSON:
    """A row's ``error`` as the node wrote it: ``status_row`` joins the type
    and the message, and on Redis the message already starts with the type."""
    text = row.get("error")
    if text:
        exc_type, _, rest = text.partition(": ")
        if rest.startswith(exc_type + ": "):
            row["error"] = rest
    return row


def _exc_type(m: JSON) -> str | None:
    text = str(m.get("error") or "")
    exc_type, sep, _ = text.partition(": ")
    return exc_type if sep else None


def _locate(segments: list[tuple[str, int]], pos: int) -> tuple[str, int, int]:
    """``(place, position within it, its size)`` of a position over the places."""
    for place, size in segments:
        if pos < size:
            return place, pos, size
        pos -= size
    raise IndexError(pos)  # pragma: no cover - callers stop at the end


def _start_of_next(segments: list[tuple[str, int]], place: str) -> int:
    start = 0
    for name, size in segments:
        start += size
        if name == place:
            return start
    return start  # pragma: no cover


# --------------------------------------------------------------------------- metrics
