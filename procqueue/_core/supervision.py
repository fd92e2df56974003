"""How the pool reacts to workers that die before they could take a task.

Two different causes, two different answers:

* **Deterministic start-up failures** (the initializer raised, the main module
  cannot be imported, a non-zero exit before the hello, a process that cannot
  be started at all) repeat on every try: after ``max_failures`` in a row the
  pool breaks with ``WorkerStartupError`` instead of respawning forever.
* **Deaths by a signal from outside** (an operator's ``kill -9``, the OOM
  killer) say nothing about the start-up code. The slot is restarted after an
  exponential backoff (capped), under a restart-intensity budget in the manner
  of an OTP supervisor: more than ``intensity`` such deaths within ``period``
  seconds, with no worker coming up meanwhile, breaks the pool (a start-up that
  is OOM-killed every time). A worker that reaches ``ready`` resets both counts,
  so a pool under sustained outside kills keeps serving.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["RestartPolicy"]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Start-up supervision settings (internal; tests shorten them)."""

    max_failures: int = 3
    backoff_base: float = 0.05
    backoff_max: float = 1.0
    intensity: int = 20
    period: float = 30.0


class StartupGuard:
    """Counts start-up failures; decides the backoff and when to give up."""

    __slots__ = ("policy", "failures", "_deaths", "total_deaths")

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        # Deterministic failures in a row.
        self.failures = 0
        # Times of deaths by signal while starting, since a worker last came up.
        self._deaths: deque[float] = deque()
        #: Every death by signal while starting (for stats).
        self.total_deaths = 0

    def worker_ready(self) -> None:
        self.failures = 0
        self._deaths.clear()

    def failed(self) -> bool:
        """A deterministic failure; True when the pool must break."""
        self.failures += 1
        return self.failures >= self.policy.max_failures

    def killed(self, now: float) -> float | None:
        """A death by signal while starting, at ``now``: the backoff before the
        slot starts again, or ``None`` when the budget is spent (break)."""
        p = self.policy
        self.total_deaths += 1
        deaths = self._deaths
        deaths.append(now)
        while deaths and deaths[0] < now - p.period:
            deaths.popleft()
        if len(deaths) > p.intensity:
            return None
        return min(p.backoff_max, p.backoff_base * 2.0 ** (len(deaths) - 1))
