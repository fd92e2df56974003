"""``queue.schedule(...)`` on both front doors: validating a recurring call
into a :class:`~procqueue._core.schedules.ScheduleEntry`, and the
:class:`Schedule` handle users hold. When ticks fire, and what a missed or
overlapping tick does, is the core's (``_core/schedules.py``)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from ._core.deps import find_markers
from ._core.schedules import Cron, Every, ScheduleEntry, Trigger
from ._frontdoor import _all_atomic, name_of, prepare, task_policy
from ._policy import RetryPolicy
from ._runtime.engine import Engine
from .errors import InvalidArgumentError, InvalidCallableError, OptionTypeError

__all__ = ["Schedule", "make_schedule"]

_log = logging.getLogger("procqueue.schedules")

#: ``submit`` options that mean nothing for a recurring call. Refused rather
#: than passed on to the callable, where they would surprise.
_NOT_FOR_SCHEDULES = frozenset({"delay", "eta", "after", "trigger"})


class Schedule:
    """A recurring call on a queue, as returned by ``queue.schedule(...)``.

    >>> nightly = pool.schedule(backup, cron="30 2 * * *", tz="Europe/Berlin")  # doctest: +SKIP
    >>> nightly.next_run                                                         # doctest: +SKIP
    datetime.datetime(2026, 11, 30, 2, 30, tzinfo=zoneinfo.ZoneInfo(key='Europe/Berlin'))

    Each run is an ordinary task (see ``task_ids``; its status names the
    schedule): it retries, times out and is dead-lettered like any other. Runs
    are fire-and-forget: once final, only the newest ``retain_finished`` are
    kept. A stopping queue fires no more runs.
    """

    def __init__(self, engine: Engine, entry: ScheduleEntry) -> None:
        self._engine = engine
        self._entry = entry
        self._zone = entry.zone or timezone.utc

    @property
    def name(self) -> str:
        """The schedule's name, unique in its queue."""
        return self._entry.name

    @property
    def next_run(self) -> datetime | None:
        """When the next run is due (an aware datetime in the schedule's time
        zone); ``None`` while paused, once cancelled or once the queue stops."""
        entry = self._entry
        with self._engine._lock:
            if entry.paused or not self._live():
                return None
            tick = entry.next_tick
        if not entry.trigger.wall:
            # A monotonic tick, shown on the wall clock as of now.
            tick += time.time() - time.monotonic()
        return datetime.fromtimestamp(tick, self._zone)

    @property
    def paused(self) -> bool:
        return self._entry.paused

    @property
    def cancelled(self) -> bool:
        """Cancelled, or its queue has stopped: it fires no more."""
        with self._engine._lock:
            return not self._live()

    @property
    def task_ids(self) -> list[int]:
        """Ids of the tasks it fired, oldest first (the newest 1000)."""
        with self._engine._lock:
            return list(self._entry.fired)

    @property
    def runs(self) -> int:
        """Runs fired (``run_now`` included)."""
        return self._entry.runs

    @property
    def skipped(self) -> dict[str, int]:
        """Ticks that did not run, by reason: ``overlap`` (the previous run was
        still going, ``overlap="skip"``), ``misfire`` (later than
        ``misfire_grace``) and ``catchup`` (missed ticks the ``catchup`` policy
        did not run)."""
        e = self._entry
        with self._engine._lock:
            return {
                "overlap": e.skipped_overlap,
                "misfire": e.misfired,
                "catchup": e.skipped_catchup,
            }

    def pause(self) -> None:
        """Fire nothing until :meth:`resume`; runs already fired go on."""
        self._control("pause")

    def resume(self) -> None:
        """Fire again from the next tick after now: ticks missed while paused
        are not caught up."""
        self._control("resume")

    def run_now(self) -> int:
        """Fire one run at once, whatever the time, and return its task id. The
        schedule's ticks do not move. An explicit request: ``overlap="skip"``
        does not stop it; ``overlap="queue"`` still queues it behind a run that
        is going."""
        task_id = self._control("run_now")
        assert task_id is not None
        return task_id

    def cancel(self) -> None:
        """Remove the schedule (idempotent); runs already fired go on (cancel
        them by id)."""
        self._control("cancel")

    def _live(self) -> bool:
        # A stopping queue has dropped its schedules (Scheduler.stop).
        return self._engine.core.schedules.get(self._entry.name) is self._entry

    def _control(self, op: str) -> int | None:
        return self._engine.control_schedule(self._entry, op)

    def __repr__(self) -> str:
        return f"<Schedule {self.name!r} {self._entry.trigger.describe()}>"


def resolve_zone(tz: str | tzinfo | None) -> tzinfo:
    """``tz`` as a tzinfo: a name (``"Europe/Berlin"``), a tzinfo, or ``None``
    for the local zone (``$TZ``, else ``/etc/localtime``, else UTC)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if isinstance(tz, tzinfo):
        return tz
    if tz is not None:
        if not isinstance(tz, str):
            raise OptionTypeError(f"tz must be a zone name or a tzinfo, got {tz!r}")
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise InvalidArgumentError(f"unknown time zone {tz!r}") from e
    name = local_zone_name()
    if name is not None:
        return ZoneInfo(name)
    try:
        # A zone with its DST rules, not today's fixed offset
        # (datetime.now().astimezone().tzinfo would miss the next transition).
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        _log.warning("cannot read the local time zone; cron schedules use UTC")
        return timezone.utc


def local_zone_name() -> str | None:
    """The local zone's IANA name: ``$TZ`` if it names a known zone, else the
    zone ``/etc/localtime`` links to; ``None`` when neither says."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            ZoneInfo(name)
            return name
        except (ZoneInfoNotFoundError, ValueError):
            _log.warning("TZ=%r is not a known zone; using /etc/localtime", name)
    target = os.path.realpath("/etc/localtime")
    if "zoneinfo/" in target:
        candidate = target.split("zoneinfo/", 1)[1]
        try:
            ZoneInfo(candidate)
            return candidate
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return None


def make_schedule(
    engine: Engine,
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
    max_retries: int | None,
    retry: RetryPolicy | None,
    timeout: float | None,
    limit_key: str | None,
) -> Schedule:
    """Validate and register a schedule (raises, registering nothing, for bad
    input: the call is pickled once, here)."""
    check_call(fn, args, kwargs, cron, every, name)
    zone = resolve_zone(tz)
    policy = task_policy(engine.config.retry, max_retries, retry, timeout)
    # Validated and pickled once; every run shares the payload.
    template = prepare(engine, fn, args, kwargs, priority, policy, timeout, limit_key=limit_key)
    fixed_timeout = timeout if timeout is not None else engine.config.timeout

    def make(default_timeout: float) -> Any:
        assert template.payload is not None
        rec = engine.new_record(
            template.name,
            priority,
            template.payload,
            policy,
            fixed_timeout if fixed_timeout is not None else default_timeout,
            None,
        )
        rec.limit_key = limit_key
        return rec

    def build(now: float, wall_offset: float, taken: set[str]) -> ScheduleEntry:
        trigger: Trigger = Cron(cron, zone) if cron is not None else Every(_seconds(every), now)
        label = name if name is not None else _free_name(name_of(fn), taken)
        return ScheduleEntry(
            label,
            trigger,
            make,
            misfire_grace=misfire_grace,
            catchup=catchup,
            overlap=overlap,
            now=now,
            wall_offset=wall_offset,
            zone=zone,
        )

    entry = engine.add_schedule(build)
    _log.info("schedule %r added: %s", entry.name, entry.trigger.describe())
    return Schedule(engine, entry)


def check_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    cron: str | None,
    every: float | timedelta | None,
    name: str | None,
) -> None:
    """What every ``schedule()`` refuses at the call, local or on a broker: a
    non-callable, not exactly one of ``cron``/``every``, a name that is not a
    str, ``submit`` options that mean nothing for a recurring call, and
    ``result_of`` markers (a schedule's arguments are fixed values)."""
    if not callable(fn):
        raise InvalidCallableError(f"{fn!r} is not callable")
    if (cron is None) == (every is None):
        raise InvalidArgumentError("give cron= or every=, exactly one")
    if name is not None and not isinstance(name, str):
        raise OptionTypeError(f"name must be a str, got {name!r}")
    refused = sorted(_NOT_FOR_SCHEDULES & kwargs.keys())
    if refused:
        raise OptionTypeError(
            f"schedule() does not take {refused[0]!r} (it is not passed to the callable either: "
            "bind it with functools.partial if the callable wants it)"
        )
    if not _all_atomic(args, kwargs):
        markers: set[int] = set()
        find_markers(args, kwargs, markers)
        if markers:
            raise InvalidArgumentError("a schedule's arguments cannot hold result_of() markers")


def schedules_of(engine: Engine) -> list[Schedule]:
    """The queue's live schedules, in the order they were added (none once
    the queue is stopping: it fires no more)."""
    with engine._lock:
        entries = list(engine.core.schedules.values())
    return [Schedule(engine, e) for e in entries]


def _seconds(every: float | timedelta | None) -> float:
    if isinstance(every, timedelta):
        return every.total_seconds()
    if isinstance(every, bool) or not isinstance(every, (int, float)):
        raise OptionTypeError(f"every must be seconds or a timedelta, got {every!r}")
    return float(every)


def _free_name(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    n = 2
    while f"{base}#{n}" in taken:
        n += 1
    return f"{base}#{n}"
