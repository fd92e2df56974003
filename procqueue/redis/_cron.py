"""Schedules on a Redis queue: each tick runs once across every node.

A schedule lives in Redis (``sched``: its definition and next tick;
``schedp``: its signed call). Every node evaluates the queue's schedules on
Redis's clock, with the same pure decision as a local queue
(``_core/schedules.py``: misfire grace, then catch-up), and queues the runs
through the ``FIRE`` script, a compare-and-set on the tick it read: of several
nodes evaluating one tick, exactly one queues it. Clock skew between nodes
moves nothing, since no node's clock is read. The overlap policy is applied
in that same script, against the state of the schedule's last run:
``"skip"`` counts a run that would overlap, ``"queue"`` links it to the last
run as a dependent (``all_done``), so runs follow one another across nodes.
``run_now`` goes through ``FIRE`` too (without the compare-and-set), so it
is recorded and overlaps the way a tick's run does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, tzinfo
from typing import Any

from .._core.schedules import Cron, Every, ScheduleEntry, Trigger
from .._frontdoor import name_of
from .._policy import RetryPolicy
from .._schedules import _free_name, _seconds, check_call, local_zone_name, resolve_zone
from ..errors import (
    InvalidArgumentError,
    QueueClosedError,
    SerializationError,
    SignatureError,
)
from ._codec import dump_call
from ._protocol import Broker
from ._signing import TASK

__all__ = ["RemoteSchedule", "add_schedule", "evaluate"]

_log = logging.getLogger("procqueue.schedules")

#: Longest a node waits between two looks at the schedules (one may be added).
MAX_WAIT = 1.0


def trigger_of(s: dict[str, Any]) -> Trigger:
    if s.get("cron"):
        return Cron(str(s["cron"]), resolve_zone(str(s["tz"])))
    return Every(float(s["every"]), float(s["anchor"]))


def evaluate(broker: Broker) -> float:
    """Queue the runs of every due schedule (at most once across nodes);
    returns the seconds until the next tick (at most :data:`MAX_WAIT`)."""
    now = broker.now_ms()
    wait = MAX_WAIT
    for name, s in broker.schedules().items():
        if s.get("paused"):
            continue
        expected = int(s["next_ms"])
        if expected > now:
            wait = min(wait, (expected - now) / 1000.0)
            continue
        try:
            entry = _entry(name, s)
        except Exception as e:
            # A trigger this node cannot build (a zone its tz database lacks,
            # cron without the extra): leave it to the nodes that can, and go
            # on with the other schedules.
            _warn_once(name, f"{type(e).__name__}: {e}")
            continue
        due = entry.take_due(now / 1000.0)
        runs = []
        if due.run:
            try:
                payload = broker.schedule_payload(name)
            except SignatureError as e:
                _log.error("schedule %r: its call fails the signature check (%s); not run", name, e)
                payload = None
            for tick in due.run if payload is not None else ():
                runs.append(_run(broker, s, entry, tick, payload or b""))
        next_ms = round(entry.next_tick * 1000)
        broker.fire(name, expected, next_ms, due.misfired, due.skipped, runs)
        wait = min(wait, max(0.0, (next_ms - now) / 1000.0))
    return wait


#: (schedule, error) pairs this process has logged: a schedule this node
#: cannot evaluate is reported once, not at every evaluation.
_unbuildable: set[tuple[str, str]] = set()


def _warn_once(name: str, error: str) -> None:
    if (name, error) not in _unbuildable:
        if len(_unbuildable) >= 1000:
            _unbuildable.clear()
        _unbuildable.add((name, error))
        _log.error(
            "schedule %r cannot be evaluated on this node (%s); other nodes fire it", name, error
        )


def _entry(name: str, s: dict[str, Any]) -> ScheduleEntry:
    """The core's view of a stored schedule, at its stored next tick: the
    misfire and catch-up decisions (overlap is the ``FIRE`` script's, atomic
    against the last run's state)."""
    expected = int(s["next_ms"])
    trigger = trigger_of(s)
    entry = ScheduleEntry(
        name,
        trigger,
        _no_record,
        misfire_grace=s.get("grace"),
        catchup=str(s["catchup"]),
        overlap="allow",
        now=expected / 1000.0,
        wall_offset=0.0,
    )
    # The tick is stored rounded to the millisecond: take the trigger's own
    # (exact) tick that was rounded, or a tick a rounding error late or
    # early would read as missed or count a phantom skip.
    stored = expected / 1000.0
    exact = trigger.next_after(stored - 0.001)
    entry.next_tick = exact if abs(exact - stored) <= 0.0005 else stored
    return entry


def _run(
    broker: Broker, s: Mapping[str, Any], entry: ScheduleEntry, tick: float, payload: bytes
) -> tuple[int, int, dict[str, Any], bytes]:
    """One run of a stored schedule for ``tick``, as ``Broker.fire`` takes it."""
    meta = {
        "name": s["fn"],
        "max_retries": s["max_retries"],
        "bb": s["bb"],
        "bf": s["bf"],
        "bm": s["bm"],
        "timeout": s.get("timeout") or entry.default_timeout(tick),
        "schedule": entry.name,
    }
    return broker.new_id(), int(s["priority"]), meta, payload


def _no_record(timeout: float) -> None:
    raise AssertionError("remote schedules queue through FIRE")  # pragma: no cover


def zone_name(tz: str | tzinfo | None) -> str:
    """A zone every node can rebuild: an IANA name."""
    if isinstance(tz, str):
        resolve_zone(tz)  # validates
        return tz
    if tz is not None:
        key = getattr(tz, "key", None)
        if not isinstance(key, str) or key == "localtime":
            raise InvalidArgumentError(f"on a broker, tz must be an IANA zone name, got {tz!r}")
        return key
    return local_zone_name() or "UTC"


def add_schedule(
    broker: Broker,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    cron: str | None,
    every: float | timedelta | None,
    name: str | None,
    tz: str | tzinfo | None,
    misfire_grace: float | None,
    catchup: str,
    overlap: str,
    priority: int,
    policy: RetryPolicy,
    timeout: float | None,
) -> RemoteSchedule:
    """Validate, seal and store a schedule (raises, storing nothing)."""
    check_call(fn, args, kwargs, cron, every, name)
    zone = zone_name(tz)
    now_s = broker.now_ms() / 1000.0
    definition: dict[str, Any] = {
        "cron": cron,
        "every": None if every is None else _seconds(every),
        "anchor": now_s,
        "tz": zone,
        "grace": misfire_grace,
        "catchup": catchup,
        "overlap": overlap,
        "priority": priority,
        "max_retries": policy.max_retries,
        "bb": policy.backoff_base * 1000.0,
        "bf": policy.backoff_factor,
        "bm": policy.backoff_max * 1000.0,
        "timeout": timeout,
        "fn": name_of(fn),
    }
    trigger = trigger_of(definition)
    # The core validates the policies (and the cron expression, above).
    ScheduleEntry("check", trigger, _no_record, misfire_grace=misfire_grace,
                  catchup=catchup, overlap=overlap, now=now_s, wall_offset=0.0)  # fmt: skip
    definition["next_ms"] = round(trigger.next_after(now_s) * 1000)
    try:
        payload = dump_call(fn, args, kwargs)
    except Exception as e:
        raise SerializationError(f"cannot pickle the call {name_of(fn)}(...): {e}") from e
    taken = set(broker.schedules())
    label = name if name is not None else _free_name(name_of(fn), taken)
    sealed = broker.signer.seal(TASK, broker.queue, f"sched:{label}", payload)
    if not broker.schedule_op(label, "add", json.dumps(definition), sealed):
        raise InvalidArgumentError(f"a schedule named {label!r} already exists")
    _log.info("schedule %r added on queue %r: %s", label, broker.queue, trigger.describe())
    return RemoteSchedule(broker, label, payload, priority, policy, timeout)


def stored_policy(s: Mapping[str, Any]) -> RetryPolicy:
    """The retry policy a schedule was stored with (its runs', and ``run_now``'s)."""
    return RetryPolicy(
        max_retries=int(s["max_retries"]),
        backoff_base=float(s["bb"]) / 1000.0,
        backoff_factor=float(s["bf"]),
        backoff_max=float(s["bm"]) / 1000.0,
    )


class RemoteSchedule:
    """A schedule on a Redis queue (as ``queue.schedule`` returns it on a
    broker client): the same handle as :class:`procqueue.Schedule`, reading
    Redis (``task_ids`` lists the runs it fired, ``run_now`` ones included).

    ``payload``: its call, unsealed (``b""``: read from Redis when needed).
    ``priority``, ``policy`` and ``timeout`` are what it was stored with;
    every run, ``run_now``'s too, takes them from the stored definition, as a
    tick's run does."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        payload: bytes,
        priority: int,
        policy: RetryPolicy,
        timeout: float | None,
    ) -> None:
        self._broker = broker
        self.name = name
        self._payload = payload

    def _def(self) -> dict[str, Any] | None:
        return self._broker.schedule(self.name)

    @property
    def cancelled(self) -> bool:
        return self._def() is None

    @property
    def paused(self) -> bool:
        s = self._def()
        return bool(s and s.get("paused"))

    @property
    def next_run(self) -> datetime | None:
        s = self._def()
        if s is None or s.get("paused"):
            return None
        return datetime.fromtimestamp(s["next_ms"] / 1000.0, resolve_zone(str(s["tz"])))

    @property
    def runs(self) -> int:
        s = self._def()
        return int(s.get("runs", 0)) if s else 0

    @property
    def task_ids(self) -> list[int]:
        """Ids of the tasks it fired, oldest first (the newest 1000)."""
        return [int(x) for x in self._broker.r.lrange(self._broker.keys.fired(self.name), 0, -1)]

    @property
    def last_task_id(self) -> int | None:
        s = self._def()
        return None if s is None or s.get("last_id") is None else int(s["last_id"])

    @property
    def skipped(self) -> dict[str, int]:
        s = self._def() or {}
        return {
            "overlap": int(s.get("skipped_overlap", 0)),
            "misfire": int(s.get("misfired", 0)),
            "catchup": int(s.get("skipped_catchup", 0)),
        }

    def pause(self) -> None:
        self._op("pause")

    def resume(self) -> None:
        s = self._def()
        if s is None:
            raise QueueClosedError(f"schedule {self.name!r} was cancelled")
        nxt = trigger_of(s).next_after(self._broker.now_ms() / 1000.0)
        self._op("resume", str(round(nxt * 1000)))

    def cancel(self) -> None:
        self._broker.schedule_op(self.name, "cancel")

    def run_now(self) -> int:
        """Fire one run now, as a tick's run (named, timed out and counted
        the same; its ticks do not move), and return its task id. An explicit
        request: ``overlap="skip"`` does not stop it; ``overlap="queue"``
        still queues it behind a run that is going, and the next tick behind it."""
        s = self._def()
        if s is None:
            raise QueueClosedError(f"schedule {self.name!r} was cancelled")
        entry = _entry(self.name, s)
        payload = self._payload or self._broker.schedule_payload(self.name)
        run = _run(self._broker, s, entry, entry.next_tick, payload)
        if self._broker.fire(self.name, None, 0, 0, 0, [run]) < 1:
            raise QueueClosedError(f"schedule {self.name!r} was cancelled")
        return run[0]

    def _op(self, op: str, arg: str = "") -> None:
        if not self._broker.schedule_op(self.name, op, arg):
            raise QueueClosedError(f"schedule {self.name!r} was cancelled")

    def __repr__(self) -> str:
        return f"<RemoteSchedule {self.name!r}>"
