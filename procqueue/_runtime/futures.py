"""The futures handed to callers, and how the shell settles them (outside the
engine lock: done-callbacks are user code)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import PENDING as _PENDING
from typing import Any

from .._core.events import CANCEL, ERROR, OK
from .._core.records import RELEASED, TaskState, _TaskRecord

_log = logging.getLogger("procqueue.coordinator")


class _TaskFuture(Future[Any]):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also tells the engine,
    so the stats and the task table learn of it at once.

    Its ``threading.Condition`` (an RLock, a deque and five bound methods:
    about 1.3 KB, most of a Future's size) is made on first use, which for a
    task is when it is dispatched: a million pending tasks do not carry a
    million idle Conditions. ``__init__`` sets the same fields as
    ``Future.__init__`` (unchanged from 3.10 to 3.14) minus the Condition.
    """

    _cancel_hook: Callable[[], Callable[[int], bool] | None] | None = None
    _task_id = -1
    _cancel_notified = False

    def __init__(self) -> None:  # deliberately not Future.__init__: see above
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond: threading.Condition | None = self.__dict__.get("_lazy_condition")
        if cond is None:
            # setdefault is atomic: two threads racing here share one Condition.
            cond = self.__dict__.setdefault("_lazy_condition", threading.Condition())
        return cond

    def bind(self, cancel_hook: Callable[[], Callable[[int], bool] | None], task_id: int) -> None:
        """``cancel_hook``: a weak reference to the engine's ``request_cancel``."""
        self._cancel_hook = cancel_hook
        self._task_id = task_id

    def set_running_or_notify_cancel(self) -> bool:
        running = super().set_running_or_notify_cancel()
        if not running:
            self._cancel_notified = True
        return running

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            hook = self._cancel_hook() if self._cancel_hook is not None else None
            if hook is not None:
                hook(self._task_id)
        return cancelled


def deliver(fut: Future[Any], kind: int, value: Any) -> None:
    """Settle a future: a value, an error, or a cancellation (which becomes an
    error if the future is already running and so cannot be cancelled)."""
    try:
        if kind == CANCEL:
            if fut.cancelled():
                if not getattr(fut, "_cancel_notified", True):
                    fut.set_running_or_notify_cancel()  # wake wait()/as_completed()
                return
            if not fut.running() and Future.cancel(fut):
                fut.set_running_or_notify_cancel()
                return
        if fut.done():
            return
        if not fut.running() and not fut.set_running_or_notify_cancel():
            return
        if kind == OK:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    except Exception:  # InvalidStateError: settled by the user meanwhile
        _log.debug("future already settled", exc_info=True)


def resolve_now(fut: Future[Any], rec: _TaskRecord) -> None:
    """Settle ``fut`` from a record that is already final."""
    outcome = None if rec.outcome is RELEASED else rec.outcome
    if rec.state is TaskState.CANCELLED:
        deliver(fut, CANCEL, outcome)
    else:
        deliver(fut, ERROR if rec.is_error else OK, outcome)
