"""Recurring schedules: when a cron expression or an interval fires, and what
happens to ticks that were missed or that find the previous run still going.

Pure, like the rest of the core: the scheduler hands in ``now`` (monotonic)
and ``wall_offset`` (wall clock minus monotonic, refreshed by the shell every
step). Two clocks, on purpose:

- :class:`Every` (``every=``) ticks on the **monotonic** clock: an interval
  means elapsed time, whatever the wall clock does (NTP steps, DST).
- :class:`Cron` (``cron=``) ticks on the **wall clock**, evaluated in a time
  zone by ``cronsim`` (an optional extra), which follows Debian cron across
  DST: in the skipped hour (spring forward), a job set to a fixed time inside
  it runs once, at the first minute after the jump; in the repeated hour (fall
  back), a fixed-time job runs once, at the first pass; a job whose minute or
  hour field is a wildcard or a step (``*/15``) runs by elapsed time, so it
  fires in both passes of the repeated hour and not at all in the missing one.

A tick that is evaluated more than ``misfire_grace`` seconds after its time
(the process was suspended, the coordinator was busy) is a *misfire*: skipped
and logged. Among the ticks still within grace, ``catchup`` chooses:
``"latest"`` runs only the newest (the others are coalesced), ``"all"`` runs
each (up to :data:`MAX_CATCHUP`), ``"none"`` runs a tick only when it is the
only one due (nothing was missed) and otherwise resumes at the next future
tick. Every tick that does not run is counted and logged, never silent.

In the spirit of arq's ``next_cron`` (a pure function handed the time), with
the cron arithmetic left to cronsim.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, tzinfo
from typing import Any, Protocol

from ..errors import InvalidArgumentError, MissingExtraError

__all__ = ["CATCHUPS", "MAX_CATCHUP", "OVERLAPS", "Cron", "Every", "ScheduleEntry", "Trigger"]

_log = logging.getLogger("procqueue.schedules")

CATCHUPS = ("latest", "all", "none")
OVERLAPS = ("skip", "queue", "allow")
#: Most missed ticks one evaluation runs under ``catchup="all"``; older ones
#: count as misfires (a day of suspension must not flood the queue).
MAX_CATCHUP = 100
#: Most ticks counted one by one when a cron schedule skips a long gap (the
#: count is reported as "at least" beyond it).
_MAX_COUNTED = 1000
#: The most cron ticks passed over to get past a repeated hour (one an
#: hour's seconds, with a seconds field).
_MAX_FOLD_STEPS = 4000
#: How many fired task ids a schedule remembers.
FIRED_KEPT = 1000


class Trigger(Protocol):
    """When a schedule fires: ticks on one clock."""

    #: Ticks are wall-clock epoch seconds (``True``) or monotonic seconds.
    wall: bool

    def next_after(self, t: float) -> float:
        """The first tick strictly after ``t``."""

    def last_at_or_before(self, t: float) -> float:
        """The newest tick at or before ``t``."""

    def prev_before(self, t: float) -> float:
        """The newest tick strictly before the tick ``t``."""

    def count(self, lo: float, hi: float, cap: int) -> int:
        """How many ticks lie in ``[lo, hi)`` (at most ``cap``)."""

    def describe(self) -> str: ...


class Every:
    """Ticks every ``period`` seconds on the monotonic clock, at ``anchor + k *
    period`` (fixed rate: a late run does not shift later ticks)."""

    wall = False

    def __init__(self, period: float, anchor: float) -> None:
        if not period > 0 or not math.isfinite(period):
            raise InvalidArgumentError(f"every must be a positive number of seconds, got {period}")
        self.period = period
        self.anchor = anchor

    def next_after(self, t: float) -> float:
        k = math.floor((t - self.anchor) / self.period) + 1
        tick = self.anchor + k * self.period
        return tick if tick > t else tick + self.period

    def last_at_or_before(self, t: float) -> float:
        k = math.floor((t - self.anchor) / self.period)
        return self.anchor + k * self.period

    def prev_before(self, t: float) -> float:
        return self.last_at_or_before(t - self.period / 2)

    def count(self, lo: float, hi: float, cap: int) -> int:
        if hi <= lo:
            return 0
        first = math.ceil((lo - self.anchor) / self.period)
        last = math.ceil((hi - self.anchor) / self.period)  # first k at or after hi
        return min(cap, max(0, last - first))

    def describe(self) -> str:
        return f"every {self.period:g}s"


class Cron:
    """Ticks of a cron expression in ``zone``, on the wall clock.

    Five fields (minute hour day-of-month month day-of-week) or six with a
    leading seconds field; ``0`` and ``7`` are both Sunday; names (``MON``,
    ``JAN``), ranges, lists, steps and ``L``/``#`` as cronsim reads them.
    """

    wall = True

    def __init__(self, expr: str, zone: tzinfo) -> None:
        try:
            from cronsim import CronSim, CronSimError
        except ImportError as e:
            raise MissingExtraError(
                "cron schedules need the optional 'cronsim' package: pip install 'procqueue[cron]'"
            ) from e
        if not isinstance(expr, str):
            raise InvalidArgumentError(f"cron must be a string, got {expr!r}")
        self._sim = CronSim
        try:
            CronSim(expr, datetime(2000, 1, 1, tzinfo=zone))
        except CronSimError as e:
            raise InvalidArgumentError(f"invalid cron expression {expr!r}: {e}") from e
        self.expr = expr
        self.zone = zone

    def next_after(self, t: float) -> float:
        # cronsim drops microseconds and returns ticks strictly after the
        # (truncated) time: a time between two whole seconds is handled too.
        # It steps on the wall clock: from the second pass through a repeated
        # hour, a fixed time in that hour comes back as its first pass, which
        # is past (the job ran then, or missed it). Such ticks are passed over.
        start = datetime.fromtimestamp(t, self.zone)
        return self._first(self._sim(self.expr, start), lambda ts: ts > t)

    def last_at_or_before(self, t: float) -> float:
        # In reverse, cronsim yields the truncated second itself first when the
        # time has microseconds: set one so that ``t`` itself can match.
        # (replace, not + timedelta: arithmetic would drop ``fold``, the second
        # pass through a repeated hour.)
        start = datetime.fromtimestamp(t, self.zone)
        if not start.microsecond:
            start = start.replace(microsecond=1)
        return self._first(self._sim(self.expr, start, reverse=True), lambda ts: ts <= t)

    def prev_before(self, t: float) -> float:
        # Ticks are whole seconds: from one, cronsim's reverse step is strict.
        start = datetime.fromtimestamp(math.floor(t), self.zone)
        return self._first(self._sim(self.expr, start, reverse=True), lambda ts: ts < t)

    @staticmethod
    def _first(ticks: Iterator[datetime], ok: Callable[[float], bool]) -> float:
        """The first of ``ticks`` (as a timestamp) that is ``ok``: the wall
        clock's order and time's order differ only around a repeated hour, so
        a few steps at most (bounded all the same)."""
        ts = 0.0
        for _, tick in zip(range(_MAX_FOLD_STEPS), ticks):
            ts = float(tick.timestamp())
            if ok(ts):
                return ts
        return ts  # pragma: no cover - a repeated hour holds at most 3600 ticks

    def count(self, lo: float, hi: float, cap: int) -> int:
        n = 0
        t = self.next_after(lo - 1)
        if t < lo:  # pragma: no cover - ticks are whole seconds
            t = self.next_after(lo)
        while t < hi and n < cap:
            n += 1
            t = self.next_after(t)
        return n

    def describe(self) -> str:
        return f"cron {self.expr!r} in {self.zone}"


class _Due:
    """What one evaluation decided: the ticks to run, and how many it skipped
    as misfires (too late) or by the catch-up policy."""

    __slots__ = ("misfired", "run", "skipped")

    def __init__(self) -> None:
        self.run: list[float] = []
        self.misfired = 0
        self.skipped = 0


class ScheduleEntry:
    """One schedule, as the scheduler keeps it.

    ``make(timeout)`` builds a fresh record for one run (the shell's factory:
    ids, pickled payload); ``timeout``: the default per-attempt timeout (the
    interval, or the gap to the next cron tick), used unless the schedule or
    the queue sets one. ``next_tick`` is on the trigger's clock.
    """

    def __init__(
        self,
        name: str,
        trigger: Trigger,
        make: Callable[[float], Any],
        *,
        misfire_grace: float | None,
        catchup: str,
        overlap: str,
        now: float,
        wall_offset: float,
        zone: tzinfo | None = None,
    ) -> None:
        if catchup not in CATCHUPS:
            raise InvalidArgumentError(f"catchup must be one of {CATCHUPS}, got {catchup!r}")
        if overlap not in OVERLAPS:
            raise InvalidArgumentError(f"overlap must be one of {OVERLAPS}, got {overlap!r}")
        if misfire_grace is not None and (
            isinstance(misfire_grace, bool)
            or not isinstance(misfire_grace, (int, float))
            or not misfire_grace > 0
        ):
            # 0 would skip every run: each is handled a little after its time.
            raise InvalidArgumentError(
                f"misfire_grace must be a number of seconds > 0 or None, got {misfire_grace!r}"
            )
        self.name = name
        self.trigger = trigger
        self.make = make
        self.misfire_grace = misfire_grace
        self.catchup = catchup
        self.overlap = overlap
        #: The zone ``next_run`` is shown in (cron: the zone it is evaluated in).
        self.zone = zone
        self.paused = False
        self.next_tick = trigger.next_after(self.clock(now, wall_offset))
        #: The newest fired task id; the ids fired, newest last (bounded).
        self.last_id: int | None = None
        self.fired: deque[int] = deque(maxlen=FIRED_KEPT)
        self.runs = 0
        self.skipped_overlap = 0
        self.misfired = 0
        self.skipped_catchup = 0

    def clock(self, now: float, wall_offset: float) -> float:
        return now + wall_offset if self.trigger.wall else now

    def deadline(self, now: float, wall_offset: float) -> float:
        """The monotonic time of the next tick (for the loop's timeout)."""
        return self.next_tick - wall_offset if self.trigger.wall else self.next_tick

    def resume(self, now: float, wall_offset: float) -> None:
        """Unpause: ticks missed while paused are not caught up."""
        self.paused = False
        self.next_tick = self.trigger.next_after(self.clock(now, wall_offset))

    def take_due(self, clock: float) -> _Due:
        """The ticks due at ``clock`` (on the trigger's clock): which run, which
        are skipped; advances :attr:`next_tick` past ``clock``."""
        due = _Due()
        first = self.next_tick
        if first > clock:
            return due
        trigger = self.trigger
        # ``first`` is due, so the latest tick is at least ``first``; the
        # trigger's own arithmetic can put it a rounding error earlier (an
        # interval of 0.1 s at exactly its tick: floor((t - anchor) / p) is
        # one short), which would read a due tick as missed.
        latest = max(trigger.last_at_or_before(clock), first)
        # Ticks at or before ``clock`` are those before the next one after it
        # (an epsilon past ``clock`` would count a tick that is not due yet).
        after = trigger.next_after(clock)
        grace = self.misfire_grace
        oldest_ok = first if grace is None else max(first, clock - grace)
        if self.catchup == "all":
            # The newest ticks within grace, walking back (bounded), oldest first.
            ticks: list[float] = []
            t = latest
            while t >= oldest_ok and len(ticks) < MAX_CATCHUP:
                ticks.append(t)
                t = trigger.prev_before(t)
            ticks.reverse()
            due.run = ticks
            due.misfired = trigger.count(first, ticks[0] if ticks else after, _MAX_COUNTED)
        elif latest < oldest_ok:
            due.misfired = trigger.count(first, after, _MAX_COUNTED)
        elif self.catchup == "latest" or latest == first:
            due.run = [latest]
            older = trigger.count(first, latest, _MAX_COUNTED)
            late = trigger.count(first, oldest_ok, _MAX_COUNTED)
            due.misfired = late
            due.skipped = older - late
        else:  # "none", and ticks were missed: resume at the next future tick
            due.skipped = trigger.count(first, after, _MAX_COUNTED)
        self.next_tick = trigger.next_after(clock)
        if due.misfired:
            self.misfired += due.misfired
            _log.warning(
                "schedule %r (%s): %d run(s) skipped, later than misfire_grace=%ss "
                "(the process was suspended or the coordinator was busy)",
                self.name,
                trigger.describe(),
                due.misfired,
                grace,
            )
        if due.skipped:
            self.skipped_catchup += due.skipped
            _log.info(
                "schedule %r: %d missed tick(s) not run (catchup=%r)",
                self.name,
                due.skipped,
                self.catchup,
            )
        return due

    def default_timeout(self, tick: float) -> float:
        """A run's default timeout: the time to the schedule's next tick."""
        trigger = self.trigger
        if isinstance(trigger, Every):
            return trigger.period
        return max(1.0, trigger.next_after(tick) - tick)

    def record_fired(self, task_id: int) -> None:
        self.last_id = task_id
        self.fired.append(task_id)
        self.runs += 1
