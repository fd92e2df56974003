"""Keyword handling shared by both front doors, so neither writes it twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._coordinator import EngineConfig, check_timeout, default_start_method
from ._policy import RetryPolicy, WorkerLimits, resolve_policy

#: Keyword names ``submit`` keeps for itself; anything else goes to the callable.
#: To pass one of these to your function, use ``functools.partial``.
RESERVED_OPTIONS = frozenset({"priority", "max_retries", "timeout", "retry"})


def build_config(
    num_workers: int,
    *,
    start_method: str | None,
    retry: RetryPolicy | None,
    max_retries: int | None,
    timeout: float | None,
    prefetch: int | None,
    retain_finished: int,
    keep_unclaimed: bool,
    limits: WorkerLimits | None,
    dead_letters: int,
    max_pending: int | None,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    forward_logs: bool,
    rand: Callable[[], float] | None = None,
) -> EngineConfig:
    policy = resolve_policy(RetryPolicy() if retry is None else retry, max_retries, None)
    return EngineConfig(
        num_workers=num_workers,
        start_method=start_method or default_start_method(),
        retry=policy,
        timeout=timeout,
        prefetch=prefetch,
        retain_finished=retain_finished,
        keep_unclaimed=keep_unclaimed,
        limits=WorkerLimits() if limits is None else limits,
        dead_letters=dead_letters,
        max_pending=max_pending,
        initializer=initializer,
        initargs=tuple(initargs),
        forward_logs=forward_logs,
        rand=rand,
    )


def task_options(
    base: RetryPolicy,
    max_retries: int | None,
    retry: RetryPolicy | None,
    timeout: float | None,
) -> RetryPolicy:
    """Validate per-task options; returns the task's retry policy."""
    check_timeout(timeout)
    return resolve_policy(base, max_retries, retry)
