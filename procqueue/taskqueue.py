"""``TaskQueue``: the asyncio front door."""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future
from datetime import datetime, timedelta, tzinfo
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._asyncbridge import settled_value, to_asyncio
from ._core.records import TaskStatus
from ._frontdoor import (
    DeadLetterQueue,
    TaskQueueOptions,
    close_dashboards,
    due_of,
    make_engine,
    open_dashboard,
    prepare,
    task_policy,
)
from ._policy import RetryPolicy
from ._progress import ProgressOption, SinkFactory, Tracker, progress_factory
from ._runtime.state import EngineState
from ._schedules import Schedule, make_schedule, schedules_of
from .errors import QueueFullError, QueueNotStartedError
from .stats import QueueStats

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .dashboard import Dashboard

__all__ = ["TaskQueue"]

ALL_COMPLETED = asyncio.ALL_COMPLETED
FIRST_COMPLETED = asyncio.FIRST_COMPLETED
FIRST_EXCEPTION = asyncio.FIRST_EXCEPTION


class TaskQueue:
    """An asyncio priority task queue running callables on supervised processes.

    >>> async def main():                                   # doctest: +SKIP
    ...     async with TaskQueue(num_workers=4) as queue:
    ...         task_id = await queue.submit(pow, 2, 10, priority=10, max_retries=3)
    ...         return await queue.result(task_id)

    ``submit`` keeps the keyword names ``priority``, ``max_retries``, ``retry``,
    ``timeout``, ``delay``, ``eta``, ``after``, ``trigger`` and ``limit_key``
    for itself; every other keyword goes to the callable. To pass one of those
    nine to your function, bind it with ``functools.partial``.
    """

    def __new__(cls, num_workers: int | None = None, **options: Any) -> TaskQueue:
        # ``broker=`` picks the Redis client front door (procqueue.redis): same
        # asyncio API, no local workers.
        if cls is TaskQueue and options.get("broker") is not None:
            from .redis._client import RemoteTaskQueue

            return super().__new__(RemoteTaskQueue)
        return super().__new__(cls)

    def __init__(self, num_workers: int | None = None, **options: Unpack[TaskQueueOptions]) -> None:
        """Queue-wide ``options`` (``start_method``, ``retry``, ``max_retries``,
        ``timeout``, ``prefetch``, ``limits``, ``max_pending``, ``dead_letters``,
        ``retain_finished``, ``keep_unclaimed``, ``initializer``, ``initargs``,
        ``forward_logs``, ``rand``): see the README's configuration table."""
        workers = os.cpu_count() or 1 if num_workers is None else num_workers
        opts: dict[str, Any] = dict(options)
        # Served from start() to stop() (``dashboard=``: a port, a dict, options).
        self._dashboard_spec = opts.pop("dashboard", None)
        #: The dashboard ``dashboard=`` started with the queue (``.url``), else ``None``.
        self.dashboard: Dashboard | None = None
        self._engine = make_engine("TaskQueue", workers, opts)
        # Dropped without stop(): finish the accepted work, then stop.
        weakref.finalize(self, self._engine.request_stop, cancel_pending=False, timeout=None)
        #: The dead letter queue: tasks that failed for good, with their history.
        self.dlq = DeadLetterQueue(self._engine)

    @property
    def num_workers(self) -> int:
        return self._engine.config.num_workers

    @property
    def start_method(self) -> str:
        """``fork``, ``forkserver`` or ``spawn``: how workers are started."""
        return str(self._engine.config.start_method)

    async def start(self) -> None:
        """Start the coordinator. Workers start on demand, one per waiting task
        up to ``num_workers``, and boot in the background; tasks submitted
        meanwhile wait in the heap."""
        self._engine.start()
        spec = self._dashboard_spec
        if spec is not None and spec is not False:
            try:
                self.dashboard = open_dashboard(self._engine, spec)
            except BaseException:
                await self.stop(cancel_pending=True, timeout=0)
                raise

    async def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        priority: int = 0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        eta: datetime | None = None,
        after: Iterable[int] | None = None,
        trigger: str = "all_success",
        limit_key: str | None = None,
        **kwargs: Any,
    ) -> int:
        """Queue ``fn(*args, **kwargs)``; returns the task id.

        ``priority``: higher runs first, FIFO among equals. ``max_retries``:
        retries after the first attempt (queue default otherwise). ``retry``: a
        whole :class:`RetryPolicy`. ``timeout``: seconds per attempt.
        ``delay`` (seconds) or ``eta`` (a timezone-aware datetime): the task is
        ``scheduled`` until then, off the ready heap, then runs in priority order.
        ``after``: task ids this one waits for (``waiting`` until they have
        ended); ``procqueue.result_of(id)`` in the arguments passes that task's
        result and implies it. ``trigger``: ``"all_success"`` (default: a failed
        upstream fails this task with ``UpstreamFailedError``, a cancelled one
        cancels it) or ``"all_done"`` (runs whatever they ended with).
        ``limit_key``: the ``key_limits`` entry (or pattern) that throttles it.
        With ``max_pending`` set, waits (without blocking the event loop) while
        that many tasks are unfinished.
        Raises at once (nothing queued) for a non-callable, a bad option or an
        unpicklable call.
        """
        engine = self._engine
        if engine.state is EngineState.NEW:
            raise QueueNotStartedError("call 'await queue.start()' before submitting")
        policy = task_policy(engine.config.retry, max_retries, retry, timeout)
        due = due_of(delay, eta)
        rec = prepare(
            engine,
            fn,
            args,
            kwargs,
            priority,
            policy,
            timeout,
            None,
            due,
            after,
            trigger,
            limit_key,
        )
        # Back-pressure (max_pending): wait without blocking the event loop.
        while True:
            try:
                return engine.enqueue(rec, block=False)
            except QueueFullError:
                await to_asyncio(engine.space_future())

    async def schedule(
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
        """Run ``fn(*args, **kwargs)`` on a schedule; returns its :class:`Schedule`.

        ``cron``: a cron expression (five fields, or six with seconds first),
        evaluated on the wall clock in ``tz`` (a zone name or tzinfo; default:
        the local zone); needs the ``cron`` extra. ``every``: seconds or a
        ``timedelta``, on the monotonic clock (first run one interval from
        now). ``name``: unique in this queue (default: the callable's name).
        ``misfire_grace``: seconds a run may be late before it is skipped
        (``None``: never). ``catchup``: ``"latest"`` runs the newest of several
        missed ticks, ``"all"`` each of them, ``"none"`` none.
        ``overlap``: when the previous run is still going, ``"skip"`` this one
        (logged, counted), ``"queue"`` it behind, or ``"allow"`` both.
        ``priority``, ``max_retries``, ``retry``, ``limit_key``: as for
        :meth:`submit`; ``timeout`` defaults to the queue's, else to the
        interval (the gap to the next cron tick), so a hung run cannot hold its
        schedule forever. Raises at once for bad input (the call is pickled
        here, once)."""
        engine = self._engine
        if engine.state is EngineState.NEW:
            raise QueueNotStartedError("call 'await queue.start()' before scheduling")
        return make_schedule(
            engine,
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
        """The queue's schedules (not cancelled), in the order they were added."""
        return schedules_of(self._engine)

    def _future(self, task_id: int) -> Future[Any]:
        """The task's (thread-side) future: what ``result``, ``wait`` and
        ``as_completed`` await (a broker client resolves its own)."""
        return self._engine.future_for(task_id)

    def _claim(self, task_id: int) -> None:
        """The task's outcome was handed over: retention may let it go (a
        broker client's results live out their ``result_ttl`` instead)."""
        self._engine.claim(task_id)

    def get_task_status(self, task_id: int) -> TaskStatus:
        """An immutable snapshot of one task. Raises ``TaskNotFoundError`` for an
        unknown id, or one dropped by retention: once a task's result has been
        claimed (``result``, ``wait``, ``as_completed``), only the newest
        ``retain_finished`` such tasks are kept. Unclaimed results are kept
        until claimed unless ``keep_unclaimed=False``."""
        return self._engine.status(task_id)

    def get_stats(self) -> QueueStats:
        """An immutable snapshot of the queue; cheap, no round trip to workers."""
        return self._engine.stats()

    async def result(self, task_id: int, timeout: float | None = None) -> Any:
        """The task's return value, or raise its exception (remote traceback as
        ``__cause__``). ``timeout`` bounds the wait only: the task goes on."""
        cf = self._future(task_id)
        if cf.done():  # already settled (results gathered after a burst): no hop via the loop
            self._claim(task_id)
            return settled_value(cf)
        fut = to_asyncio(cf)
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        finally:
            # Claimed only once handed over: a timeout or a cancelled await
            # leaves the result kept (keep_unclaimed) for a later result().
            if fut.done() and not fut.cancelled():
                self._claim(task_id)

    async def wait(
        self,
        task_ids: Iterable[int],
        timeout: float | None = None,
        return_when: str = ALL_COMPLETED,
    ) -> tuple[set[int], set[int]]:
        """Wait for several tasks, like ``asyncio.wait``; returns ``(done,
        not_done)`` as sets of task ids."""
        ids = list(task_ids)
        if not ids:
            return set(), set()
        futs = {to_asyncio(self._future(t)): t for t in ids}
        done, pending = await asyncio.wait(futs, timeout=timeout, return_when=return_when)
        for f in done:
            if not f.cancelled():
                f.exception()  # mark retrieved: the caller asks by id
        for f in pending:
            f.cancel()  # nobody reads them: no "exception was never retrieved" later
        return {futs[f] for f in done}, {futs[f] for f in pending}

    def as_completed(
        self,
        task_ids: Iterable[int],
        timeout: float | None = None,
        *,
        progress: ProgressOption = None,
    ) -> AsyncIterator[int]:
        """Yield task ids as their tasks finish (in any final state).
        Raises ``TimeoutError`` if ``timeout`` passes first.

        ``progress``: a bar (on stderr) with rate and ETA, advanced as tasks
        finish: ``True`` (tqdm, else rich), ``"tqdm"``, ``"rich"`` (the
        ``progress`` extra; ``MissingExtraError`` at this call if absent), or a
        callable ``fn(done, total)`` called on the event loop. It closes when
        the iteration ends, fails or is closed early (``aclose()``, or a
        ``break`` once the generator is collected)."""
        # Not an ``async def``: a missing extra raises here, not at the first
        # ``__anext__``.
        factory = progress_factory(progress)
        return self._as_completed(task_ids, timeout, factory)

    async def _as_completed(
        self, task_ids: Iterable[int], timeout: float | None, factory: SinkFactory | None
    ) -> AsyncIterator[int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        futs = {to_asyncio(self._future(t)): t for t in task_ids}
        tracker = None if factory is None else Tracker(factory, "tasks", len(futs))
        if tracker is not None:  # the tasks' own report_progress, next to the bar
            tracker.task_ids.update(futs.values())
            tracker.on_close(self._engine.watch_progress(tracker.note_report))
        pending = set(futs)
        counted: set[asyncio.Future[Any]] = set()

        def count(f: asyncio.Future[Any]) -> None:
            # On the loop, as each settles, or as it is yielded: asyncio.wait
            # hands back every future done when the iteration resumes, one
            # whose own callback is still queued behind that wake-up too, and
            # the bar must not close short of it. Once each.
            if tracker is not None and f not in counted:
                counted.add(f)
                tracker.settled(f)

        try:
            if tracker is not None:
                tracker.expect(len(futs))
                for f in futs:
                    f.add_done_callback(count)
                tracker.open()
            while pending:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=FIRST_COMPLETED
                )
                if not done:
                    raise TimeoutError(f"{len(pending)} task(s) not finished within {timeout}s")
                for f in done:
                    count(f)
                    f.exception()
                    yield futs[f]
        finally:
            if tracker is not None:
                tracker.close()
            # A timeout or an early close: the rest are read by id, if at all.
            for f in futs:
                if not f.done():
                    f.cancel()
                elif not f.cancelled():
                    f.exception()

    def cancel(self, task_id: int) -> bool:
        """Cancel a task. A pending or retrying one is removed from the queue; a
        running one has its worker killed and replaced (other tasks queued on
        that worker go back to the heap, uncharged). Returns ``False`` if the
        task had already finished. Takes effect asynchronously: a task that
        finishes first stays completed."""
        return self._engine.request_cancel(task_id)

    async def join(self) -> None:
        """Wait until every task submitted so far is final."""
        await to_asyncio(self._engine.idle_future())

    async def stop(self, *, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Stop gracefully: by default every accepted task runs to its end
        (retries included). ``cancel_pending=True`` cancels what has not started;
        ``timeout`` gives running tasks that many seconds, then kills their
        workers (those tasks end ``cancelled``). Afterwards no worker process,
        pipe or thread remains."""
        engine = self._engine
        engine.request_stop(cancel_pending=cancel_pending, timeout=timeout)
        await to_asyncio(engine.stopped_future)
        engine.wait_stopped()
        close_dashboards(engine)

    async def __aenter__(self) -> TaskQueue:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # Cancelled, Ctrl-C, SystemExit: drop queued work and kill running tasks.
            await self.stop(cancel_pending=True, timeout=0)
        else:
            await self.stop()

    def subscribe(self, listener: Callable[[TaskStatus], None]) -> Callable[[], None]:
        """Call ``listener`` with a :class:`TaskStatus` on every state change, in
        order, in the ``procqueue-listeners`` thread (not the event loop: hand
        off with ``loop.call_soon_threadsafe``). Returns a function that
        unsubscribes. Listeners more than 100,000 statuses behind lose the
        oldest (logged once at WARNING)."""
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
        """Serve the live web dashboard (and ``/metrics``) for this queue; returns
        its handle (``.url``, ``.close()``). Defaults: port 8765 (0 picks a free
        one), host ``127.0.0.1`` (any other host needs a ``token``), actions
        allowed, arguments shown. It closes when the queue stops. See the
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
