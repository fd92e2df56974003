"""The broker front doors: ``TaskQueue(broker=...)`` and ``ProcQueue(broker=...)``
(picked by those classes' ``__new__``), and ``queue.dlq`` on a broker. Both
doors delegate to one ``_RemoteCore`` (``_remote.py``)."""

import asyncio
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Literal, TypeVar, overload

from .._asyncbridge import to_asyncio
from .._core.deadletters import DeadLetter
from .._core.records import TaskStatus
from .._policy import RetryPolicy
from .._progress import ProgressOption, progress_map
from ..errors import InvalidArgumentError, TaskNotFoundError
from ..executor import ProcQueue
from ..taskqueue import TaskQueue
from ._cron import RemoteSchedule
from ._remote import ClusterStats, _RemoteCore, _sec, attempt_error

__all__ = ["RemoteDeadLetterQueue", "RemoteProcQueue", "RemoteTaskQueue"]

T = TypeVar("T")


class RemoteDeadLetterQueue:
    """``queue.dlq`` on a broker client: the queue's dead letters in Redis
    (``list``, ``get``, ``requeue``, ``purge``, ``len``), as for a local queue."""

    def __init__(self, remote: _RemoteCore) -> None:
        self._remote = remote

    def list(self) -> list[DeadLetter]:
        return [_letter(tid, m, at) for tid, m, at in self._remote._b().dead_letters()]

    def get(self, task_id: int) -> DeadLetter:
        for letter in self.list():
            if letter.task_id == task_id:
                return letter
        raise TaskNotFoundError(task_id)

    @overload
    def requeue(
        self,
        task_id: int,
        *,
        max_retries: int | None = ...,
        priority: int | None = ...,
        cascade: Literal[False] = ...,
    ) -> int: ...

    @overload
    def requeue(
        self,
        task_id: int,
        *,
        max_retries: int | None = ...,
        priority: int | None = ...,
        cascade: Literal[True],
    ) -> dict[int, int]: ...

    def requeue(
        self,
        task_id: int,
        *,
        max_retries: int | None = None,
        priority: int | None = None,
        cascade: bool = False,
    ) -> int | dict[int, int]:
        """Run it again as a new task (new id, returned) with fresh attempts
        (its own ``max_retries`` unless given). The letter leaves the DLQ.

        ``cascade=True`` also re-arms the dependents its failure ended (with
        ``UpstreamFailedError``), transitively, as new tasks waiting on the new
        ones (``result_of`` markers follow), in one atomic step across every
        node; it returns ``{old id: new id}`` for every task it queued. Those
        dependents are kept for their ``result_ttl``: once one has expired
        (or another upstream of one is no longer known), it raises
        :class:`TaskNotFoundError` and queues nothing (the letter stays)."""
        broker = self._remote._b()
        if cascade:
            ids = broker.requeue_cascade(task_id, max_retries, priority)
            if ids is None:
                raise TaskNotFoundError(task_id)
            return ids
        new = broker.requeue_dead(task_id, max_retries, priority)
        if new is None:
            raise TaskNotFoundError(task_id)
        return new

    def purge(self, task_ids: Iterable[int] | None = None) -> int:
        return self._remote._b().purge_dead(None if task_ids is None else list(task_ids))

    def __len__(self) -> int:
        broker = self._remote._b()
        return int(broker.r.zcard(broker.keys.dlq))


def _letter(task_id: int, m: dict[str, Any], failed_at: float) -> DeadLetter:
    err = attempt_error(m, failed_at)
    return DeadLetter(
        task_id=task_id,
        name=str(m["name"]),
        priority=int(m["priority"]),
        attempts=int(m["attempts"]),
        errors=(err,),
        submitted_at=_sec(m.get("submitted")) or 0.0,
        failed_at=failed_at,
    )


class RemoteTaskQueue(TaskQueue):
    """``TaskQueue``'s asyncio API against a Redis broker (no local workers).

    Built by ``TaskQueue(broker="redis://...", queue="default")``; the secret
    comes from ``secret=``, ``secret_file=`` or ``$PROCQUEUE_SECRET`` (without
    one it refuses to start; ``insecure=True`` for local experiments only).
    Available: ``start``/``stop``, ``submit`` (``priority``, ``max_retries``,
    ``retry``, ``timeout``, ``delay``, ``eta``, ``after``/``trigger`` and
    ``result_of`` markers, ``limit_key``, ``key``: an idempotency key),
    ``result``, ``wait``, ``as_completed``, ``join`` (the tasks this client
    submitted), ``cancel``, ``get_task_status``,
    ``schedule``/``schedules``, ``dlq`` and a cluster-wide ``get_stats``.
    """

    def __init__(self, num_workers: int | None = None, **options: Any) -> None:
        self._remote = _RemoteCore("TaskQueue", num_workers, **options)
        self.dlq = RemoteDeadLetterQueue(self._remote)  # type: ignore[assignment]

    async def start(self) -> None:
        self._remote.open()

    def _claim(self, task_id: int) -> None:
        pass  # Redis keeps a result for its result_ttl, claimed or not

    async def stop(self, *, cancel_pending: bool = False, timeout: float | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._remote.close)

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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
        key: str | None = None,
        limit_key: str | None = None,
        after: Iterable[int] | None = None,
        trigger: str = "all_success",
        **kwargs: Any,
    ) -> int:
        """Seal and queue ``fn(*args, **kwargs)``; returns the task id. Raises at
        once for a non-callable, a bad option, an unknown upstream or an
        unpicklable call. ``key``: an idempotency key: a second submit with the
        same key (while the first task or its result is kept) returns the first
        task's id. ``after``/``trigger`` and ``result_of``: dependencies, as on
        a local queue, across every node."""
        return self._remote.submit(
            fn,
            args,
            kwargs,
            priority=priority,
            max_retries=max_retries,
            retry=retry,
            timeout=timeout,
            delay=delay,
            eta=eta,
            key=key,
            limit_key=limit_key,
            after=after,
            trigger=trigger,
        )

    def _future(self, task_id: int) -> Future[Any]:
        # result, wait and as_completed (TaskQueue's own) await this.
        return self._remote.waiter(task_id)

    async def join(self) -> None:
        """Wait until every task this client submitted so far is final."""
        with self._remote._lock:
            ids = list(self._remote.submitted)
        for tid in ids:
            try:
                await to_asyncio(self._remote.waiter(tid))
            except BaseException:
                pass

    def cancel(self, task_id: int) -> bool:
        return self._remote.cancel(task_id)

    async def schedule(  # type: ignore[override]
        self, fn: Callable[..., Any], /, *args: Any, **options: Any
    ) -> RemoteSchedule:
        """``TaskQueue.schedule`` on the broker: each tick runs once across
        every node, whichever evaluates it; ``overlap="queue"`` chains each
        run behind the previous one in Redis."""
        fn_kwargs, opts = _split_schedule_options(options)
        return self._remote.schedule(fn, args, fn_kwargs, **opts)

    def schedules(self) -> list[RemoteSchedule]:  # type: ignore[override]
        return self._remote.schedules()

    def get_task_status(self, task_id: int) -> TaskStatus:
        return self._remote.get_task_status(task_id)

    def get_stats(self) -> ClusterStats:  # type: ignore[override]
        return self._remote.get_stats()


class RemoteProcQueue(ProcQueue):
    """``ProcQueue``'s ``concurrent.futures`` API against a Redis broker (no
    local workers): ``ProcQueue(broker="redis://...", queue="default")``.
    ``submit``/``submit_task`` return futures resolved when a node reports the
    outcome; ``map``, ``shutdown`` and the context manager work as for any
    ``Executor``. ``future.cancel()`` cancels only a task not yet claimed (as
    the stdlib does); ``pool.cancel(task_id)`` also stops a running one."""

    def __init__(self, max_workers: int | None = None, **options: Any) -> None:
        self._remote = _RemoteCore("ProcQueue", max_workers, **options)
        self._remote.open()
        self.dlq = RemoteDeadLetterQueue(self._remote)  # type: ignore[assignment]

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self.submit_task(fn, *args, **kwargs)

    def submit_task(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        priority: int = 0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        eta: datetime | None = None,
        key: str | None = None,
        limit_key: str | None = None,
        after: Iterable[Future[Any] | int] | None = None,
        trigger: str = "all_success",
        **kwargs: Any,
    ) -> Future[T]:
        """``submit`` with per-task options (see ``TaskQueue.submit``); this
        client's futures may stand for their results in the arguments and in
        ``after``, as on a local ``ProcQueue``."""
        remote = self._remote
        tid = remote.submit(
            fn,
            args,
            kwargs,
            priority=priority,
            max_retries=max_retries,
            retry=retry,
            timeout=timeout,
            delay=delay,
            eta=eta,
            key=key,
            limit_key=limit_key,
            after=after,
            trigger=trigger,
        )
        return remote.tag(remote.waiter(tid), tid)

    def future(self, task_id: int) -> Future[Any]:
        """A future for any task of this queue by id (e.g. one requeued from
        the dead letter queue, or re-armed by ``dlq.requeue(..., cascade=True)``)."""
        remote = self._remote
        return remote.tag(remote.waiter(task_id), task_id)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: ProgressOption = None,
    ) -> Iterator[T]:
        """The stdlib's ``Executor.map``: one task per item, results in order
        (``chunksize`` is ignored: each item is its own task on the broker);
        ``progress=`` as on a local ``ProcQueue``."""
        return progress_map(self, fn, iterables, timeout, progress)

    def cancel(self, task_id: int) -> bool:
        """Cancel a task by id, running or not (see ``TaskQueue.cancel``)."""
        return self._remote.cancel(task_id)

    def schedule(  # type: ignore[override]
        self, fn: Callable[..., Any], /, *args: Any, **options: Any
    ) -> RemoteSchedule:
        """``ProcQueue.schedule`` on the broker (see ``TaskQueue.schedule``)."""
        fn_kwargs, opts = _split_schedule_options(options)
        return self._remote.schedule(fn, args, fn_kwargs, **opts)

    def schedules(self) -> list[RemoteSchedule]:  # type: ignore[override]
        return self._remote.schedules()

    def get_task_status(self, task_id: int) -> TaskStatus:
        return self._remote.get_task_status(task_id)

    def get_stats(self) -> ClusterStats:  # type: ignore[override]
        return self._remote.get_stats()

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop the client. ``wait``: first wait for every outstanding result."""
        if wait:
            with self._remote._lock:
                pending = list(self._remote._waiters.values())
            for fut in pending:
                try:
                    fut.exception()
                except BaseException:
                    pass
        self._remote.close()


_SCHEDULE_OPTIONS = frozenset(
    {"cron", "every", "name", "tz", "misfire_grace", "catchup", "overlap", "priority",
     "max_retries", "retry", "timeout"}
)  # fmt: skip


def _split_schedule_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the callable's keyword arguments, the schedule's options). A local
    schedule's ``limit_key`` is refused: a broker's runs do not take one yet,
    and passed on to the callable it would fail every run."""
    if "limit_key" in options:
        raise InvalidArgumentError(
            "a schedule on a broker does not take limit_key yet (its runs would not be "
            "rate-limited); submit the limited work from the scheduled task instead"
        )
    opts = {k: v for k, v in options.items() if k in _SCHEDULE_OPTIONS}
    return {k: v for k, v in options.items() if k not in _SCHEDULE_OPTIONS}, opts
