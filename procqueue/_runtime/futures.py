"""The futures handed to callers, and how the shell settles them (outside the
engine lock: done-callbacks are user code)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED as _CANCELLED
from concurrent.futures._base import CANCELLED_AND_NOTIFIED as _CANCELLED_AND_NOTIFIED
from concurrent.futures._base import FINISHED as _FINISHED
from concurrent.futures._base import PENDING as _PENDING
from concurrent.futures._base import RUNNING as _RUNNING
from typing import Any

from .._core.events import CANCEL, ERROR, OK
from .._core.records import TaskState, _TaskRecord
from ..errors import TaskNotFoundError

_log = logging.getLogger("procqueue.coordinator")
_callbacks_log = logging.getLogger("concurrent.futures")


_CANCELLED_STATES = (_CANCELLED, _CANCELLED_AND_NOTIFIED)
_DONE = (_CANCELLED, _CANCELLED_AND_NOTIFIED, _FINISHED)
_SETTLEABLE = (_PENDING, _RUNNING)

#: Guards the state of every future that has no Condition yet (see _TaskFuture).
_BARE = threading.Lock()


class _TaskFuture(Future[Any]):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also tells the engine,
    so the stats and the task table learn of it at once.

    Its ``threading.Condition`` (an RLock, a deque and five bound methods:
    about 1.3 KB, most of a Future's size, and a dozen Python calls to make)
    is made only when a thread must wait on it or a stdlib method asks for it.
    Until then one module-wide lock, :data:`_BARE`, guards its state: the
    Condition is made under that lock, and the coordinator's two moves (set
    running, settle) re-check under it that there is still none, so every
    move of a future happens under one lock or the other, never both and
    never neither. A waiter can exist only once a Condition does (``wait``,
    ``as_completed`` and ``result`` all take it), so a bare future never has
    one to wake. The common case, results gathered after they arrive, never
    makes a Condition at all. ``__init__`` sets the same fields as
    ``Future.__init__`` (unchanged from 3.10 to 3.14) minus the Condition.
    """

    _cancel_hook: Callable[[], Callable[[int], bool] | None] | None = None
    _task_id = -1
    _cancel_notified = False
    # Made on first use (None until then). Read as attributes, never through
    # ``__dict__``: CPython (3.11+) keeps an instance's attributes inline and
    # makes its dict only when ``__dict__`` is asked for, and that dict is
    # one more object the cyclic GC tracks.
    _lazy_condition: threading.Condition | None = None
    _lazy_waiters: list[Any] | None = None
    _lazy_callbacks: list[Any] | None = None

    def __init__(self) -> None:  # deliberately not Future.__init__: see above
        self._state = _PENDING
        self._result = None
        self._exception = None
        # Every attribute, always in this order: an instance that later gains
        # one of its type's attributes in another order gets a dict of its
        # own on CPython 3.11 (one more object for the GC), and after a map()
        # that waited on its futures every new future did.
        self._cancel_hook = None
        self._task_id = -1
        self._lazy_condition = None
        self._lazy_waiters = None
        self._lazy_callbacks = None
        self._cancel_notified = False

    # Its waiter and callback lists are made on first use, too: with them
    # and its dict, a pending future was 4 objects the cyclic GC tracks (and
    # every full collection walks), and 100,000 tasks submitted at once ran
    # at 44k tasks/s against 80k with the GC off (issue #11, the tiny
    # workload sized by time). The stdlib reads and appends to them under
    # the Condition, which serialises their making; this class reads them
    # without making them (``_finish``, ``_invoke_callbacks``).

    @property
    def _waiters(self) -> list[Any]:
        waiters = self._lazy_waiters
        if waiters is None:
            waiters = self._lazy_waiters = []
        return waiters

    @_waiters.setter
    def _waiters(self, value: list[Any]) -> None:
        self._lazy_waiters = value

    @property
    def _done_callbacks(self) -> list[Any]:
        callbacks = self._lazy_callbacks
        if callbacks is None:
            callbacks = self._lazy_callbacks = []
        return callbacks

    @_done_callbacks.setter
    def _done_callbacks(self, value: list[Any]) -> None:
        self._lazy_callbacks = value

    def _invoke_callbacks(self) -> None:
        for callback in self._lazy_callbacks or ():
            try:
                callback(self)
            except Exception:  # on the stdlib's logger, as Future's own call does
                _callbacks_log.exception("exception calling callback for %r", self)

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._lazy_condition
        if cond is None:
            with _BARE:
                cond = self._lazy_condition
                if cond is None:
                    cond = self._lazy_condition = threading.Condition()
        return cond

    def bind(self, cancel_hook: Callable[[], Callable[[int], bool] | None], task_id: int) -> None:
        """``cancel_hook``: a weak reference to the engine's ``request_cancel``."""
        self._cancel_hook = cancel_hook
        self._task_id = task_id

    def set_running_or_notify_cancel(self) -> bool:
        if self._lazy_condition is None:
            with _BARE:
                if self._lazy_condition is None:
                    if self._state == _PENDING:
                        self._state = _RUNNING
                        return True
                    if self._state == _CANCELLED:
                        self._state = _CANCELLED_AND_NOTIFIED
                        self._cancel_notified = True
                        return False
        running = super().set_running_or_notify_cancel()
        if not running:
            self._cancel_notified = True
        return running

    def settle(self, value: Any, ok: bool) -> bool:
        """``set_result``/``set_exception`` for the common case, a future the
        coordinator set running: one lock where the stdlib's checks
        (``done()``, ``running()``, then the setter) take three.
        ``False`` (nothing done) in any other state: :func:`deliver` copes."""
        cond = self._lazy_condition
        if cond is None:
            with _BARE:
                cond = self._lazy_condition
                if cond is None and not self._finish(value, ok):
                    return False
        if cond is not None:
            with cond:
                if not self._finish(value, ok):
                    return False
                cond.notify_all()
        self._invoke_callbacks()
        return True

    def _finish(self, value: Any, ok: bool) -> bool:
        """Under the future's lock (its Condition, or ``_BARE`` while it has
        none and so no waiter): ``RUNNING`` (or ``PENDING``: a future made
        after its task was dispatched, as ``TaskQueue.result`` makes them)
        -> ``FINISHED`` with ``value``. The stdlib would first move a pending
        one to running, which wakes nobody: the same end, three locks fewer."""
        if self._state not in _SETTLEABLE:
            return False
        if ok:
            self._result = value
        else:
            self._exception = value
        self._state = _FINISHED
        for waiter in self._lazy_waiters or ():
            if ok:
                waiter.add_result(self)
            else:
                waiter.add_exception(self)
        return True

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        if self._lazy_condition is None:
            with _BARE:
                bare = self._lazy_condition is None
                if bare and self._state in (_PENDING, _RUNNING):
                    self._done_callbacks.append(fn)
                    return
            if bare:  # already settled: call it now, as the stdlib does
                try:
                    fn(self)
                except Exception:  # on the stdlib's logger, as Future's own call does
                    _callbacks_log.exception("exception calling callback for %r", self)
                return
        super().add_done_callback(fn)

    # The state queries read one attribute: the stdlib takes the Condition
    # for them (making it, here), which orders nothing a single read needs.
    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        return self._state in _CANCELLED_STATES

    def running(self) -> bool:
        return self._state == _RUNNING

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == _FINISHED:  # final: readable without a lock
            return self._exception
        return super().exception(timeout)

    def result(self, timeout: float | None = None) -> Any:
        if self._state == _FINISHED:  # final: readable without a lock
            exc = self._exception
            if exc is None:
                return self._result
            try:
                raise exc
            finally:
                del exc  # as the stdlib does: no reference cycle through the frame
        return super().result(timeout)

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            hook = self._cancel_hook() if self._cancel_hook is not None else None
            if hook is not None:
                try:
                    hook(self._task_id)
                except TaskNotFoundError:
                    # It ended and was let go (retain_finished) between its
                    # end and this future's settling: nothing left to cancel,
                    # and Future.cancel() never raises.
                    pass
        return cancelled


def deliver(fut: Future[Any], kind: int, value: Any) -> None:
    """Settle a future: a value, an error, or a cancellation (which becomes an
    error if the future is already running and so cannot be cancelled)."""
    if kind != CANCEL and type(fut) is _TaskFuture and fut.settle(value, kind == OK):
        return
    try:
        if fut.cancelled():
            # Cancelled by its caller, whatever the task's end: wait() and
            # as_completed() count a cancelled future only once notified
            # (the stdlib leaves that to the executor). Also when the task's
            # outcome raced the cancel() and lost: they waited for ever.
            if not getattr(fut, "_cancel_notified", True):
                fut.set_running_or_notify_cancel()
            return
        if kind == CANCEL and not fut.running() and Future.cancel(fut):
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
    """Settle ``fut`` from a record that is already final and still holds
    its outcome (``future_for`` refuses one released to its own future)."""
    outcome = rec.outcome
    if rec.state is TaskState.CANCELLED:
        deliver(fut, CANCEL, outcome)
    else:
        # A fresh future: running, then settled, without ever making a Condition.
        fut.set_running_or_notify_cancel()
        deliver(fut, ERROR if rec.is_error else OK, outcome)
