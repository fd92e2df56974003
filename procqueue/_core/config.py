"""A queue's settings: one frozen value, built once from the front doors'
keywords (``procqueue._frontdoor``) and validated here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .._policy import RetryPolicy, WorkerLimits
from ..errors import InvalidArgumentError, InvalidCallableError, OptionTypeError
from .supervision import RestartPolicy

__all__ = ["QueueConfig", "check_timeout"]


def _int(name: str, value: object, *, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionTypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise InvalidArgumentError(f"{name} must be >= {low}, got {value!r}")


def check_timeout(timeout: object, name: str = "timeout") -> None:
    """``None`` or a number of seconds > 0."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise OptionTypeError(f"{name} must be a number of seconds, got {timeout!r}")
    if not timeout > 0:
        raise InvalidArgumentError(f"{name} must be > 0, got {timeout!r}")


@dataclass(frozen=True)
class QueueConfig:
    """Every queue-wide setting, with its default. The README's configuration
    table documents each; ``ProcQueue`` and ``TaskQueue`` take them as keywords."""

    num_workers: int
    # --- scheduling (the core)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    prefetch: int | None = None
    retain_finished: int = 10_000
    keep_unclaimed: bool = True
    limits: WorkerLimits = field(default_factory=WorkerLimits)
    dead_letters: int = 1000
    max_pending: int | None = None
    rand: Callable[[], float] | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    key_limits: Mapping[str, Any] | None = None
    max_throttles: int = 20
    # --- local workers (the runtime)
    start_method: str | None = None
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    forward_logs: bool = True

    def __post_init__(self) -> None:
        _int("num_workers", self.num_workers, low=1)
        if not isinstance(self.retry, RetryPolicy):
            raise OptionTypeError(f"retry must be a RetryPolicy, got {self.retry!r}")
        check_timeout(self.timeout)
        _int("prefetch", self.prefetch, low=0, optional=True)
        _int("retain_finished", self.retain_finished, low=0)
        if not isinstance(self.keep_unclaimed, bool):
            raise OptionTypeError(f"keep_unclaimed must be a bool, got {self.keep_unclaimed!r}")
        if not isinstance(self.restart, RestartPolicy):
            raise OptionTypeError(f"restart must be a RestartPolicy, got {self.restart!r}")
        if not isinstance(self.limits, WorkerLimits):
            raise OptionTypeError(f"limits must be a WorkerLimits, got {self.limits!r}")
        _int("dead_letters", self.dead_letters, low=0)
        _int("max_pending", self.max_pending, low=1, optional=True)
        _int("max_throttles", self.max_throttles, low=0)
        if self.key_limits is not None and not isinstance(self.key_limits, Mapping):
            raise OptionTypeError(f"key_limits must be a mapping, got {self.key_limits!r}")
        if self.rand is not None and not callable(self.rand):
            raise OptionTypeError("rand must be a callable returning a float in [0, 1)")
        if self.start_method is not None and not isinstance(self.start_method, str):
            raise OptionTypeError(f"start_method must be a str, got {self.start_method!r}")
        if self.initializer is not None and not callable(self.initializer):
            raise InvalidCallableError(f"initializer must be callable, got {self.initializer!r}")
        if not isinstance(self.initargs, tuple):
            raise OptionTypeError(f"initargs must be a tuple, got {self.initargs!r}")
        if not isinstance(self.forward_logs, bool):
            raise OptionTypeError(f"forward_logs must be a bool, got {self.forward_logs!r}")


#: The front doors' keyword names: :class:`QueueConfig`'s, less ``num_workers``
#: (positional) and ``restart`` (internal: the core's tests shorten it).
OPTION_NAMES = frozenset(f.name for f in fields(QueueConfig)) - {"num_workers", "restart"}
