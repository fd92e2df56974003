"""Awaiting ``concurrent.futures.Future`` objects from asyncio.

Three things differ from ``asyncio.wrap_future``:

* the bridge is one-way: a timed-out ``await queue.result(...)`` must leave the
  task alone, so cancelling the awaiting side never cancels the task;
* completions are coalesced per event loop: the coordinator thread settles
  futures in bursts, and one ``call_soon_threadsafe`` (one write to the loop's
  self-pipe) carries a whole burst instead of one wake-up per task;
* a task's ``BaseException`` that is not an ``Exception`` (``SystemExit``,
  ``KeyboardInterrupt``, ``asyncio.CancelledError``) arrives as
  :class:`~procqueue.errors.TaskAbortedError`, the original as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from .errors import TaskAbortedError, TaskCancelledError


class _Relay:
    """Per event loop: settled futures waiting to be copied into the loop."""

    __slots__ = ("loop", "lock", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: list[tuple[Future[Any], asyncio.Future[Any]]] = []

    def push(self, cf: Future[Any], af: asyncio.Future[Any]) -> None:
        with self.lock:
            first = not self.pending
            self.pending.append((cf, af))
        if first:
            try:
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

    def drain(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        for cf, af in batch:
            _copy(cf, af)


_relays: dict[asyncio.AbstractEventLoop, _Relay] = {}
_relays_lock = threading.Lock()


def _relay_for(loop: asyncio.AbstractEventLoop) -> _Relay:
    relay = _relays.get(loop)
    if relay is None:
        with _relays_lock:
            for old in [lp for lp in _relays if lp.is_closed()]:
                del _relays[old]
            relay = _relays.setdefault(loop, _Relay(loop))
    return relay


def settled_value(cf: Future[Any]) -> Any:
    """The value of a settled ``cf``, or raise what awaiting it would raise."""
    if cf.cancelled():
        raise TaskCancelledError("the task was cancelled")
    exc = cf.exception()
    if exc is not None:
        # The same object is raised on every call: without the reset, each
        # raise would lengthen its traceback (asyncio keeps the first one).
        raise _for_asyncio(exc).with_traceback(None)
    return cf.result()


def _copy(cf: Future[Any], af: asyncio.Future[Any]) -> None:
    if af.done():
        return
    if cf.cancelled():
        af.set_exception(TaskCancelledError("the task was cancelled"))
        return
    exc = cf.exception()
    if exc is not None:
        af.set_exception(_for_asyncio(exc).with_traceback(None))
    else:
        af.set_result(cf.result())


def _for_asyncio(exc: BaseException) -> BaseException:
    """``exc``, or a TaskAbortedError standing in for it where asyncio would
    misread it: a Task re-raises ``SystemExit``/``KeyboardInterrupt`` out of
    ``run_forever`` (stopping the caller's program), and ``CancelledError``
    would make the awaiting task look cancelled."""
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration):
        return exc  # StopIteration: asyncio futures refuse it (TypeError), so it too
    cls = type(exc)
    name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        text = str(exc)
    except BaseException:  # user code: a hostile __str__ must not stall the relay
        text = ""
    err = TaskAbortedError(f"the task raised {name}" + (f": {text}" if text else ""), name)
    err.__cause__ = exc
    return err


def to_asyncio(cf: Future[Any]) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    af: asyncio.Future[Any] = loop.create_future()
    if cf.done():
        _copy(cf, af)
        return af
    relay = _relay_for(loop)
    cf.add_done_callback(lambda f: relay.push(f, af))
    return af
