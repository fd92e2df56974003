"""What both front doors share: options -> one ``QueueConfig`` -> an engine;
validating and pickling a call into a record; the dead letter queue object.

The queue-wide keywords are declared once, as :class:`CommonOptions` (both
doors) and :class:`TaskQueueOptions`; their defaults and validation live in
``QueueConfig`` (``_core/config.py``); the README's configuration table
documents each.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict, overload

from ._core.config import OPTION_NAMES, QueueConfig, check_timeout
from ._core.deadletters import DeadLetter
from ._core.deps import FutureResultOf, ResultOf, replace_in_call
from ._core.limits import Concurrency, RateLimit
from ._core.records import _TaskRecord
from ._policy import RetryPolicy, WorkerLimits, resolve_policy
from ._runtime import _calls
from ._runtime.engine import Engine
from ._runtime.futures import _TaskFuture
from ._runtime.local import LocalTransport
from .errors import InvalidArgumentError, InvalidCallableError, OptionTypeError, SerializationError

if TYPE_CHECKING:
    from .dashboard import Dashboard, DashboardOptions

__all__ = ["CommonOptions", "DeadLetterQueue", "TaskQueueOptions"]

#: Keyword names ``submit`` keeps for itself; anything else goes to the callable.
#: To pass one of these to your function, use ``functools.partial``.
RESERVED_OPTIONS = frozenset(
    {"priority", "max_retries", "timeout", "retry", "delay", "eta", "after", "trigger", "limit_key"}
)
TRIGGERS = ("all_success", "all_done")


def result_of(task: int | Future[Any]) -> ResultOf:
    """A placeholder for ``task``'s result in another task's arguments.

    ``await queue.submit(total, [result_of(a), result_of(b)])`` runs ``total``
    once ``a`` and ``b`` have completed, with their results in place of the
    placeholders. A placeholder counts at the top level of the arguments
    (positional or keyword) or inside a ``list``, ``tuple`` or ``dict``, at any
    depth; it implies ``after=[task]``. ``task``: a task id, or a future of a
    ``ProcQueue`` (where passing the future itself does the same); a future
    of another queue than the one the call is submitted to is refused there
    with ``InvalidArgumentError``, as in ``after=``.
    """
    if type(task) is int:
        return ResultOf(task)
    if isinstance(task, Future):
        # The future rides along: its id alone would name the receiving
        # queue's own task of that id (a silent wrong value; review r15).
        return FutureResultOf(task_id(task), task)
    if isinstance(task, bool) or not isinstance(task, int):
        raise OptionTypeError(f"result_of takes a task id or a ProcQueue future, got {task!r}")
    return ResultOf(task)


def _link_call(
    engine: Engine,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    after: Iterable[int | Future[Any]] | None,
    trigger: str,
) -> tuple[tuple[Any, ...], dict[str, Any], tuple[int, ...], set[int], dict[int, Future[Any]]]:
    """Dependencies of a call: the upstream ids (``after`` and ``result_of``
    markers) and those whose results it takes. A ``ProcQueue`` future of this
    queue in the arguments stands for its result: a completed one is passed as
    its value at once, any other becomes a marker. (:func:`prepare` has
    already taken the two hot paths: no markers at all, and top-level ones.)"""
    futures: dict[int, Future[Any]] = {}
    args, kwargs, upstream, needed = link_call(
        args,
        kwargs,
        after,
        trigger,
        functools.partial(_upstream_id, engine),
        _future_swapper(engine, futures),
    )
    return args, kwargs, upstream, needed, futures


def link_call(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    after: Iterable[Any] | None,
    trigger: str,
    upstream_id: Callable[[Any], int],
    swap: Callable[[Any], Any],
) -> tuple[tuple[Any, ...], dict[str, Any], tuple[int, ...], set[int]]:
    """The dependency rule both kinds of queue follow (local, and a broker
    client's): the upstream ids, distinct and in order (``after`` through
    ``upstream_id``, then the ``result_of`` markers), the ids whose results
    the call takes, and the arguments with ``swap`` applied to every value a
    marker may hide in (a queue's own futures become values or markers; a
    ``result_of(future)`` is refused unless ``upstream_id`` takes its future).
    Containers the swap leaves alone are passed on as the caller's objects."""
    ids = after_ids(after, trigger, upstream_id)
    needed: set[int] = set()
    if not _all_atomic(args, kwargs):  # else no marker or future to find
        args, kwargs = replace_in_call(args, kwargs, _linker(needed, upstream_id, swap))
    if needed:
        ids = tuple(dict.fromkeys([*ids, *sorted(needed)]))
    return args, kwargs, ids, needed


def _linker(
    needed: set[int], upstream_id: Callable[[Any], int], swap: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    """:func:`link_call`'s treatment of one value where a marker may sit:
    a marker's id goes to ``needed``; anything else goes through ``swap``."""

    def leaf(v: Any) -> Any:
        kind = type(v)
        if kind is ResultOf:
            needed.add(v.task_id)
            return v
        if kind is FutureResultOf:
            future = v.future
            tid = upstream_id(future)  # another queue's future: refused, as in after=
            new = swap(future)
            if new is future:
                new = ResultOf(tid)
        else:
            new = swap(v)
        if type(new) is ResultOf:
            needed.add(new.task_id)
        return new

    return leaf


def after_ids(
    after: Iterable[Any] | None, trigger: str, upstream_id: Callable[[Any], int]
) -> tuple[int, ...]:
    """``after``'s upstream ids through ``upstream_id``, distinct and in
    order; a typed error for a bad ``trigger`` or ``after``."""
    if trigger not in TRIGGERS:
        raise InvalidArgumentError(f"trigger must be one of {TRIGGERS}, got {trigger!r}")
    if after is None:
        return ()
    if isinstance(after, (str, bytes, int, Future)):
        raise OptionTypeError(f"after must be a list of task ids or futures, got {after!r}")
    ids = tuple(map(upstream_id, after))
    return ids if len(ids) < 2 else tuple(dict.fromkeys(ids))


def _all_atomic(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return _calls.all_plain(args) and (not kwargs or _calls.all_plain(kwargs.values()))


def task_id(future: Future[Any]) -> int:
    """The task id behind a future returned by :class:`~procqueue.ProcQueue`."""
    tid = getattr(future, "_task_id", -1)
    if tid < 0:
        raise InvalidArgumentError("this future was not returned by a procqueue ProcQueue")
    return int(tid)


def _upstream_id(engine: Engine, item: int | Future[Any]) -> int:
    if type(item) is int:
        return item
    if isinstance(item, Future):
        if getattr(item, "_cancel_hook", None) is not engine._cancel_ref:
            raise InvalidArgumentError(f"{item!r} is not a future of this queue")
        return int(getattr(item, "_task_id", -1))
    if isinstance(item, bool) or not isinstance(item, int):
        raise OptionTypeError(f"after takes task ids or futures, got {item!r}")
    return item


def _future_swapper(engine: Engine, futures: dict[int, Future[Any]]) -> Callable[[Any], Any]:
    hook = engine._cancel_ref

    def swap(v: Any) -> Any:
        if type(v) is not _TaskFuture or v._cancel_hook is not hook:
            return v
        if v.done() and not v.cancelled() and v.exception() is None:
            return v.result()
        # Not settled yet: a marker, and the future itself to read it from
        # should the scheduler have released its copy meanwhile.
        futures[v._task_id] = v
        return ResultOf(v._task_id)

    return swap


class CommonOptions(TypedDict, total=False):
    """Queue-wide keywords of both ``ProcQueue`` and ``TaskQueue``."""

    start_method: str | None
    retry: RetryPolicy | None
    max_retries: int | None
    timeout: float | None
    prefetch: int | None
    limits: WorkerLimits | None
    max_pending: int | None
    dead_letters: int
    retain_finished: int
    forward_logs: bool
    rand: Callable[[], float] | None
    key_limits: Mapping[str, RateLimit | Concurrency | Sequence[RateLimit | Concurrency]] | None
    max_throttles: int
    dashboard: int | bool | Mapping[str, Any] | DashboardOptions | None


class TaskQueueOptions(CommonOptions, total=False):
    """``TaskQueue``'s keywords (``ProcQueue`` takes the stdlib's positional
    ``initializer``/``initargs``, and its futures hold the results)."""

    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    keep_unclaimed: bool


def open_dashboard(engine: Engine, spec: object, **overrides: Any) -> Dashboard:
    """Serve a dashboard for ``engine`` (``dashboard=`` or ``serve_dashboard``):
    ``spec`` is a port, ``True``, a dict or a ``DashboardOptions``; the
    ``overrides`` that are not ``None`` win. Closed when the queue stops."""
    from .dashboard._app import serve_local
    from .dashboard._options import resolve_options

    return serve_local(engine, resolve_options(spec, **overrides))


def close_dashboards(engine: Engine) -> None:
    """Close ``engine``'s dashboards and join their threads (a no-op when the
    dashboard package was never loaded)."""
    import sys

    app = sys.modules.get("procqueue.dashboard._app")
    if app is not None:
        app.close_for(engine)


def make_engine(owner: str, num_workers: int, options: dict[str, Any]) -> Engine:
    """Validate ``options`` (the front door's keywords) into one config."""
    options = dict[str, Any](options)
    unknown = sorted(set(options) - OPTION_NAMES - {"max_retries"})
    if unknown:
        raise OptionTypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    retry = options.pop("retry", None)
    max_retries = options.pop("max_retries", None)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise OptionTypeError(f"retry must be a RetryPolicy, got {retry!r}")
    options["retry"] = resolve_policy(retry or RetryPolicy(), max_retries, None)
    if options.get("limits") is None:
        options["limits"] = WorkerLimits()
    if options.get("initargs") is not None:
        options["initargs"] = tuple(options["initargs"])
    config = QueueConfig(num_workers=num_workers, **options)
    transport = LocalTransport(config)
    return Engine(replace(config, start_method=transport.start_method), transport)


def task_policy(
    base: RetryPolicy,
    max_retries: int | None,
    retry: RetryPolicy | None,
    timeout: float | None,
) -> RetryPolicy:
    """Validate per-task options; returns the task's retry policy."""
    check_timeout(timeout)
    return resolve_policy(base, max_retries, retry)


def due_of(delay: float | None, eta: datetime | None) -> tuple[float, float] | None:
    """When a task submitted with ``delay`` (seconds) or ``eta`` (a
    timezone-aware datetime) becomes due: ``(monotonic, wall clock)``, or
    ``None`` when it is due at once. The monotonic time drives the scheduler,
    so changing the system clock after submit moves no due time."""
    if delay is not None and eta is not None:
        raise InvalidArgumentError("give delay or eta, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise OptionTypeError(f"delay must be a number of seconds, got {delay!r}")
        if not delay >= 0 or delay == float("inf"):
            raise InvalidArgumentError(f"delay must be a finite number >= 0, got {delay!r}")
        seconds = float(delay)
    elif eta is not None:
        if not isinstance(eta, datetime):
            raise OptionTypeError(f"eta must be a datetime, got {eta!r}")
        if eta.tzinfo is None or eta.utcoffset() is None:
            raise InvalidArgumentError(
                "eta must be timezone-aware (a naive datetime is ambiguous): "
                "use datetime.now(timezone.utc) + ..., or attach a ZoneInfo"
            )
        seconds = (eta - datetime.now(timezone.utc)).total_seconds()
    else:
        return None
    if seconds <= 0:
        return None
    return time.monotonic() + seconds, time.time() + seconds


def name_of(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        func = getattr(fn, "func", None)  # functools.partial
        name = getattr(func, "__qualname__", None) or type(fn).__qualname__
    return str(name)


def _cannot_pickle(name: str, e: Exception) -> SerializationError:
    return SerializationError(f"cannot pickle the call {name}(...): {type(e).__name__}: {e}")


def prepare(
    engine: Engine,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    priority: int = 0,
    policy: RetryPolicy | None = None,
    timeout: float | None = None,
    future: _TaskFuture | None = None,
    due: tuple[float, float] | None = None,
    after: Iterable[int | Future[Any]] | None = None,
    trigger: str = "all_success",
    limit_key: str | None = None,
    link: bool = True,
) -> _TaskRecord:
    """Validate and pickle a call into a record (not queued yet): a typed
    error at the call, and nothing queued, for a non-callable, a bad priority,
    a closed queue or anything that refuses to pickle. ``due``: from
    :func:`due_of`. ``after``/``trigger``: dependencies (see :func:`result_of`)."""
    if not callable(fn):
        raise InvalidCallableError(f"{fn!r} is not callable")
    if type(priority) is not int and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise OptionTypeError(f"priority must be an int, got {priority!r}")
    engine.check_open()
    if limit_key is not None:
        if not isinstance(limit_key, str):
            raise OptionTypeError(f"limit_key must be a str, got {limit_key!r}")
        engine.core.keys.check(limit_key)
    upstream: tuple[int, ...] = ()
    needed: Collection[int] = ()
    futures: dict[int, Future[Any]] = {}
    plain = False
    # f(result_of(t), 3): markers only at the top level, beside small scalars.
    # Pickled with holes where they stand, which the values fill in the
    # worker (``_calls.dump_with_holes``).
    holes = None
    if after is None and trigger == "all_success":
        plain = _all_atomic(args, kwargs)
        if link and not plain:
            holes = _calls.dump_with_holes(args, kwargs)
            if holes is not None:  # no walk, no swap
                ids = holes[1]
                needed = upstream = ids if len(ids) == 1 else tuple(sorted(set(ids)))
            elif len(args) == 1 and not kwargs and type(args[0]) is FutureResultOf:
                # f(result_of(future)), a chain's link: its future checked as
                # in after=, then a hole; the future kept to read the value from.
                upstream_future = args[0].future
                tid = _upstream_id(engine, upstream_future)
                args = (ResultOf(tid),)
                holes = _calls.dump_with_holes(args, kwargs)
                needed = upstream = (tid,)
                futures = {tid: upstream_future}
            else:
                args, kwargs, upstream, needed, futures = _link_call(
                    engine, args, kwargs, after, trigger
                )
                if needed:  # futures of a ProcQueue, now markers
                    holes = _calls.dump_with_holes(args, kwargs)
    elif link and _all_atomic(args, kwargs):
        # f(x, after=[t]): small scalars hold no marker or future; only the ids.
        upstream = after_ids(after, trigger, functools.partial(_upstream_id, engine))
        plain = True
    elif link:  # map's own chunks hold items, never futures: not walked
        args, kwargs, upstream, needed, futures = _link_call(engine, args, kwargs, after, trigger)
        if needed:
            holes = _calls.dump_with_holes(args, kwargs)
    name = name_of(fn)
    try:
        fn_blob = _calls.dump_callable(fn)
        payload: tuple[bytes, Sequence[Any]]
        if plain:  # small scalars only (the usual tiny task): checked once, not twice
            payload = fn_blob, _calls.dump_plain_arguments(args, kwargs)
        elif holes is not None:
            payload = fn_blob, holes[0]
        else:
            payload = fn_blob, _calls.dump_arguments(args, kwargs)
    except Exception as e:
        raise _cannot_pickle(name, e) from e
    rec = engine.new_record(name, priority, payload, policy, timeout, future)
    if due is not None:
        rec.schedule(*due)
    rec.limit_key = limit_key
    if upstream:
        rec.upstream = upstream
        rec.all_done = trigger == "all_done"
        if needed:
            rec.inputs = (
                {tid: futures.get(tid) for tid in needed} if futures else dict.fromkeys(needed)
            )
    return rec


class ChunkRunner(NamedTuple):
    """``map``'s chunk runner bound to the user's function, pickled once per
    ``map`` call (a script's function travels by value: pickling it with every
    chunk's arguments cost as much as the chunk)."""

    name: str
    fn_blob: bytes


def chunk_runner(
    engine: Engine, runner: Callable[[Any, list[Any]], Any], fn: Callable[..., Any]
) -> ChunkRunner:
    if not callable(fn):
        raise InvalidCallableError(f"{fn!r} is not callable")
    engine.check_open()
    name = name_of(fn)
    try:
        return ChunkRunner(name, _calls.dump_callable(functools.partial(runner, fn)))
    except Exception as e:
        raise _cannot_pickle(name, e) from e


def prepare_chunk(
    engine: Engine, runner: ChunkRunner, chunk: list[Any], future: _TaskFuture
) -> _TaskRecord:
    """One chunk of ``map``: the runner's bytes, and the chunk's items pickled."""
    engine.check_open()
    try:
        segments = _calls.dump_arguments((chunk,), {})
    except Exception as e:
        raise _cannot_pickle(runner.name, e) from e
    return engine.new_record(runner.name, 0, (runner.fn_blob, segments), None, None, future)


def prepare_many(
    engine: Engine, fn: Callable[..., Any], calls: list[tuple[Any, ...]], futures: list[_TaskFuture]
) -> list[_TaskRecord]:
    """``map``'s fast path: one validation and one pickling of ``fn``."""
    if not callable(fn):
        raise InvalidCallableError(f"{fn!r} is not callable")
    engine.check_open()
    name = name_of(fn)
    try:
        fn_blob = _calls.dump_callable(fn)
    except Exception as e:
        raise _cannot_pickle(name, e) from e
    records = []
    for args, fut in zip(calls, futures):
        try:
            segments = _calls.dump_arguments(args, {})
        except Exception as e:
            raise _cannot_pickle(name, e) from e
        records.append(engine.new_record(name, 0, (fn_blob, segments), None, None, fut))
    return records


class DeadLetterQueue:
    """The dead letter queue of one queue, as ``queue.dlq``.

    Every task that ends ``failed`` (retries exhausted, or an error that is not
    retried) lands here with its full history, up to ``dead_letters`` entries
    (default 1000; when full the oldest entry is dropped and counted in
    ``get_stats().dead_letters_dropped``; 0 turns the DLQ off). Tasks failed
    because the whole pool broke are not dead-lettered.

    >>> for letter in queue.dlq.list():              # doctest: +SKIP
    ...     print(letter.task_id, letter.error.exc_type)
    >>> new_id = queue.dlq.requeue(letter.task_id)     # doctest: +SKIP
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def list(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        return self._engine.dead_letters()

    def get(self, task_id: int) -> DeadLetter:
        """One dead letter; ``TaskNotFoundError`` if absent."""
        return self._engine.dead_letter(task_id)

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
        """Run the task again as a new task (new id, returned) with a fresh retry
        budget (its own ``max_retries`` unless given). The letter leaves the DLQ.

        ``cascade=True`` also re-arms the dependents its failure ended (with
        ``UpstreamFailedError``), transitively, as new tasks waiting on the new
        ones (``result_of`` markers follow); it returns ``{old id: new id}`` for
        every task it queued. Without it, those dependents stay failed.
        """
        ids = self._engine.requeue_dead_letter(task_id, max_retries, priority, cascade)
        return ids if cascade else ids[task_id]

    def purge(self, task_ids: Iterable[int] | None = None) -> int:
        """Drop the given dead letters (all by default); returns how many."""
        return self._engine.purge_dead_letters(task_ids)

    @property
    def dropped(self) -> int:
        """Entries pushed out because the DLQ was full."""
        return self._engine.dead_letters_dropped

    def __len__(self) -> int:
        return len(self._engine.dead_letters())
