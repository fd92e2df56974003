"""Adapters for procqueue's own front doors: ``ProcQueue`` (the
``concurrent.futures`` one) and ``TaskQueue`` (the asyncio one). Unlike the
other pools they report attempts and worker restarts, which the kill workload
reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from procqueue import ProcQueue, TaskQueue, task_id

from ._pool import Call, Pool, TaskFn
from ._stdlib_pools import FuturesPool

__all__ = ["ProcQueuePool", "TaskQueuePool"]


class ProcQueuePool(FuturesPool):
    """procqueue's ``concurrent.futures`` front door."""

    pickles_main_by_value = True

    def __init__(self, workers: int, start_method: str, options: dict[str, Any]) -> None:
        pool = ProcQueue(max_workers=workers, start_method=start_method, **options)
        super().__init__(pool, pool.start_method)
        self.pool = pool

    def attempts(self, handle: Any) -> int | None:
        return self.pool.get_task_status(task_id(handle)).attempts

    def restarts(self) -> int | None:
        return sum(w.restarts for w in self.pool.get_stats().workers)

    def close(self, *, broken: bool = False) -> None:
        if broken:
            self.pool.shutdown(wait=True, cancel_futures=True, timeout=0)
        else:
            self.pool.shutdown(wait=True)


class TaskQueuePool(Pool):
    """procqueue's asyncio front door, driven from a private event loop: one
    ``run_until_complete`` per batch, as an asyncio program would await them."""

    pickles_main_by_value = True

    def __init__(self, workers: int, start_method: str, options: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.queue = TaskQueue(num_workers=workers, start_method=start_method, **options)
        self.start_method = self.queue.start_method
        self.loop.run_until_complete(self.queue.start())

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        queue = self.queue

        async def run() -> list[Any]:
            submit = queue.submit
            ids = [await submit(fn, *args) for args in calls]
            result = queue.result
            return [await result(t) for t in ids]

        return self.loop.run_until_complete(asyncio.wait_for(run(), timeout))

    def round_trip(self, fn: TaskFn, args: Call, timeout: float) -> Any:
        queue = self.queue

        async def one() -> Any:
            return await queue.result(await queue.submit(fn, *args))

        return self.loop.run_until_complete(asyncio.wait_for(one(), timeout))

    def round_trips(
        self, fn: TaskFn, calls: Sequence[Call], timeout: float
    ) -> list[tuple[Any, float]]:
        """Each trip timed inside one coroutine, as an asyncio program awaits
        one task after another: ``round_trip``'s own ``run_until_complete``
        (a Task, a ``wait_for``, the loop started and stopped) is the
        adapter's cost, not the queue's, and cost ~35 µs a trip."""
        queue = self.queue

        async def run() -> list[tuple[Any, float]]:
            submit, result, clock = queue.submit, queue.result, time.perf_counter
            trips = []
            for args in calls:
                t0 = clock()
                value = await result(await submit(fn, *args))
                trips.append((value, clock() - t0))
            return trips

        return self.loop.run_until_complete(asyncio.wait_for(run(), timeout))

    def submit_many(self, fn: TaskFn, calls: Sequence[Call]) -> list[Any]:
        queue = self.queue

        async def run() -> list[int]:
            return [await queue.submit(fn, *args) for args in calls]

        return self.loop.run_until_complete(run())

    def wait(self, handle: Any, timeout: float) -> Any:
        return self.loop.run_until_complete(self.queue.result(handle, timeout))

    def attempts(self, handle: Any) -> int | None:
        return self.queue.get_task_status(handle).attempts

    def restarts(self) -> int | None:
        return sum(w.restarts for w in self.queue.get_stats().workers)

    def cancel_pending(self) -> None:
        self.close(broken=True)

    def close(self, *, broken: bool = False) -> None:
        try:
            stop = self.queue.stop(cancel_pending=True, timeout=0) if broken else self.queue.stop()
            self.loop.run_until_complete(stop)
        finally:
            self.loop.close()
