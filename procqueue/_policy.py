"""Policies are values: frozen dataclasses passed per queue and overridable per task."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .errors import InvalidArgumentError, OptionTypeError

__all__ = ["RetryPolicy", "WorkerLimits"]


def _check_non_negative(name: str, value: float) -> None:
    # ``not 0 <= value``, not ``value < 0``: NaN fails too.
    if not 0 <= value < math.inf:
        raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how soon a failed attempt is tried again.

    The delay before retry number ``n`` (``n = 1`` for the first retry) is::

        min(backoff_max, backoff_base * backoff_factor ** (n - 1)) * U(1 - jitter, 1 + jitter)

    clamped at ``backoff_max``. ``retry_on`` lists the exception classes that are
    retried (default: any ``Exception``; ``SystemExit``, ``KeyboardInterrupt`` and
    other ``BaseException`` are final). Crashes and timeouts
    (``WorkerCrashedError``, ``TaskTimeoutError``) are ``Exception`` subclasses and
    so retried by default.

    >>> RetryPolicy(max_retries=3, backoff_base=0.5).delay(2, lambda: 0.5)
    1.0
    """

    max_retries: int = 0
    backoff_base: float = 0.1
    backoff_factor: float = 2.0
    backoff_max: float = 30.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise OptionTypeError(f"max_retries must be an int, got {self.max_retries!r}")
        _check_non_negative("max_retries", self.max_retries)
        _check_non_negative("backoff_base", self.backoff_base)
        _check_non_negative("backoff_max", self.backoff_max)
        if not 1 <= self.backoff_factor < math.inf:
            raise InvalidArgumentError(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")
        if not 0 <= self.jitter <= 1:
            raise InvalidArgumentError(f"jitter must be within [0, 1], got {self.jitter!r}")
        if not all(isinstance(c, type) and issubclass(c, BaseException) for c in self.retry_on):
            raise OptionTypeError("retry_on must be a tuple of exception classes")

    def delay(self, retry_number: int, rand: Callable[[], float]) -> float:
        """Seconds to wait before retry number ``retry_number`` (1-based).

        ``rand`` returns a float in [0, 1); injected so tests are deterministic.
        """
        exponent = max(0, retry_number - 1)
        try:
            raw = self.backoff_base * self.backoff_factor**exponent
        except OverflowError:
            raw = self.backoff_max
        raw = min(self.backoff_max, raw)
        spread = 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return min(self.backoff_max, raw * spread)

    def should_retry(self, error: BaseException, attempts: int) -> bool:
        """True when an attempt that ended with ``error`` is tried again, given
        ``attempts`` attempts were charged so far (including the failed one)."""
        return attempts <= self.max_retries and isinstance(error, self.retry_on)


def resolve_policy(
    base: RetryPolicy, max_retries: int | None, retry: RetryPolicy | None
) -> RetryPolicy:
    """The policy of one task: ``retry`` replaces the queue's, ``max_retries``
    overrides just the budget. Replaced policies are cached: submit is hot."""
    policy = base if retry is None else retry
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise OptionTypeError(f"retry must be a RetryPolicy, got {retry!r}")
    if max_retries is None:
        return policy
    # The type first: ``False == 0`` and ``1.0 == 1`` would otherwise pass as
    # the queue's budget or a cached one (review r17).
    if type(max_retries) is not int and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int)
    ):
        raise OptionTypeError(f"max_retries must be an int, got {max_retries!r}")
    if max_retries == policy.max_retries:
        return policy
    key = (policy, max_retries)
    cached = _replaced.get(key)
    if cached is None:
        cached = replace(policy, max_retries=max_retries)
        if len(_replaced) > 256:
            _replaced.clear()
        _replaced[key] = cached
    return cached


_replaced: dict[tuple[RetryPolicy, int], RetryPolicy] = {}


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """Limits on each worker process; ``None`` switches a limit off.

    * ``max_tasks_per_child``: a worker is replaced after running this many
      tasks (any start method, unlike the stdlib's fork restriction).
    * ``memory_soft``: bytes of PSS (the worker and its child processes; see
      the README). A worker over it after finishing a task takes no more tasks
      and is replaced once the tasks already handed to it are done.
    * ``memory_hard``: bytes of PSS. A worker over it while running is killed
      and the attempt ends with ``MemoryLimitExceeded`` (retried if retries
      remain). Checked every ``memory_check_interval`` seconds while busy.
    * ``idle_timeout``: seconds a worker may sit idle before it exits; the pool
      starts workers again when work arrives.

    >>> WorkerLimits(max_tasks_per_child=100, memory_hard=2 * 2**30)  # doctest: +ELLIPSIS
    WorkerLimits(max_tasks_per_child=100, ...)
    """

    max_tasks_per_child: int | None = None
    memory_soft: int | None = None
    memory_hard: int | None = None
    idle_timeout: float | None = None
    memory_check_interval: float = 0.1

    def __post_init__(self) -> None:
        for name in ("max_tasks_per_child", "memory_soft", "memory_hard"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise OptionTypeError(f"{name} must be an int or None, got {value!r}")
            if value < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {value!r}")
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise InvalidArgumentError(f"idle_timeout must be > 0, got {self.idle_timeout!r}")
        if not self.memory_check_interval > 0:
            raise InvalidArgumentError("memory_check_interval must be > 0")
