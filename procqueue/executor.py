"""``ProcQueue``: the synchronous front door, a ``concurrent.futures.Executor``."""

from __future__ import annotations

import itertools
import os
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import replace
from datetime import datetime, timedelta, tzinfo
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._core.records import TaskStatus, _TaskRecord
from ._frontdoor import (
    CommonOptions,
    DeadLetterQueue,
    chunk_runner,
    close_dashboards,
    due_of,
    make_engine,
    open_dashboard,
    prepare,
    prepare_chunk,
    prepare_many,
    task_id,
    task_policy,
)
from ._policy import RetryPolicy, WorkerLimits
from ._progress import ProgressOption, Tracker, progress_factory
from ._runtime.futures import _TaskFuture
from ._schedules import Schedule, make_schedule, schedules_of
from .errors import InvalidArgumentError, OptionTypeError, QueueFullError
from .stats import QueueStats

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .dashboard import Dashboard

__all__ = ["ProcQueue", "task_id"]

T = TypeVar("T")


def _unwatched(fut: Future[Any], weight: int = 1) -> Future[Any]:
    return fut  # map without progress=


def _shown(results: Iterator[Any], tracker: Tracker | None) -> Iterator[Any]:
    """Show ``map``'s bar from now on (the tasks are queued and running), until
    ``results`` ends, fails, is closed, or is dropped without being started."""
    if tracker is not None:
        tracker.open()
        weakref.finalize(results, tracker.close)
    return results


def _run_chunk(fn: Callable[..., T], chunk: list[tuple[Any, ...]]) -> list[T]:
    return [fn(*args) for args in chunk]


def _run_chunk1(fn: Callable[[Any], T], items: list[Any]) -> list[T]:
    # map over one iterable: the items themselves cross, not 1-tuples of them
    # (a third of the pickle, as multiprocessing.Pool's mapstar does).
    return [fn(x) for x in items]


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

    def __new__(cls, max_workers: int | None = None, *args: Any, **options: Any) -> ProcQueue:
        # ``broker=`` picks the Redis client (procqueue.redis): same Executor
        # API, no local workers.
        if cls is ProcQueue and options.get("broker") is not None:
            from .redis._client import RemoteProcQueue

            return super().__new__(RemoteProcQueue)
        return super().__new__(cls)

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        **options: Unpack[CommonOptions],
    ) -> None:
        """Queue-wide ``options`` (``start_method``, ``retry``, ``max_retries``,
        ``timeout``, ``limits``, ``max_pending``, ``dead_letters``, ``prefetch``,
        ``retain_finished``, ``forward_logs``, ``rand``): see the README's
        configuration table."""
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif (
            isinstance(max_workers, int) and not isinstance(max_workers, bool) and max_workers <= 0
        ):
            raise InvalidArgumentError("max_workers must be greater than 0")
        extra: dict[str, Any] = dict(options)
        if "keep_unclaimed" in extra:  # TaskQueue's: here the futures hold the results
            raise OptionTypeError(
                "ProcQueue() got an unexpected keyword argument 'keep_unclaimed' "
                "(its futures hold the results; retain_finished bounds the statuses)"
            )
        dashboard = extra.pop("dashboard", None)
        if mp_context is not None and extra.get("start_method") is None:
            extra["start_method"] = mp_context.get_start_method()
        if max_tasks_per_child is not None:
            # The stdlib keyword; any start method works here.
            limits = extra.get("limits") or WorkerLimits()
            extra["limits"] = replace(limits, max_tasks_per_child=max_tasks_per_child)
        extra.update(initializer=initializer, initargs=initargs, keep_unclaimed=False)
        # keep_unclaimed=False: the caller's futures hold the results.
        self._engine = make_engine("ProcQueue", max_workers, extra)
        self._engine.start()
        # Dropped without shutdown(): finish the accepted work, then stop (as a
        # garbage-collected ProcessPoolExecutor does).
        weakref.finalize(self, self._engine.request_stop, cancel_pending=False, timeout=None)
        #: The dead letter queue: tasks that failed for good, with their history.
        self.dlq = DeadLetterQueue(self._engine)
        #: The dashboard ``dashboard=`` started (``.url``), else ``None``.
        self.dashboard: Dashboard | None = None
        if dashboard is not None and dashboard is not False:
            try:
                self.dashboard = open_dashboard(self._engine, dashboard)
            except BaseException:
                self.shutdown(wait=True, cancel_futures=True)
                raise

    @property
    def max_workers(self) -> int:
        return self._engine.config.num_workers

    @property
    def start_method(self) -> str:
        """``fork``, ``forkserver`` or ``spawn``: how workers are started."""
        return str(self._engine.config.start_method)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns its future. With
        ``max_pending`` set, blocks while that many tasks are unfinished."""
        fut = _TaskFuture()
        self._engine.enqueue(prepare(self._engine, fn, args, kwargs, future=fut))
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
        block_timeout: float | None = None,
        delay: float | None = None,
        eta: datetime | None = None,
        after: Iterable[Future[Any] | int] | None = None,
        trigger: str = "all_success",
        limit_key: str | None = None,
        **kwargs: Any,
    ) -> Future[T]:
        """Like :meth:`submit`, with per-task options. ``priority``: higher runs
        first; ``max_retries``/``retry`` override the queue's retry policy;
        ``timeout``: seconds one attempt may run before its worker is killed;
        ``block_timeout``: with ``max_pending``, seconds to wait for room before
        ``QueueFullError``. ``delay`` (seconds) or ``eta`` (a timezone-aware
        datetime): the task is ``scheduled`` until then, blocking nobody.
        ``after``: futures (of this pool) or task ids to wait for; a future of
        this pool among the arguments (top level, or in a list, tuple or dict)
        passes its result and implies it. ``trigger``: ``"all_success"`` or
        ``"all_done"`` (see ``TaskQueue.submit``). ``limit_key``: the
        ``key_limits`` entry (or pattern) that throttles it.
        ``procqueue.task_id(fut)`` names the task for :meth:`get_task_status`."""
        engine = self._engine
        policy = task_policy(engine.config.retry, max_retries, retry, timeout)
        due = due_of(delay, eta)
        fut = _TaskFuture()
        rec = prepare(
            engine, fn, args, kwargs, priority, policy, timeout, fut, due, after, trigger, limit_key
        )
        engine.enqueue(rec, wait=block_timeout)
        return fut

    def schedule(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        cron: str | None = None,
        every: float | timedelta | None = None,
        name: str | None = None,
        tz: str | tzinfo | None = None,
        misfire_grace: float | None = 60.0,
        catchup: str = "latest",
        overlap: str = "skip",
        priority: int = 0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        limit_key: str | None = None,
        **kwargs: Any,
    ) -> Schedule:
        """Run ``fn(*args, **kwargs)`` on a cron expression or every so many
        seconds; returns its :class:`~procqueue.Schedule` (see
        ``TaskQueue.schedule`` for every option). Each run's future is
        ``pool.future(task_id)`` for an id in ``schedule.task_ids``."""
        return make_schedule(
            self._engine,
            fn,
            args,
            kwargs,
            cron=cron,
            every=every,
            name=name,
            tz=tz,
            misfire_grace=misfire_grace,
            catchup=catchup,
            overlap=overlap,
            priority=priority,
            max_retries=max_retries,
            retry=retry,
            timeout=timeout,
            limit_key=limit_key,
        )

    def schedules(self) -> list[Schedule]:
        """The pool's schedules (not cancelled), in the order they were added."""
        return schedules_of(self._engine)

    def future(self, task_id: int) -> Future[Any]:
        """A future for any task of this queue by id (e.g. one requeued from the
        dead letter queue)."""
        return self._engine.future_for(task_id)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: ProgressOption = None,
    ) -> Iterator[T]:
        """Like ``ProcessPoolExecutor.map``: results in input order, ``timeout``
        counted from this call, ``chunksize`` items per task.

        ``buffersize`` (as in Python 3.14): submit lazily, keeping at most that
        many tasks ahead of the results consumed, so a huge or infinite
        iterable streams in bounded memory. With ``max_pending`` set and no
        ``buffersize``, ``map`` streams with ``buffersize=max_pending``.

        ``progress``: a bar (on stderr) that advances as items *finish*, with
        rate and ETA: ``True`` (tqdm, else rich), ``"tqdm"`` or ``"rich"``
        (the ``progress`` extra; ``MissingExtraError`` here if absent), or a
        callable ``fn(done, total)`` called from procqueue's coordinator thread
        (keep it quick; ``total`` is ``None`` while a streaming map has not
        drained its input). The bar shows once the tasks are queued and
        closes when the iteration ends, fails or is abandoned.
        """
        if chunksize < 1:
            raise InvalidArgumentError("chunksize must be >= 1.")
        if buffersize is not None:  # the errors Python 3.14's map raises
            if not isinstance(buffersize, int):
                raise OptionTypeError("buffersize must be None or an int >= 1.")
            if buffersize < 1:
                raise InvalidArgumentError("buffersize must be None or an int >= 1.")
        factory = progress_factory(progress)
        tracker = None if factory is None else Tracker(factory, getattr(fn, "__name__", "map"))
        if tracker is not None:  # the tasks' own report_progress, next to the bar
            tracker.on_close(self._engine.watch_progress(tracker.note_report))
        try:
            watch = _unwatched if tracker is None else tracker.watch
            deadline = None if timeout is None else time.monotonic() + timeout
            calls: Iterator[tuple[Any, ...]] = zip(*iterables)
            single = iter(iterables[0]) if len(iterables) == 1 and chunksize > 1 else None
            chunk_call = (
                chunk_runner(self._engine, _run_chunk1 if single is not None else _run_chunk, fn)
                if chunksize > 1
                else None
            )

            engine = self._engine
            #: A task prepared but not admitted yet (no room under max_pending).
            stash: list[tuple[_TaskRecord, _TaskFuture, int]] = []

            def make_next() -> tuple[_TaskRecord, _TaskFuture, int] | None:
                fut = _TaskFuture()
                if chunksize == 1:
                    args = next(calls, None)
                    if args is not None:
                        return prepare(engine, fn, args, {}, future=fut), fut, 1
                    return None
                items = list(itertools.islice(single if single is not None else calls, chunksize))
                if not items:
                    return None
                assert chunk_call is not None
                return prepare_chunk(engine, chunk_call, items, fut), fut, len(items)

            def submit_next(wait: float | None = None) -> Future[Any] | None:
                """The next task, admitted; ``None`` once the input is spent.
                ``wait``: seconds to wait for room under ``max_pending``
                (``None``: as long as it takes), then ``QueueFullError``."""
                made = stash.pop() if stash else make_next()
                if made is None:
                    if tracker is not None:
                        tracker.input_done()
                    return None
                rec, fut, n = made
                try:
                    if wait is not None and wait <= 0:
                        engine.enqueue(rec, block=False)
                    else:
                        engine.enqueue(rec, wait=wait)
                except QueueFullError:
                    stash.append(made)  # tried again later, in its turn
                    raise
                return watch(fut, n)

            window = buffersize if buffersize is not None else self._engine.config.max_pending
            if window is None:
                # Eager, as the stdlib: everything is queued now. Single calls go in
                # batches of 64 (one pickling of fn, one lock round per batch);
                # chunks one by one, so workers start while the rest is pickled.
                futures: list[Future[Any]] = []
                if chunksize > 1:
                    futures = list(iter(submit_next, None))
                    results = _results(futures, deadline, flatten=True, tracker=tracker)
                    return _shown(results, tracker)
                while batch := list(itertools.islice(calls, 64)):
                    batch_futures = [_TaskFuture() for _ in batch]
                    self._engine.enqueue_many(prepare_many(self._engine, fn, batch, batch_futures))
                    futures += batch_futures
                    if tracker is not None:
                        for f in batch_futures:
                            tracker.watch(f)
                if tracker is not None:
                    tracker.input_done()
                return _shown(_results(futures, deadline, flatten=False, tracker=tracker), tracker)
            # Streaming: the window is filled as far as there is room now; the
            # rest, and the refills, come as results are consumed, within
            # the timeout (a full queue must not hold map() itself up).
            futures = []
            while len(futures) < window:
                try:
                    fut = submit_next(0)
                except QueueFullError:
                    break
                if fut is None:
                    break
                futures.append(fut)
            results = _results(
                futures,
                deadline,
                flatten=chunksize > 1,
                refill=submit_next,
                size=window,
                tracker=tracker,
            )
            return _shown(results, tracker)
        except BaseException:
            # Nothing was handed back to close it: its watcher would stay on
            # the engine for the queue's life (one more per failed map).
            if tracker is not None:
                tracker.close()
            raise

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop taking work. ``cancel_futures`` cancels what has not started;
        ``timeout``: seconds running tasks get before their workers are killed
        (they end cancelled); ``None`` lets them finish."""
        self._engine.request_stop(cancel_pending=cancel_futures, timeout=timeout)
        if wait:
            self._engine.wait_stopped()
            close_dashboards(self._engine)

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

    def serve_dashboard(
        self,
        port: int | None = None,
        *,
        host: str | None = None,
        token: str | None = None,
        read_only: bool | None = None,
        show_args: bool | None = None,
    ) -> Dashboard:
        """Serve the live web dashboard (and ``/metrics``) for this pool; returns
        its handle (``.url``, ``.close()``). Defaults: port 8765 (0 picks a free
        one), host ``127.0.0.1`` (any other host needs a ``token``), actions
        allowed, arguments shown. It closes when the pool shuts down. See the
        README's "Dashboard and metrics"."""
        return open_dashboard(
            self._engine,
            True,
            port=port,
            host=host,
            token=token,
            read_only=read_only,
            show_args=show_args,
        )


def _results(
    futures: list[Future[Any]],
    deadline: float | None,
    *,
    flatten: bool,
    refill: Callable[[float | None], Future[Any] | None] | None = None,
    size: int = 0,
    tracker: Tracker | None = None,
) -> Iterator[Any]:
    # A generator, as in CPython's Executor.map: on early exit (an error, a
    # timeout, the caller dropping the iterator) the rest is cancelled. No local
    # keeps a yielded result (or its future) alive: the caller may drop it.
    # ``refill(wait)`` (streaming): the window is topped up to ``size`` tasks
    # as far as there is room under max_pending, without waiting for it while
    # a task of ours is pending (its result comes first: it frees room too);
    # with none pending, it waits for room, but not past the deadline.
    # ``tracker``: the progress bar, closed with this generator.
    window = deque(futures)
    futures.clear()
    more = refill is not None
    try:
        while window or more:
            if deadline is None:
                timeout = None
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0 and not (window and window[0].done()):
                    raise FuturesTimeoutError()
                timeout = max(0.0, timeout)
            while more and len(window) < size:
                assert refill is not None
                try:
                    nxt = refill(0.0 if window else timeout)
                except QueueFullError:
                    if not window:  # waited for room until the deadline
                        raise FuturesTimeoutError() from None
                    break
                if nxt is None:
                    more = False
                else:
                    window.append(nxt)
            if not window:
                continue
            # In a list, not a local: no local may hold a result while it is
            # yielded (the caller may drop it; test_free_reference).
            got = [_result_or_cancel(window.popleft(), timeout)]
            if tracker is not None and not window and not more:
                # The last result is in hand, so every item has ended; the
                # caller may stop pulling after it (zip, islice) without the
                # generator ever running past its end.
                tracker.close(complete=True)
            if flatten:
                chunk = got.pop()
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
            else:
                yield got.pop()
        if tracker is not None:
            # Streaming: the last result may come before refill() says the
            # input has run out; the loop's normal end says it too.
            tracker.close(complete=True)
    finally:
        if tracker is not None:
            tracker.close()  # first: the cancellations below are not progress
        for fut in window:
            fut.cancel()


def _result_or_cancel(fut: Future[Any], timeout: float | None) -> Any:
    """The future's result; on a timeout it is cancelled too, as the rest of
    the window is (CPython's ``_result_or_cancel`` in ``Executor.map``): the
    call the caller gave up on does not run late (nor on a Ctrl-C). Not on
    success: ``cancel()`` of a settled future would make the Condition it
    never needed."""
    try:
        return fut.result(timeout)
    except BaseException:
        fut.cancel()
        raise
