"""Awaiting ``concurrent.futures.Future`` objects without linking cancellation.

``asyncio.wrap_future`` cancels the source future when the awaiting side is
cancelled; here a timed-out ``await queue.result(...)`` must leave the task
alone, so the bridge is one-way.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from .errors import TaskCancelledError


def to_asyncio(cf: Future[Any]) -> asyncio.Future[Any]:
    loop = asyncio.get_running_loop()
    af: asyncio.Future[Any] = loop.create_future()

    def copy(_: object = None) -> None:
        if af.done():
            return
        if cf.cancelled():
            af.set_exception(TaskCancelledError("the task was cancelled"))
            return
        exc = cf.exception()
        if exc is not None:
            af.set_exception(exc)
        else:
            af.set_result(cf.result())

    def done(_: Future[Any]) -> None:
        try:
            loop.call_soon_threadsafe(copy)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    if cf.done():
        copy()
    else:
        cf.add_done_callback(done)
    return af
