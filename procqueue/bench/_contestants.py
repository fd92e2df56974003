"""The contestants: one adapter per pool, each speaking that library's own API.

Every adapter is a :class:`Pool`. The hot paths (:meth:`Pool.run_all`,
:meth:`Pool.map`, :meth:`Pool.round_trip`) call the library directly, with no
wrapper object per task, so a contestant's figure is its own overhead and not
ours. The handle-level methods (:meth:`Pool.submit_many`, :meth:`Pool.wait`)
serve the workloads that must act between submission and collection (the
memory probe, the worker kill).

A method a library has no counterpart for raises :class:`Unsupported`; the
report shows ``n/a`` there. Optional peers (loky, joblib, pebble, mpire) are
imported by :func:`importlib.import_module` when their pool is opened, so this
module needs nothing outside the standard library and procqueue.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import multiprocessing
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from procqueue import ProcQueue, TaskQueue, task_id

from . import _tasks

Call = tuple[Any, ...]
TaskFn = Callable[..., Any]

__all__ = [
    "CONTESTANTS",
    "Contestant",
    "Pool",
    "Unsupported",
    "contestant_table",
]


#: Seconds ``multiprocessing.Pool.terminate`` gets before the pool is unwedged.
_TERMINATE_GRACE_S = 2.0


class Unsupported(Exception):
    """The library has no API for this workload (reported as ``n/a``, not FAIL)."""


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _deadline(timeout: float) -> float:
    return time.monotonic() + timeout


class Pool:
    """One open pool of one contestant.

    ``start_method`` is what the pool really uses (read back from it where the
    library tells), not what was asked for.
    """

    start_method = "?"
    #: Whether the pool runs tasks in other processes (warm-up waits for each).
    is_process_pool = True
    #: Whether ``run_all`` really submits one call at a time, a handle each.
    one_by_one = True

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        """Submit every call one by one (a handle each), then collect in order."""
        handles = self.submit_many(fn, calls)
        deadline = _deadline(timeout)
        return [self.wait(h, _remaining(deadline)) for h in handles]

    def map(self, fn: TaskFn, items: Sequence[Any], chunksize: int, timeout: float) -> list[Any]:
        """The library's own ``map`` over one-argument calls, with ``chunksize``."""
        raise Unsupported("no map")

    def round_trip(self, fn: TaskFn, args: Call, timeout: float) -> Any:
        """Submit one call and wait for its result."""
        return self.wait(self.submit_many(fn, [args])[0], timeout)

    def submit_many(self, fn: TaskFn, calls: Sequence[Call]) -> list[Any]:
        """Submit every call; return the library's raw handles (futures, ids)."""
        raise Unsupported("no per-task handle")

    def wait(self, handle: Any, timeout: float) -> Any:
        """The result behind one handle from :meth:`submit_many`."""
        raise Unsupported("no per-task handle")

    def attempts(self, handle: Any) -> int | None:
        """Attempts the task behind ``handle`` took (procqueue only)."""
        return None

    def restarts(self) -> int | None:
        """Worker replacements so far (procqueue only: ``get_stats().workers``)."""
        return None

    def cancel_pending(self) -> None:
        """Drop queued work and stop (the memory probe ends this way)."""
        self.close(broken=True)

    def close(self, *, broken: bool = False) -> None:
        """Shut the pool down, waiting for its workers. ``broken``: work may be
        lost or the pool may be wedged, so terminate instead of draining."""


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
        deadline = _deadline(timeout)
        return [f.result(_remaining(deadline)) for f in futures]

    def map(self, fn: TaskFn, items: Sequence[Any], chunksize: int, timeout: float) -> list[Any]:
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


class ProcQueuePool(FuturesPool):
    """procqueue's ``concurrent.futures`` front door."""

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


class LokyPool(FuturesPool):
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
        deadline = _deadline(timeout)
        return [f.result(_remaining(deadline)) for f in futures]

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
        deadline = _deadline(timeout)
        out: list[Any] = []
        for conn in self.conns:
            if not conn.poll(_remaining(deadline)):
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


# --- the rest ------------------------------------------------------------------------


class _ApplyAsyncPool(Pool):
    """Pools with ``apply_async(fn, args).get(timeout)`` handles
    (``multiprocessing.Pool`` and mpire share this shape)."""

    pool: Any

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        apply_async = self.pool.apply_async
        handles = [apply_async(fn, args) for args in calls]
        deadline = _deadline(timeout)
        return [h.get(_remaining(deadline)) for h in handles]

    def round_trip(self, fn: TaskFn, args: Call, timeout: float) -> Any:
        return self.pool.apply_async(fn, args).get(timeout)

    def submit_many(self, fn: TaskFn, calls: Sequence[Call]) -> list[Any]:
        apply_async = self.pool.apply_async
        return [apply_async(fn, args) for args in calls]

    def wait(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout)


class MpPool(_ApplyAsyncPool):
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
        deadline = _deadline(timeout)
        return [it.next(_remaining(deadline)) for _ in range(len(items))]

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


class TaskQueuePool(Pool):
    """procqueue's asyncio front door, driven from a private event loop: one
    ``run_until_complete`` per batch, as an asyncio program would await them."""

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


class JoblibPool(Pool):
    """joblib's ``Parallel`` on its default loky backend. joblib has no per-task
    handle: "one by one" is ``Parallel(batch_size=1)``, map is
    ``Parallel(batch_size=chunksize)``, and :meth:`submit_many` reads a
    ``return_as="generator"`` run in order."""

    one_by_one = False

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


class MpirePool(_ApplyAsyncPool):
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


# --- the roster ----------------------------------------------------------------------


@dataclass(frozen=True)
class Contestant:
    """One row of every table. ``key`` names it on the command line."""

    key: str
    label: str
    #: The library family: ``ppe`` rows are the baselines for ratios.
    family: str
    #: The start method asked for (``None``: the library offers no choice).
    start_method: str | None
    #: Optional library the pool needs (``None``: stdlib or procqueue).
    requires: str | None
    opener: Callable[[int, str, dict[str, Any]], Pool]
    #: Workloads this contestant is entered in (``None``: all it supports).
    only: frozenset[str] | None = None

    @property
    def is_procqueue(self) -> bool:
        return self.family in ("ProcQueue", "TaskQueue")

    @property
    def is_peer(self) -> bool:
        """A process pool other than procqueue (what "ahead of every peer" means)."""
        return self.family in ("ppe", "mp.Pool", "loky", "joblib", "pebble", "mpire")

    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def open(self, workers: int, pq_options: dict[str, Any]) -> Pool:
        return self.opener(workers, self.start_method or "", pq_options)


def _ppe(workers: int, method: str, _: dict[str, Any]) -> Pool:
    ctx = multiprocessing.get_context(method)
    return FuturesPool(ProcessPoolExecutor(max_workers=workers, mp_context=ctx), method)


def _threads(workers: int, _method: str, _: dict[str, Any]) -> Pool:
    return FuturesPool(
        ThreadPoolExecutor(max_workers=workers), f"n/a (threads, {workers})", in_process=True
    )


#: Threads and asyncio at the concurrency they are chosen for (I/O only).
IO_CONCURRENCY = 64


def contestant_table(
    main_method: str, extra_methods: Sequence[str], workers: int | None = None
) -> list[Contestant]:
    """Every contestant, in report order. Process pools that let you choose run
    on ``main_method``; ProcessPoolExecutor and ProcQueue run again on each of
    ``extra_methods`` (rows keyed ``ppe/forkserver`` and so on)."""
    m = main_method
    w_label = "N" if workers is None else str(workers)
    table = [
        Contestant("sequential", "sequential (loop)", "sequential", None, None,
                   lambda w, _m, o: SequentialPool()),
        Contestant("threads", "ThreadPoolExecutor", "threads", None, None, _threads),
        Contestant(f"threads-{IO_CONCURRENCY}", f"ThreadPoolExecutor ({IO_CONCURRENCY} threads)",
                   "threads", None, None,
                   lambda w, _m, o: _threads(IO_CONCURRENCY, _m, o), frozenset({"io"})),
        Contestant("asyncio", "asyncio", "asyncio", None, None,
                   lambda w, _m, o: AsyncioPool(w), frozenset({"io"})),
        Contestant(f"asyncio-{IO_CONCURRENCY}", f"asyncio ({IO_CONCURRENCY} at a time)",
                   "asyncio", None, None,
                   lambda w, _m, o: AsyncioPool(IO_CONCURRENCY), frozenset({"io"})),
        Contestant("ceiling", f"{w_label} bare processes, one slice each [{m}]", "ceiling", m,
                   None, lambda w, sm, o: StaticSplitPool(w, sm), frozenset({"cpu"})),
        Contestant("ppe", f"ProcessPoolExecutor [{m}]", "ppe", m, None, _ppe),
        Contestant("mp.Pool", f"multiprocessing.Pool [{m}]", "mp.Pool", m, None,
                   lambda w, sm, o: MpPool(w, sm)),
        Contestant("ProcQueue", f"procqueue ProcQueue [{m}]", "ProcQueue", m, None,
                   ProcQueuePool),
        Contestant("TaskQueue", f"procqueue TaskQueue [{m}]", "TaskQueue", m, None,
                   TaskQueuePool),
        Contestant("loky", f"loky [{m}]", "loky", m, "loky", lambda w, sm, o: LokyPool(w, sm)),
        Contestant("joblib", "joblib [loky]", "joblib", None, "joblib",
                   lambda w, sm, o: JoblibPool(w, sm)),
        Contestant("pebble", f"pebble [{m}]", "pebble", m, "pebble",
                   lambda w, sm, o: PebblePool(w, sm)),
        Contestant("mpire", f"mpire [{m}]", "mpire", m, "mpire",
                   lambda w, sm, o: MpirePool(w, sm)),
    ]  # fmt: skip
    for extra in extra_methods:
        if extra == m:
            continue
        table.append(
            Contestant(f"ppe/{extra}", f"ProcessPoolExecutor [{extra}]", "ppe", extra, None, _ppe)
        )
        table.append(
            Contestant(f"ProcQueue/{extra}", f"procqueue ProcQueue [{extra}]", "ProcQueue",
                       extra, None, ProcQueuePool)
        )  # fmt: skip
    return table


#: Keys of the contestants with the default start methods, for ``--help``.
CONTESTANTS = tuple(c.key for c in contestant_table("fork", ("forkserver",)))
