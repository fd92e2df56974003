"""How the pool reacts to workers that die before they could take a task.

Two different causes, two different answers:

* **Deterministic start-up failures** (the initializer raised, the main module
  cannot be imported, a non-zero exit before the hello, a process that cannot
  be started at all) repeat on every try: after ``max_failures`` in a row the
  pool breaks with ``WorkerStartupError`` instead of respawning forever.
* **Deaths by a signal from outside** (an operator's ``kill -9``, the OOM
  killer) say nothing about the start-up code. The slot is restarted, at once
  for the first ``immediate`` such deaths per worker slot since a worker last
  came up, then after an exponential backoff (``backoff_base`` doubling, capped
  at ``backoff_max``). More than ``intensity`` deaths per slot within
  ``period`` seconds, with no worker coming up meanwhile, break the pool (a
  start-up that the OOM killer takes every time): an OTP supervisor's restart
  intensity, where a worker reaching ``ready`` resets the count, so a pool
  under sustained outside kills keeps serving.

Why restarts are immediate at first: a killer that picks its victims among
live workers concentrates on whichever slot is not waiting out a backoff, so
early backoff starves the pool under random kills (``tests/faults/test_chaos.py``:
a kill every 50 ms against ~80 ms boots never let a worker up). Backoff is for
a streak that only a deterministic cause explains.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["RestartPolicy"]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Start-up supervision settings (internal; tests shorten them).
    ``immediate`` and ``intensity`` are per worker slot."""

    max_failures: int = 3
    immediate: int = 10
    backoff_base: float = 0.05
    backoff_max: float = 1.0
    intensity: int = 20
    period: float = 60.0


class StartupGuard:
    """Counts start-up failures; decides the backoff and when to give up."""

    __slots__ = ("policy", "workers", "failures", "_deaths", "total_deaths")

    def __init__(self, policy: RestartPolicy, workers: int) -> None:
        self.policy = policy
        self.workers = workers
        # Deterministic failures in a row.
        self.failures = 0
        # Times of deaths by signal while starting, since a worker last came up.
        self._deaths: deque[float] = deque()
        #: Every death by signal while starting (for stats).
        self.total_deaths = 0

    @property
    def budget(self) -> int:
        """Deaths by signal within ``period`` (none coming up) that break the pool."""
        return self.policy.intensity * self.workers

    def worker_ready(self) -> None:
        self.failures = 0
        self._deaths.clear()

    def failed(self) -> bool:
        """A deterministic failure; True when the pool must break."""
        self.failures += 1
        return self.failures >= self.policy.max_failures

    def killed(self, now: float) -> float | None:
        """A death by signal while starting, at ``now``: the delay before the
        slot starts again, or ``None`` when the budget is spent (break)."""
        p = self.policy
        self.total_deaths += 1
        deaths = self._deaths
        deaths.append(now)
        while deaths and deaths[0] < now - p.period:
            deaths.popleft()
        streak = len(deaths)
        if streak > self.budget:
            return None
        late = streak - p.immediate * self.workers
        if late <= 0:
            return 0.0
        return min(p.backoff_max, p.backoff_base * 2.0 ** (late - 1))
