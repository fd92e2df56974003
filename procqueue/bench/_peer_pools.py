"""Adapters for the optional peers: loky, pebble, joblib and mpire (the
``bench`` extra).

Each library is imported by :func:`importlib.import_module` when its pool is
opened, so this module, like the rest of the suite, needs nothing outside the
standard library and procqueue.
"""

from __future__ import annotations

import importlib
import multiprocessing
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from ._pool import Call, Pool, TaskFn, deadline_after, time_left
from ._stdlib_pools import ApplyAsyncPool, FuturesPool

__all__ = ["JoblibPool", "LokyPool", "MpirePool", "PebblePool"]


class LokyPool(FuturesPool):
    """loky's ``ProcessPoolExecutor`` (cloudpickle, like procqueue)."""

    pickles_main_by_value = True

    def __init__(self, workers: int, start_method: str) -> None:
        loky = importlib.import_module("loky")
        context_mod = importlib.import_module("loky.backend.context")
        with warnings.catch_warnings():
            # loky warns that it does not support "fork" (it is not POSIX-safe to
            # fork a threaded process); we ask for it anyway, to run every pool on
            # the same start method, and report what loky actually used.
            warnings.simplefilter("ignore", UserWarning)
            ctx = context_mod.get_context(start_method)
        executor = loky.ProcessPoolExecutor(max_workers=workers, context=ctx)
        super().__init__(executor, ctx.get_start_method())

    def close(self, *, broken: bool = False) -> None:
        self.executor.shutdown(wait=True, kill_workers=broken)


class PebblePool(FuturesPool):
    """pebble's ``ProcessPool``: ``schedule`` for one task, ``map(...).result()``."""

    def __init__(self, workers: int, start_method: str) -> None:
        pebble = importlib.import_module("pebble")
        ctx = multiprocessing.get_context(start_method)
        pool = pebble.ProcessPool(max_workers=workers, context=ctx)
        super().__init__(pool, ctx.get_start_method())
        self.pool = pool

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        schedule = self.pool.schedule
        futures = [schedule(fn, args) for args in calls]
        deadline = deadline_after(timeout)
        return [f.result(time_left(deadline)) for f in futures]

    def map(self, fn: TaskFn, items: Sequence[Any], chunksize: int, timeout: float) -> list[Any]:
        return list(self.pool.map(fn, items, chunksize=chunksize).result())

    def round_trip(self, fn: TaskFn, args: Call, timeout: float) -> Any:
        return self.pool.schedule(fn, args).result(timeout)

    def submit_many(self, fn: TaskFn, calls: Sequence[Call]) -> list[Any]:
        schedule = self.pool.schedule
        return [schedule(fn, args) for args in calls]

    def cancel_pending(self) -> None:
        self.close(broken=True)

    def close(self, *, broken: bool = False) -> None:
        if broken:
            self.pool.stop()
        else:
            self.pool.close()
        self.pool.join()


class JoblibPool(Pool):
    """joblib's ``Parallel`` on its default loky backend. joblib has no per-task
    handle: "one by one" is ``Parallel(batch_size=1)``, map is
    ``Parallel(batch_size=chunksize)``, and :meth:`submit_many` reads a
    ``return_as="generator"`` run in order."""

    one_by_one = False
    pickles_main_by_value = True  # through loky's cloudpickle

    def __init__(self, workers: int, start_method: str) -> None:
        self.joblib = importlib.import_module("joblib")
        self.workers = workers
        # joblib's loky backend takes no start method per call: it uses loky's own
        # ("loky": fork then exec, a fresh interpreter like spawn).
        self.start_method = "loky (fork+exec; joblib's default backend)"

    def _parallel(self, batch_size: int, **kw: Any) -> Any:
        return self.joblib.Parallel(n_jobs=self.workers, batch_size=batch_size, **kw)

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        delayed = self.joblib.delayed(fn)
        return list(self._parallel(1, timeout=timeout)(delayed(*a) for a in calls))

    def map(self, fn: TaskFn, items: Sequence[Any], chunksize: int, timeout: float) -> list[Any]:
        delayed = self.joblib.delayed(fn)
        return list(self._parallel(chunksize, timeout=timeout)(delayed(x) for x in items))

    def round_trip(self, fn: TaskFn, args: Call, timeout: float) -> Any:
        return self._parallel(1, timeout=timeout)([self.joblib.delayed(fn)(*args)])[0]

    def submit_many(self, fn: TaskFn, calls: Sequence[Call]) -> list[Any]:
        delayed = self.joblib.delayed(fn)
        gen = self._parallel(1, return_as="generator")(delayed(*a) for a in calls)
        stream = _InOrder(gen)
        return [(stream, i) for i in range(len(calls))]

    def wait(self, handle: Any, timeout: float) -> Any:
        stream, index = handle
        return stream.get(index)

    def close(self, *, broken: bool = False) -> None:
        # Shut joblib's reusable loky executor down, so the next pool starts from
        # nothing like every other contestant (joblib would otherwise keep it).
        # terminate() (joblib's executor) also deletes the memmapping folders of
        # the calls it ran; a bare shutdown() would leave them to the resource
        # tracker, which warns about them at exit.
        mod = importlib.import_module("joblib.externals.loky.reusable_executor")
        executor = getattr(mod, "_executor", None)
        if executor is None:
            return
        if hasattr(executor, "terminate"):
            executor.terminate(kill_workers=broken)
        else:
            executor.shutdown(wait=True, kill_workers=broken)


class _InOrder:
    """Results of a generator, read in order; an error repeats for every later one."""

    def __init__(self, gen: Iterable[Any]) -> None:
        self._it = iter(gen)
        self._seen: list[Any] = []
        self._error: BaseException | None = None

    def get(self, index: int) -> Any:
        while len(self._seen) <= index:
            if self._error is not None:
                raise self._error
            try:
                self._seen.append(next(self._it))
            except StopIteration:
                self._error = RuntimeError("generator ended early")
            except Exception as e:
                self._error = e
        return self._seen[index]


class MpirePool(ApplyAsyncPool):
    """mpire's ``WorkerPool`` (``keep_alive``): ``apply_async`` one by one,
    ``map(chunk_size=)``."""

    def __init__(self, workers: int, start_method: str) -> None:
        mpire = importlib.import_module("mpire")
        self.pool = mpire.WorkerPool(n_jobs=workers, start_method=start_method, keep_alive=True)
        self.start_method = start_method

    def map(self, fn: TaskFn, items: Sequence[Any], chunksize: int, timeout: float) -> list[Any]:
        return list(self.pool.map(fn, items, chunk_size=chunksize, task_timeout=timeout))

    def close(self, *, broken: bool = False) -> None:
        if broken:
            self.pool.terminate()
        else:
            self.pool.stop_and_join()
