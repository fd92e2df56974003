"""``ProcQueue``: the synchronous front door, a ``concurrent.futures.Executor``."""

from __future__ import annotations

import itertools
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import Any, TypeVar

from ._coordinator import Engine, _TaskFuture
from ._options import build_config, task_options
from ._policy import RetryPolicy
from ._task import TaskStatus
from .errors import InvalidArgumentError
from .stats import QueueStats

__all__ = ["ProcQueue"]

T = TypeVar("T")


def _run_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    return [fn(*args) for args in chunk]


class ProcQueue(Executor):
    """A ``ProcessPoolExecutor`` drop-in on procqueue's supervised engine.

    Same constructor, ``submit``, ``map``, ``shutdown`` and context manager as the
    standard library. Where procqueue differs on purpose:

    * a worker that crashes fails (or retries) only the task it was running,
      with :class:`~procqueue.WorkerCrashedError` (a ``BrokenProcessPool``
      subclass); the pool stays usable;
    * callables and arguments are pickled with cloudpickle, so lambdas and
      closures work, and pickling errors are raised by ``submit`` itself;
    * :meth:`submit_task` takes per-task ``priority``, ``max_retries``,
      ``retry`` and ``timeout``; the constructor takes queue-wide defaults.

    >>> with ProcQueue(max_workers=2) as pool:          # doctest: +SKIP
    ...     print(list(pool.map(abs, [-1, -2, 3])))
    [1, 2, 3]
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        start_method: str | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        prefetch: int | None = None,
        retain_finished: int = 10_000,
        forward_logs: bool = True,
        rand: Callable[[], float] | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise InvalidArgumentError("max_workers must be greater than 0")
        if mp_context is not None and start_method is None:
            start_method = mp_context.get_start_method()
        config = build_config(
            max_workers,
            start_method=start_method,
            retry=retry,
            max_retries=max_retries,
            timeout=timeout,
            prefetch=prefetch,
            retain_finished=retain_finished,
            keep_unclaimed=False,  # the caller's futures hold the results
            initializer=initializer,
            initargs=initargs,
            forward_logs=forward_logs,
            rand=rand,
        )
        self._engine = Engine(config)
        self._engine.start()
        # Dropped without shutdown(): finish the accepted work, then stop (as a
        # garbage-collected ProcessPoolExecutor does).
        weakref.finalize(self, self._engine.request_stop, cancel_pending=False, timeout=None)

    @property
    def max_workers(self) -> int:
        return self._engine.config.num_workers

    @property
    def start_method(self) -> str:
        """``fork``, ``forkserver`` or ``spawn``: how workers are started."""
        return self._engine.config.start_method

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns its future."""
        fut: _TaskFuture = _TaskFuture()
        self._engine.submit(fn, args, kwargs, future=fut)
        return fut

    def submit_task(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        priority: int = 0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Future[T]:
        """Like :meth:`submit`, with per-task options. ``priority``: higher runs
        first; ``max_retries``/``retry`` override the queue's retry policy;
        ``timeout``: seconds one attempt may run before its worker is killed.
        ``fut.task_id`` (``procqueue.task_id(fut)``) names the task for
        :meth:`get_task_status`."""
        engine = self._engine
        policy = task_options(engine.config.retry, max_retries, retry, timeout)
        fut: _TaskFuture = _TaskFuture()
        engine.submit(
            fn, args, kwargs, priority=priority, policy=policy, timeout=timeout, future=fut
        )
        return fut

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``ProcessPoolExecutor.map``: results in input order, ``timeout``
        counted from this call, ``chunksize`` items per task."""
        if chunksize < 1:
            raise InvalidArgumentError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in zip(*iterables)]
            return _results(futures, deadline, flatten=False)
        it = zip(*iterables)
        chunk_futures = []
        while chunk := list(itertools.islice(it, chunksize)):
            chunk_futures.append(self.submit(_run_chunk, fn, chunk))
        return _results(chunk_futures, deadline, flatten=True)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop taking work. ``cancel_futures`` cancels what has not started;
        ``timeout``: seconds running tasks get before their workers are killed
        (they end cancelled); ``None`` lets them finish."""
        self._engine.request_stop(cancel_pending=cancel_futures, timeout=timeout)
        if wait:
            self._engine.wait_stopped()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # Ctrl-C or SystemExit: drop queued work, kill running tasks, leave fast.
            self.shutdown(wait=True, cancel_futures=True, timeout=0)
        else:
            self.shutdown(wait=True)

    # --- procqueue extras ------------------------------------------------------------

    def get_task_status(self, task_id: int) -> TaskStatus:
        """Snapshot of one task (see :class:`~procqueue.TaskStatus`)."""
        return self._engine.status(task_id)

    def get_stats(self) -> QueueStats:
        """Snapshot of the queue; cheap, no round trip to the workers."""
        return self._engine.stats()

    def subscribe(self, listener: Callable[[TaskStatus], None]) -> Callable[[], None]:
        """Call ``listener`` with a :class:`TaskStatus` on every state change."""
        return self._engine.subscribe(listener)


def task_id(future: Future[Any]) -> int:
    """The task id behind a future returned by :class:`ProcQueue`."""
    tid = getattr(future, "_task_id", -1)
    if tid < 0:
        raise InvalidArgumentError("this future was not returned by a procqueue ProcQueue")
    return int(tid)


def _results(futures: list[Future[Any]], deadline: float | None, *, flatten: bool) -> Iterator[Any]:
    # A generator, as in CPython's Executor.map: on early exit (an error, a
    # timeout, the caller dropping the iterator) the rest is cancelled. No local
    # keeps a yielded result (or its future) alive: the caller may drop it.
    futures.reverse()
    try:
        while futures:
            if deadline is None:
                timeout = None
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0 and not futures[-1].done():
                    raise FuturesTimeoutError()
                timeout = max(0.0, timeout)
            if flatten:
                chunk = futures.pop().result(timeout)
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
            else:
                yield futures.pop().result(timeout)
    finally:
        for fut in futures:
            fut.cancel()
