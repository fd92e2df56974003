"""The client's engine room, shared by both broker front doors
(``_client.py``): the connection, submit, the result listener, cancel, status,
schedules and the cluster-wide stats.

A client runs no workers: it seals and queues calls, and waits for outcomes.
Completion is announced on the queue's ``done`` channel; one listener thread
per client resolves the waiting futures, and re-reads every outstanding task
once a second, so a missed message (the subscription was reconnecting) only
delays a result.
"""

import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

from .._core.limits import _TIMER_SLACK, Concurrency, KeyLimits
from .._core.records import AttemptError, TaskState, TaskStatus
from .._frontdoor import due_of, name_of, task_policy
from .._policy import RetryPolicy, resolve_policy
from ..errors import (
    InvalidArgumentError,
    InvalidCallableError,
    OptionTypeError,
    ProcQueueError,
    QueueClosedError,
    QueueNotStartedError,
    SerializationError,
    TaskCancelledError,
    TaskNotFoundError,
)
from ..stats import WorkerStats
from ._cli import signer_for
from ._codec import dump_call, load_outcome
from ._cron import RemoteSchedule, add_schedule
from ._protocol import Broker, connect
from ._signing import SignatureError

__all__ = ["ClusterStats", "NodeInfo", "RemoteTaskFailedError"]

_log = logging.getLogger("procqueue.redis")

#: Seconds between re-reads of outstanding tasks (the pub/sub fallback).
POLL = 1.0


class RemoteTaskFailedError(ProcQueueError):
    """A task failed on a node and its exception could not be brought back
    (it did not pickle); the message is the node's text of it."""


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
class ClusterStats:
    """The queue across every node: tasks by where they are in Redis, and the
    nodes (a node whose heartbeat is older than three leases is gone)."""

    pending: int
    scheduled: int
    running: int
    dead_letters: int
    nodes: tuple[NodeInfo, ...]


class _RemoteCore:
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
        self._windows = _gcra_windows(key_limits)
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
        self._broker: Broker | None = None
        self._waiters: dict[int, Future[Any]] = {}
        #: Ids this client submitted and has not seen end (for ``join``).
        self.submitted: set[int] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Connect (raises at once if Redis does not answer) and listen."""
        client = connect(self._url)
        client.ping()
        self._broker = Broker(client, self._queue, self._signer, result_ttl=self._result_ttl)
        self._broker.publish_limits(self._windows)
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

    def _b(self) -> Broker:
        if self._closed.is_set():
            raise QueueClosedError("this client is stopped")
        if self._broker is None:
            raise QueueNotStartedError("call 'await queue.start()' first")
        return self._broker

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
    ) -> int:
        broker = self._b()
        limit = None if limit_key is None else (limit_key, self._windows_for(limit_key))
        if not callable(fn):
            raise InvalidCallableError(f"{fn!r} is not callable")
        policy = task_policy(self._retry, max_retries, retry, timeout)
        due = due_of(delay, eta)
        seconds = 0.0 if due is None else max(0.0, due[0] - time.monotonic())
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
            limit=limit,
        )
        with self._lock:
            self.submitted.add(tid)
        return tid

    def _windows_for(self, limit_key: str) -> list[list[float]]:
        """The rate windows of ``limit_key``: this client's ``key_limits``, else
        those another client stored for the queue; unknown keys are refused."""
        if not isinstance(limit_key, str):
            raise OptionTypeError(f"limit_key must be a str, got {limit_key!r}")
        for table in (self._windows, self._b().limits()):
            if limit_key in table:
                return table[limit_key]
            for pattern, windows in table.items():
                if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(limit_key, pattern):
                    return windows
        raise InvalidArgumentError(f"no limit is configured for limit_key {limit_key!r}")

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
            RemoteSchedule(broker, name, broker.schedule_payload(name), int(s["priority"]),
                           self._retry, s.get("timeout"))
            for name, s in broker.schedules().items()
        ]  # fmt: skip

    def cancel(self, task_id: int) -> bool:
        """Cancel a queued or delayed task at once, or a running one on its node
        (its process is killed there at the next lease renewal). False when it
        had already ended."""
        return self._b().cancel(task_id) != 0

    def get_task_status(self, task_id: int) -> TaskStatus:
        broker = self._b()
        m = broker.meta(task_id)
        if m is not None:
            # "throttled" is pending, waiting for its rate slot (as locally).
            state = TaskState("pending" if m["state"] == "throttled" else m["state"])
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
                worker_pid=_pid(m.get("owner")),
                error=err,
                errors=(err,) if err else (),
            )
        h = broker.r.hgetall(broker.keys.result(task_id))
        if not h:
            raise TaskNotFoundError(task_id)
        return TaskStatus(
            task_id=task_id,
            name=h.get(b"name", b"").decode(),
            state=TaskState(h[b"state"].decode()),
            priority=0,
            attempts=int(h.get(b"attempts", 0)),
            max_retries=0,
            submitted_at=0.0,
            started_at=None,
            finished_at=_sec(int(h[b"finished"])) if b"finished" in h else None,
            worker_pid=None,
            error=None,
            errors=(),
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
            ready, delayed, leases, dlq, nodes, (sec, usec) = p.execute()
        now = sec + usec / 1e6
        infos = []
        for node, raw in sorted(nodes.items()):
            d = json.loads(raw)
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
        return ClusterStats(ready, delayed, leases, dlq, tuple(infos))

    # ------------------------------------------------------------------ outcomes

    def waiter(self, task_id: int) -> Future[Any]:
        self._b()
        with self._lock:
            fut = self._waiters.get(task_id)
            if fut is None:
                fut = self._waiters[task_id] = Future()
        # Already final (or unknown) before we waited: settle now, not on a message.
        self._settle(task_id, new_waiter=True)
        return fut

    def _settle(self, task_id: int, new_waiter: bool = False) -> bool:
        """Resolve ``task_id``'s waiter if it is final; True if it was. A new
        waiter for a task the queue does not know fails with TaskNotFoundError."""
        broker = self._broker
        assert broker is not None
        try:
            outcome, known = broker.lookup(task_id)
        except SignatureError as e:
            outcome, known = ("signature", None, str(e)), True
            exc: BaseException | None = e
        else:
            exc = None
        if outcome is None and not (new_waiter and not known):
            return False
        if outcome is None:
            with self._lock:
                fut0 = self._waiters.pop(task_id, None)
            if fut0 is not None and not fut0.done():
                fut0.set_exception(TaskNotFoundError(task_id))
            return True
        with self._lock:
            fut = self._waiters.pop(task_id, None)
            self.submitted.discard(task_id)
        if fut is None or fut.done():
            return True
        state, value, error = outcome
        if exc is not None:
            fut.set_exception(exc)
        elif state == "completed":
            fut.set_result(load_outcome(value) if value else None)
        elif state == "cancelled":
            fut.set_exception(TaskCancelledError(f"task {task_id} was cancelled"))
        else:
            remote = _load_exception(value) if value else None
            fut.set_exception(remote or RemoteTaskFailedError(f"task {task_id} failed: {error}"))
        return True

    def _listen(self) -> None:
        broker = self._broker
        assert broker is not None
        pubsub: Any = None
        last_poll = time.monotonic()
        while not self._closed.is_set():
            # Messages make results quick; the poll makes them certain (a
            # message published while the subscription was down is lost).
            try:
                if pubsub is None:
                    pubsub = broker.r.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(broker.keys.done)
                msg = pubsub.get_message(timeout=0.2)
                if msg is not None and self._waiters:
                    tid = int(msg["data"])
                    if tid in self._waiters:
                        self._settle(tid)
            except Exception as e:
                if self._closed.is_set():
                    break
                _log.warning("result listener: %s; resubscribing", e)
                _close_quietly(pubsub)
                pubsub = None
                self._closed.wait(0.2)
            if time.monotonic() - last_poll >= POLL:
                last_poll = time.monotonic()
                with self._lock:
                    outstanding = list(self._waiters)
                try:
                    for tid in outstanding:
                        self._settle(tid)
                except Exception as e:
                    _log.warning("result listener: %s; polling again in %.0fs", e, POLL)
        _close_quietly(pubsub)


def _gcra_windows(key_limits: Mapping[str, Any] | None) -> dict[str, list[list[float]]]:
    """``key_limits`` as GCRA windows per key: ``[[interval ms, tolerance ms],
    ...]`` (tolerance: ``burst - 1`` intervals). Concurrency caps are local only."""
    out: dict[str, list[list[float]]] = {}
    table = KeyLimits(key_limits)  # validates
    for key, specs in [*table.exact.items(), *table.patterns]:
        windows = []
        for spec in specs:
            if isinstance(spec, Concurrency):
                raise OptionTypeError(
                    f"Concurrency limits ({key!r}) are not available on a broker yet"
                )
            for rate, cap in spec.windows():
                interval = 1000.0 / rate
                burst = round(cap - rate * _TIMER_SLACK)
                windows.append([interval, (burst - 1) * interval])
        out[key] = windows
    return out


def _close_quietly(pubsub: Any) -> None:
    try:
        if pubsub is not None:
            pubsub.close()
    except Exception:
        pass


def _load_exception(data: bytes) -> BaseException | None:
    try:
        value = load_outcome(data)
    except Exception:
        return None
    return value if isinstance(value, BaseException) else None


def attempt_error(m: dict[str, Any], finished_at: float) -> AttemptError:
    """A failed task's last error, from its meta (the node's text of it)."""
    message = str(m.get("error", ""))
    return AttemptError(
        attempt=int(m["attempts"]),
        exc_type=message.split(":", 1)[0],
        message=message,
        traceback="",
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
