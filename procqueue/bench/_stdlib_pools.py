"""Adapters for the standard library: the in-process references (a plain loop,
asyncio), ``concurrent.futures`` executors, bare processes (the CPU ceiling) and
``multiprocessing.Pool``.

:class:`FuturesPool` and :class:`ApplyAsyncPool` are also the shapes that
procqueue's and the optional peers' adapters build on.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from . import _tasks
from ._pool import Call, Pool, TaskFn, Unsupported, deadline_after, time_left

__all__ = [
    "ApplyAsyncPool",
    "AsyncioPool",
    "FuturesPool",
    "MpPool",
    "SequentialPool",
    "StaticSplitPool",
]


#: Seconds ``multiprocessing.Pool.terminate`` gets before the pool is unwedged.
_TERMINATE_GRACE_S = 2.0


# --- in-process references -----------------------------------------------------------


class SequentialPool(Pool):
    """A plain loop in this process: the reference for efficiency."""

    start_method = "n/a (in-process loop)"
    is_process_pool = False

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        return [fn(*args) for args in calls]

    def map(self, fn: TaskFn, items: Sequence[Any], chunksize: int, timeout: float) -> list[Any]:
        return list(map(fn, items))

    def submit_many(self, fn: TaskFn, calls: Sequence[Call]) -> list[Any]:
        return [fn(*args) for args in calls]

    def wait(self, handle: Any, timeout: float) -> Any:
        return handle


class AsyncioPool(Pool):
    """Coroutines on a private event loop, at most ``concurrency`` at a time. Only
    tasks with an async twin (the I/O workload) can run here."""

    is_process_pool = False
    _TWINS: dict[TaskFn, Callable[..., Coroutine[Any, Any, Any]]] = {
        _tasks.io_task: _tasks.io_task_async,
    }

    def __init__(self, concurrency: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.concurrency = concurrency
        self.start_method = f"n/a (event loop, {concurrency} at a time)"

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        twin = self._TWINS.get(fn)
        if twin is None:
            raise Unsupported("asyncio runs only the I/O workload")

        async def run() -> list[Any]:
            sem = asyncio.Semaphore(self.concurrency)

            async def one(args: Call) -> Any:
                async with sem:
                    return await twin(*args)

            return list(await asyncio.gather(*(one(a) for a in calls)))

        return self.loop.run_until_complete(asyncio.wait_for(run(), timeout))

    def close(self, *, broken: bool = False) -> None:
        self.loop.close()


# --- concurrent.futures executors (threads, ProcessPoolExecutor, ProcQueue, loky) ----


class FuturesPool(Pool):
    """Anything with ``submit`` returning a ``concurrent.futures.Future`` and a
    ``map(fn, items, chunksize=)``."""

    def __init__(self, executor: Any, start_method: str, *, in_process: bool = False) -> None:
        self.executor = executor
        self.start_method = start_method
        self.is_process_pool = not in_process

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        submit = self.executor.submit
        futures = [submit(fn, *args) for args in calls]
        deadline = deadline_after(timeout)
        return [f.result(time_left(deadline)) for f in futures]

    def map(self, fn: TaskFn, items: Sequence[Any], chunksize: int, timeout: float) -> list[Any]:
        if chunksize > 1 and not self.is_process_pool:
            # Not the same work: a row at another chunk size, and at a sized-by-
            # time map's million items, minutes of one future per item.
            raise Unsupported("ThreadPoolExecutor.map ignores chunksize (one future per item)")
        return list(self.executor.map(fn, items, timeout=timeout, chunksize=chunksize))

    def round_trip(self, fn: TaskFn, args: Call, timeout: float) -> Any:
        return self.executor.submit(fn, *args).result(timeout)

    def submit_many(self, fn: TaskFn, calls: Sequence[Call]) -> list[Any]:
        submit = self.executor.submit
        return [submit(fn, *args) for args in calls]

    def wait(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout)

    def cancel_pending(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def close(self, *, broken: bool = False) -> None:
        self.executor.shutdown(wait=True, cancel_futures=broken)


# --- bare processes: the CPU ceiling -------------------------------------------------


class StaticSplitPool(Pool):
    """The machine's ceiling for CPU-bound work: ``workers`` bare processes, each
    sent one contiguous slice of the calls in one message, answering with one
    message. No per-task traffic, no scheduling: what no pool can beat here
    (when it falls short of 100 %, the cores are not fully ours)."""

    def __init__(self, workers: int, start_method: str) -> None:
        ctx: Any = multiprocessing.get_context(start_method)  # typeshed's BaseContext lacks Process
        self.start_method = ctx.get_start_method()
        self.conns = []
        self.procs = []
        for _ in range(workers):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_tasks.serve_slices, args=(theirs,), daemon=True)
            proc.start()
            theirs.close()
            self.conns.append(mine)
            self.procs.append(proc)

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        n, w = len(calls), len(self.conns)
        bounds = [n * i // w for i in range(w + 1)]
        for i, conn in enumerate(self.conns):
            conn.send((fn, list(calls[bounds[i] : bounds[i + 1]])))
        deadline = deadline_after(timeout)
        out: list[Any] = []
        for conn in self.conns:
            if not conn.poll(time_left(deadline)):
                raise TimeoutError("a slice did not come back in time")
            out.extend(conn.recv())
        return out

    def close(self, *, broken: bool = False) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()


# --- apply_async handles (multiprocessing.Pool, mpire) -------------------------------


class ApplyAsyncPool(Pool):
    """Pools with ``apply_async(fn, args).get(timeout)`` handles
    (``multiprocessing.Pool`` and mpire share this shape)."""

    pool: Any

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        apply_async = self.pool.apply_async
        handles = [apply_async(fn, args) for args in calls]
        deadline = deadline_after(timeout)
        return [h.get(time_left(deadline)) for h in handles]

    def round_trip(self, fn: TaskFn, args: Call, timeout: float) -> Any:
        return self.pool.apply_async(fn, args).get(timeout)

    def submit_many(self, fn: TaskFn, calls: Sequence[Call]) -> list[Any]:
        apply_async = self.pool.apply_async
        return [apply_async(fn, args) for args in calls]

    def wait(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout)


class MpPool(ApplyAsyncPool):
    """``multiprocessing.Pool``: ``apply_async`` one by one, ``imap`` for map."""

    def __init__(self, workers: int, start_method: str) -> None:
        ctx = multiprocessing.get_context(start_method)
        self.pool = ctx.Pool(processes=workers)
        self.start_method = ctx.get_start_method()

    def map(self, fn: TaskFn, items: Sequence[Any], chunksize: int, timeout: float) -> list[Any]:
        it = self.pool.imap(fn, items, chunksize)
        if chunksize > 1:
            # imap then returns a plain generator over the chunks: no timeout.
            return list(it)
        deadline = deadline_after(timeout)
        return [it.next(time_left(deadline)) for _ in range(len(items))]

    def close(self, *, broken: bool = False) -> None:
        if not broken:
            self.pool.close()
            self.pool.join()
            return
        # join() after close() never returns once a task was lost with its worker
        # (its result never comes), so a broken pool is terminated instead. And
        # terminate() itself can block for ever: it takes the task queue's read
        # lock, and a worker SIGKILLed while it held that lock (an idle worker
        # holds it while it waits for a task) never gives it back.
        t = threading.Thread(target=self.pool.terminate, name="bench-mp-terminate", daemon=True)
        t.start()
        t.join(_TERMINATE_GRACE_S)
        if t.is_alive():
            self._unwedge()
            t.join(2 * _TERMINATE_GRACE_S)
        if t.is_alive():
            raise TimeoutError("multiprocessing.Pool.terminate() hung")
        self.pool.join()

    def _unwedge(self) -> None:
        """Kill every worker, then release the queue locks that a dead one may
        hold: the task queue's read lock (an idle worker holds it while it waits)
        and the result queue's write lock (held while a result is sent). The
        benchmark must go on, so it reaches into the pool here."""
        procs = list(getattr(self.pool, "_pool", []))
        for p in procs:
            p.kill()
        for p in procs:
            p.join(5)
        for queue, name in (("_inqueue", "_rlock"), ("_outqueue", "_wlock")):
            lock = getattr(getattr(self.pool, queue, None), name, None)
            if lock is None:
                continue
            try:
                lock.release()
            except ValueError:  # it was not held
                pass
