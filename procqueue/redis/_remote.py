"""The client's engine room, shared by both broker front doors
(``_client.py``): the connection, submit, cancel, status, schedules and the
cluster-wide stats; the outcomes and their listener are ``_results.py``'s.

A client runs no workers: it seals and queues calls, and waits for outcomes.
"""

import dataclasses
import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from .._core.deps import ResultOf
from .._core.limits import _TIMER_SLACK, Concurrency, KeyLimits
from .._core.records import AttemptError, TaskProgress, TaskState, TaskStatus
from .._frontdoor import due_of, link_call, name_of, task_policy
from .._policy import RetryPolicy, resolve_policy
from .._runtime import _calls
from ..errors import (
    InvalidArgumentError,
    InvalidCallableError,
    OptionTypeError,
    QueueClosedError,
    SerializationError,
    TaskNotFoundError,
)
from ..stats import WorkerStats
from ._cli import signer_for
from ._codec import dump_call, node_gone, split_error
from ._cron import RemoteSchedule, add_schedule, stored_policy
from ._protocol import Broker, connect
from ._results import RemoteTaskFailedError, _Results

__all__ = ["ClusterStats", "LimitStats", "NodeInfo", "RemoteTaskFailedError"]

_log = logging.getLogger("procqueue.redis")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node serving the queue, from its last heartbeat."""

    node: str
    host: str
    pid: int
    workers: int
    held: int
    heartbeat_age: float
    #: Its worker processes at the last heartbeat (pid, state, tasks, memory, CPU).
    processes: tuple[WorkerStats, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitStats:
    """One concrete limit key across the queue, while it has tasks running or
    waiting on it (an idle key is not listed)."""

    #: Its ``Concurrency`` cap, if it has one.
    cap: int | None
    #: Its ``RateLimit`` spec(s), ``;``-joined, if it has any.
    rate: str | None
    #: Its tasks leased to nodes now.
    running: int
    #: Its tasks held back by the limit: parked at the cap or waiting for a
    #: rate slot (those back in the ready set, about to be claimed, included).
    waiting: int


@dataclass(frozen=True, slots=True)
class ClusterStats:
    """The queue across every node: tasks by where they are in Redis, and the
    nodes (a node whose heartbeat is older than three of its leases is gone,
    and not listed: ``_codec.GONE_AFTER_LEASES``).
    ``pending`` includes tasks parked at their key's concurrency cap;
    ``waiting``: tasks waiting for their upstream tasks (``after=``);
    ``limits``: each busy limit key."""

    pending: int
    scheduled: int
    running: int
    dead_letters: int
    nodes: tuple[NodeInfo, ...]
    waiting: int = 0
    limits: Mapping[str, LimitStats] = field(default_factory=dict)


class _RemoteCore(_Results):
    """What both broker front doors share: the connection, submit, the result
    listener, cancel, status and stats (synchronous, thread-safe)."""

    def __init__(
        self,
        owner: str,
        num_workers: int | None,
        *,
        broker: str,
        queue: str = "default",
        secret: str | bytes | None = None,
        secret_file: str | None = None,
        insecure: bool = False,
        result_ttl: int = 3600,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        key_limits: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self._limits = _limit_table(key_limits)
        if options:
            raise OptionTypeError(
                f"{owner}(broker=...) does not take {sorted(options)[0]!r} (yet): "
                "worker options belong to the nodes (procqueue worker --help)"
            )
        if num_workers is not None:
            raise OptionTypeError(
                "a broker client runs no workers: start nodes with procqueue worker"
            )
        self._url = broker
        self._queue = queue
        self._signer = signer_for(secret, secret_file, insecure)  # refuses without a secret
        self._result_ttl = result_ttl
        self._retry = resolve_policy(retry or RetryPolicy(), max_retries, None)
        self._timeout = timeout
        super().__init__()
        self._broker: Broker | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Connect (raises at once if Redis does not answer) and listen."""
        client = connect(self._url)
        client.ping()
        self._broker = Broker(client, self._queue, self._signer, result_ttl=self._result_ttl)
        self._broker.publish_limits(self._limits)
        self._listener = threading.Thread(
            target=self._listen, name="pq-redis-listener", daemon=True
        )
        self._listener.start()

    def close(self) -> None:
        """Stop listening and close the connection; queued tasks stay queued
        (nodes serve them: the queue outlives its clients). Results not yet
        come raise ``QueueClosedError``."""
        self._closed.set()
        if self._listener is not None and self._listener is not threading.current_thread():
            self._listener.join()
        if self._broker is not None:
            self._broker.r.close()
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(QueueClosedError("the client stopped before the result came"))

    # ------------------------------------------------------------------ tasks

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        priority: int = 0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        eta: datetime | None = None,
        key: str | None = None,
        limit_key: str | None = None,
        after: Iterable[int | Future[Any]] | None = None,
        trigger: str = "all_success",
    ) -> int:
        broker = self._b()
        spec = None if limit_key is None else self._limit_for(limit_key)
        if not callable(fn):
            raise InvalidCallableError(f"{fn!r} is not callable")
        policy = task_policy(self._retry, max_retries, retry, timeout)
        due = due_of(delay, eta)
        seconds = 0.0 if due is None else max(0.0, due[0] - time.monotonic())
        args, kwargs, upstream, needs = self._link(args, kwargs, after, trigger)
        name = name_of(fn)
        try:
            payload = dump_call(fn, args, kwargs)
        except Exception as e:
            raise SerializationError(f"cannot pickle the call {name}(...): {e}") from e
        tid = broker.submit(
            payload,
            name=name,
            priority=priority,
            policy=policy,
            delay=seconds,
            timeout=timeout if timeout is not None else self._timeout,
            key=key,
            limit=None if spec is None else (limit_key, spec["windows"]),  # type: ignore[arg-type]
            cap=None if spec is None else spec.get("cap"),
            after=upstream,
            needs=needs,
            all_done=trigger == "all_done",
        )
        with self._lock:
            self.submitted.add(tid)
        return tid

    def _link(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        after: Iterable[int | Future[Any]] | None,
        trigger: str,
    ) -> tuple[tuple[Any, ...], dict[str, Any], tuple[int, ...], set[int]]:
        """A call's dependencies, as the local queue reads them
        (``_frontdoor._link_call``): the upstream ids (``after`` and
        ``result_of`` markers, distinct, in order) and those whose results it
        takes. A future of this client (``ProcQueue(broker=...)``) in the
        arguments stands for its result: a completed one is passed as its
        value at once, any other becomes a marker."""
        plain = _calls.all_plain(args) and (not kwargs or _calls.all_plain(kwargs.values()))
        if after is None and trigger == "all_success" and plain:
            return args, kwargs, (), set()  # the hot path: nothing to look into
        return link_call(args, kwargs, after, trigger, self._upstream_id, self._swap_future)

    def _upstream_id(self, item: int | Future[Any]) -> int:
        if isinstance(item, Future):
            if getattr(item, "_pq_remote", None) is not self:
                raise InvalidArgumentError(f"{item!r} is not a future of this queue")
            return int(item._task_id)  # type: ignore[attr-defined]
        if isinstance(item, bool) or not isinstance(item, int):
            raise OptionTypeError(f"after takes task ids or futures, got {item!r}")
        return item

    def _swap_future(self, v: Any) -> Any:
        if type(v) is not Future or getattr(v, "_pq_remote", None) is not self:
            return v
        if v.done() and not v.cancelled() and v.exception() is None:
            return v.result()
        return ResultOf(int(v._task_id))  # type: ignore[attr-defined]

    def tag(self, fut: Future[Any], task_id: int) -> Future[Any]:
        """Mark ``fut`` as this client's future of ``task_id`` (``procqueue.task_id``,
        ``after=[fut]``, ``fut`` as an argument)."""
        fut._task_id = task_id  # type: ignore[attr-defined]
        fut._pq_remote = self  # type: ignore[attr-defined]
        return fut

    def _limit_for(self, limit_key: str) -> dict[str, Any]:
        """The limits of ``limit_key``: this client's ``key_limits``, else those
        another client stored for the queue; unknown keys are refused."""
        if not isinstance(limit_key, str):
            raise OptionTypeError(f"limit_key must be a str, got {limit_key!r}")
        if "\0" in limit_key:  # the separator of the ``parked`` members
            raise InvalidArgumentError("a limit_key cannot hold NUL")
        spec = _match(self._limits, limit_key) or _match(self._b().limits(), limit_key)
        if spec is None:
            raise InvalidArgumentError(f"no limit is configured for limit_key {limit_key!r}")
        return spec

    def schedule(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
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
    ) -> RemoteSchedule:
        policy = task_policy(self._retry, max_retries, retry, timeout)
        return add_schedule(
            self._b(),
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
            policy=policy,
            timeout=timeout if timeout is not None else self._timeout,
        )

    def schedules(self) -> list[RemoteSchedule]:
        broker = self._b()
        return [
            # Each with its own stored policy: run_now() must not take the client's.
            RemoteSchedule(broker, name, broker.schedule_payload(name), int(s["priority"]),
                           stored_policy(s), s.get("timeout"))
            for name, s in broker.schedules().items()
        ]  # fmt: skip

    def cancel(self, task_id: int) -> bool:
        """Cancel a queued or delayed task at once, or a running one on its node
        (its process is killed there at the next lease renewal). False when it
        had already ended."""
        return self._b().cancel(task_id) != 0

    def get_task_status(self, task_id: int) -> TaskStatus:
        broker = self._b()
        k = broker.keys
        with broker.r.pipeline(transaction=True) as p:  # one read: no gap between them
            p.hget(k.meta, task_id)
            p.hgetall(k.result(task_id))
            p.hget(k.ended, task_id)
            p.get(k.progress(task_id))
            raw, h, gone, progress = p.execute()
        status = self._status(task_id, raw, h, gone)
        if progress is None:
            return status
        # The node's last report_progress of it (plain JSON, written by the node).
        doc = json.loads(progress)
        reported = TaskProgress(float(doc["done"]), doc["total"], str(doc["message"]))
        return dataclasses.replace(status, progress=reported)

    def _status(self, task_id: int, raw: Any, h: Any, gone: Any) -> TaskStatus:
        if raw is not None:
            return status_from_meta(task_id, json.loads(raw))
        if not h and gone is not None:  # ended unrun by its upstream
            g = json.loads(gone)
            finished = _sec(g.get("finished"))
            err = None
            if g["state"] == "failed":
                err = attempt_error({"attempts": 0, "error": g["error"]}, finished or 0.0)
            return TaskStatus(
                task_id=task_id,
                name=str(g["name"]),
                state=TaskState(g["state"]),
                priority=int(g.get("priority") or 0),
                attempts=0,
                max_retries=int(g.get("max_retries") or 0),
                submitted_at=_sec(g.get("submitted")) or 0.0,
                started_at=None,
                finished_at=finished,
                worker_pid=None,
                error=err,
                errors=(err,) if err else (),
                after=tuple(g.get("ups") or ()),
            )
        if not h:
            raise TaskNotFoundError(task_id)
        return TaskStatus(
            task_id=task_id,
            name=h.get(b"name", b"").decode(),
            state=TaskState(h[b"state"].decode()),
            priority=int(h.get(b"priority", 0)),
            attempts=int(h.get(b"attempts", 0)),
            max_retries=int(h.get(b"max_retries", 0)),
            submitted_at=_sec(int(h.get(b"submitted", 0))) or 0.0,
            started_at=_sec(int(h[b"started"])) if b"started" in h else None,
            finished_at=_sec(int(h[b"finished"])) if b"finished" in h else None,
            worker_pid=_pid(h[b"owner"].decode()) if b"owner" in h else None,
            error=None,
            errors=(),
            after=tuple(json.loads(h[b"ups"])) if b"ups" in h else (),
        )

    def get_stats(self) -> ClusterStats:
        broker = self._b()
        k = broker.keys
        with broker.r.pipeline(transaction=False) as p:
            p.zcard(k.ready)
            p.zcard(k.delayed)
            p.zcard(k.leases)
            p.zcard(k.dlq)
            p.hgetall(k.nodes)
            p.time()
            p.zcard(k.parked)
            p.scard(k.waiting)
            p.hgetall(k.caps)
            p.hgetall(k.limits)
            ready, delayed, leases, dlq, nodes, (sec, usec), parked, waiting, caps, specs = (
                p.execute()
            )
        now = sec + usec / 1e6
        infos = []
        for node, raw in sorted(nodes.items()):
            d = json.loads(raw)
            if node_gone(d, now):  # a node killed: its entry stays until a live one drops it
                continue
            infos.append(
                NodeInfo(
                    node=node.decode(),
                    host=str(d["host"]),
                    pid=int(d["pid"]),
                    workers=int(d["workers"]),
                    held=int(d["held"]),
                    heartbeat_age=max(0.0, now - float(d["beat"])),
                    processes=tuple(WorkerStats(**w) for w in d.get("processes", ())),
                )
            )
        return ClusterStats(
            ready + parked,
            delayed,
            leases,
            dlq,
            tuple(infos),
            waiting,
            _limit_stats(caps, {n.decode(): json.loads(v) for n, v in specs.items()}),
        )


def _limit_table(key_limits: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``key_limits`` as stored in Redis, per key or pattern: ``windows``, the
    GCRA windows ``[[interval ms, tolerance ms], ...]`` (tolerance: ``burst -
    1`` intervals); ``cap``, the smallest ``Concurrency``; ``rate``, the specs."""
    out: dict[str, dict[str, Any]] = {}
    table = KeyLimits(key_limits)  # validates
    for key, specs in [*table.exact.items(), *table.patterns]:
        windows: list[list[float]] = []
        cap: int | None = None
        rates = []
        for spec in specs:
            if isinstance(spec, Concurrency):
                cap = spec.limit if cap is None else min(cap, spec.limit)
                continue
            rates.append(spec.spec)
            for rate, capacity in spec.windows():
                interval = 1000.0 / rate
                burst = round(capacity - rate * _TIMER_SLACK)
                windows.append([interval, (burst - 1) * interval])
        out[key] = {"windows": windows, "cap": cap, "rate": ";".join(rates) or None}
    return out


def _match(table: Mapping[str, dict[str, Any]], key: str) -> dict[str, Any] | None:
    """``key``'s entry: the exact key first, then the first matching pattern."""
    if key in table:
        return table[key]
    for pattern, spec in table.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(key, pattern):
            return spec
    return None


def _limit_stats(
    caps: Mapping[bytes, bytes], specs: Mapping[str, dict[str, Any]]
) -> dict[str, LimitStats]:
    """The ``caps`` counters (``r:``/``p:``/``u:``/``t:`` + key) per key."""
    counts: dict[str, dict[str, int]] = {}
    for f, n in caps.items():
        kind, _, key = f.decode().partition(":")
        counts.setdefault(key, {})[kind] = int(n)
    out = {}
    for key, c in sorted(counts.items()):
        spec = _match(specs, key) or {}
        out[key] = LimitStats(
            cap=spec.get("cap"),
            rate=spec.get("rate"),
            running=max(0, c.get("r", 0)),
            waiting=max(0, c.get("p", 0) + c.get("u", 0) + c.get("t", 0)),
        )
    return out


def status_from_meta(task_id: int, m: dict[str, Any]) -> TaskStatus:
    """A live task's status from its ``meta`` (``get_task_status``, and the
    dashboard's task listings, which read many metas in one ``HMGET``)."""
    # "throttled" and "parked" are pending, held by their key's limit (as locally).
    held_back = m["state"] in ("throttled", "parked")
    state = TaskState("pending" if held_back else m["state"])
    err = None
    if state is TaskState.FAILED:
        err = attempt_error(m, _sec(m.get("finished")) or 0.0)
    return TaskStatus(
        task_id=task_id,
        name=str(m["name"]),
        state=state,
        priority=int(m["priority"]),
        attempts=int(m["attempts"]),
        max_retries=int(m["max_retries"]),
        submitted_at=_sec(m.get("submitted")) or 0.0,
        started_at=_sec(m.get("started")),
        finished_at=_sec(m.get("finished")),
        worker_pid=_pid(m.get("owner") or m.get("node")),
        error=err,
        errors=(err,) if err else (),
        after=tuple(m.get("ups") or ()),
    )


def attempt_error(m: dict[str, Any], finished_at: float) -> AttemptError:
    """A failed task's last error, from its meta (the node's text of it, with
    the worker's traceback when the node had one)."""
    message, tb = split_error(str(m.get("error", "")))
    return AttemptError(
        attempt=int(m["attempts"]),
        exc_type=message.split(":", 1)[0],
        message=message,
        traceback=tb,
        worker_pid=None,
        exitcode=None,
        started_at=_sec(m.get("started")),
        finished_at=finished_at,
    )


def _sec(ms: Any) -> float | None:
    return None if ms is None else float(ms) / 1000.0


def _pid(owner: Any) -> int | None:
    # An owner id is host:pid:nonce: the node's pid, not the worker's.
    try:
        return int(str(owner).split(":")[1])
    except (IndexError, ValueError):
        return None
