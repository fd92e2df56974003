"""Rate and concurrency limits per key, enforced at dispatch.

``RateLimit("20/s;5000/h", burst=1)`` is one token bucket per window: tokens
refill continuously at ``count / period`` and a bucket holds at most ``burst``
(default 1: tasks are spaced evenly, as in GCRA), plus 10 ms worth of slack so
that a late wake-up or a long loop step is made up rather than lost; a task
starts only when every window has a token. Every window of one ``RateLimit``
has the same ``burst``, so by default the tightest sets an even pace; a key's
list of limits may hold several (``[RateLimit("20/s"), RateLimit("5000/h",
burst=5000)]``: a 20/s pace under an hourly quota). ``Concurrency(4)``: at
most 4 tasks of the key running (prefetched ones count) across all of the
queue's workers. A pattern key
(``"tenant:*"``, shell-style) gives each concrete key its own limiter.

A throttled task waits *off* the ready heap, parked in its key's FIFO: it holds
no worker, uses no attempt, is no failure, and blocks no other key (no
head-of-line blocking). Parked tasks go back to the heap, in their order, as
their key frees up.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import InvalidArgumentError, OptionTypeError
from .records import _TaskRecord

__all__ = ["Concurrency", "RateLimit"]

#: Seconds of lateness (a late wake-up, a long loop step) a bucket absorbs.
_TIMER_SLACK = 0.01
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_WINDOW = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` task starts per period, for each ``count/unit``
    window of ``spec`` (``;``-separated; units ``s``, ``m``, ``h``, ``d``, with
    an optional multiplier: ``"100/10s"``). ``burst``: starts allowed back to
    back (default 1: evenly spaced), plus 10 ms worth of slack (``rate *
    0.01``) for a timer that fires late: after an idle spell, ``burst +
    rate * 0.01`` may start back to back. ``burst`` holds for every window of
    ``spec``, so ``"20/s;5000/h"`` paces evenly at 5000/h; a quota over a
    faster pace is a second ``RateLimit`` with its own burst.

    ``catchup`` (seconds, default 0.1): while the key has a backlog, the
    starts that fell due while the coordinator could not run (a starved CPU,
    a long pause) are made up right after, up to this much lateness, so the
    average rate holds (1000/s held 996/s beside a saturating stream, against
    719/s without). The price: right after such a stall, up to ``rate *
    catchup`` starts come back to back, so a 1 s window can see that many
    more than the rate. ``catchup=0`` never exceeds ``rate + burst + rate *
    0.01`` starts in any one-second window and under-delivers under load
    instead. No credit builds up while
    the key is idle."""

    spec: str
    burst: int = 1
    catchup: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str):
            raise OptionTypeError(f"RateLimit takes a string like '20/s;5000/h', got {self.spec!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise InvalidArgumentError(f"burst must be an int >= 1, got {self.burst!r}")
        c = self.catchup
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 3600:
            raise InvalidArgumentError(f"catchup must be seconds in [0, 3600], got {c!r}")
        self.windows()

    def windows(self) -> list[tuple[float, float]]:
        """``(rate per second, bucket capacity)`` per window."""
        out = []
        for part in self.spec.split(";"):
            m = _WINDOW.match(part.lower())
            if m is None or m.group(3) not in _UNITS:
                raise InvalidArgumentError(f"bad rate {part!r} in {self.spec!r}: use e.g. '20/s'")
            count, mult, unit = int(m.group(1)), m.group(2), m.group(3)
            period = (float(mult) if mult else 1.0) * _UNITS[unit]
            if count < 1 or period <= 0:
                raise InvalidArgumentError(f"bad rate {part!r}: count and period must be > 0")
            rate = count / period
            # A bucket holds `burst` tokens plus 10 ms worth of slack: the loop
            # wakes a timer tick late (epoll counts whole milliseconds) and,
            # under load, a step can take milliseconds; a bucket capped at
            # exactly one token drops that lateness on every start (1000/s came
            # out at 800/s idle and 350/s under load).
            slack = rate * _TIMER_SLACK
            out.append((rate, float(min(self.burst, count)) + slack))
        return out


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most ``limit`` tasks of the key running at once, across all workers."""

    limit: int

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise InvalidArgumentError(f"Concurrency takes an int >= 1, got {self.limit!r}")


Spec = RateLimit | Concurrency


class Limiter:
    """The state of one concrete key."""

    __slots__ = ("key", "buckets", "max_running", "running", "parked", "released")

    def __init__(self, key: str, specs: Sequence[Spec], now: float) -> None:
        self.key = key
        # [rate per second, capacity, tokens, last refill, catch-up tokens]
        self.buckets: list[list[float]] = []
        self.max_running = math.inf
        for spec in specs:
            if isinstance(spec, RateLimit):
                self.buckets += [
                    [rate, cap, cap, now, rate * spec.catchup] for rate, cap in spec.windows()
                ]
            else:
                self.max_running = min(self.max_running, spec.limit)
        self.running = 0
        self.parked: deque[_TaskRecord] = deque()
        # Ids taken off ``parked`` for the room there was: they go before any
        # task still parked (FIFO within the key).
        self.released: set[int] = set()

    def _refill(self, now: float) -> None:
        # With a backlog, up to ``catchup`` seconds of tokens beyond capacity
        # (RateLimit's docstring); with none, the extra goes.
        backlog = bool(self.parked or self.released)
        for b in self.buckets:
            cap = b[1] + b[4] if backlog else b[1]
            b[2] = min(cap, b[2] + (now - b[3]) * b[0])
            b[3] = now

    def room(self, now: float) -> int:
        """How many more tasks could start now (those already released from
        ``parked`` to the heap count as started)."""
        self._refill(now)
        claimed = len(self.released)
        room = self.max_running - self.running - claimed
        for b in self.buckets:
            room = min(room, math.floor(b[2] + 1e-9) - claimed)
        return int(max(0, min(room, 1 << 30)))

    def take(self, now: float) -> None:
        self._refill(now)
        for b in self.buckets:
            b[2] -= 1.0
        self.running += 1

    def idle(self, now: float) -> bool:
        """Nothing running, parked or released, and every bucket full again:
        a new limiter for the key would be in the same state."""
        if self.running or self.parked or self.released:
            return False
        self._refill(now)
        return all(b[2] >= b[1] for b in self.buckets)

    def next_room(self, now: float) -> float | None:
        """When a token is next due (``None``: only a running task ending frees room)."""
        claimed = len(self.released)
        if self.running + claimed >= self.max_running:
            return None
        need = 1.0 + claimed
        due = now
        for b in self.buckets:
            if b[2] < need:
                due = max(due, b[3] + (need - b[2]) / b[0])
        return due


class KeyLimits:
    """Every key's limits (exact keys first, then patterns in order)."""

    def __init__(self, config: Mapping[str, Spec | Sequence[Spec]] | None) -> None:
        self.exact: dict[str, list[Spec]] = {}
        self.patterns: list[tuple[str, list[Spec]]] = []
        self.limiters: dict[str, Limiter] = {}
        #: Limiters kept before the next sweep of idle pattern keys' ones.
        self._sweep_at = SWEEP_MIN
        for key, value in (config or {}).items():
            if not isinstance(key, str):
                raise OptionTypeError(f"limit keys are strings, got {key!r}")
            raw = list(value) if isinstance(value, (list, tuple)) else [value]
            specs: list[Spec] = [s for s in raw if isinstance(s, (RateLimit, Concurrency))]
            if not specs or len(specs) != len(raw):
                raise OptionTypeError(
                    f"limits for {key!r} must be RateLimit/Concurrency values, got {value!r}"
                )
            if any(c in key for c in "*?["):
                self.patterns.append((key, specs))
            else:
                self.exact[key] = specs

    def check(self, key: str) -> None:
        """Raise for a key no limit matches (a typo would otherwise run unlimited)."""
        if key not in self.exact and not any(fnmatch.fnmatchcase(key, p) for p, _ in self.patterns):
            raise InvalidArgumentError(f"no limit is configured for limit_key {key!r}")

    def limiter(self, key: str, now: float) -> Limiter:
        lim = self.limiters.get(key)
        if lim is None:
            if len(self.limiters) >= self._sweep_at:
                self._sweep(now)
            specs = self.exact.get(key)
            if specs is None:
                specs = next(s for p, s in self.patterns if fnmatch.fnmatchcase(key, p))
            lim = self.limiters[key] = Limiter(key, specs, now)
        return lim

    def _sweep(self, now: float) -> None:
        """Drop the idle limiters of a pattern's concrete keys (``tenant:42``):
        with many distinct keys they would otherwise pile up for ever. Amortised:
        the next sweep waits until the table has doubled."""
        for key, lim in list(self.limiters.items()):
            if key not in self.exact and lim.idle(now):
                del self.limiters[key]
        self._sweep_at = max(SWEEP_MIN, 2 * len(self.limiters))


#: Limiters kept before the first sweep of idle ones.
SWEEP_MIN = 1024
