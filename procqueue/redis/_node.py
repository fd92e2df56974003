"""A worker node: claims tasks from a Redis queue and runs them on the local
engine, whose own supervision (crash recovery, timeouts, memory limits, no
orphans) is unchanged.

Threads, and who does what::

    main (run)            claim up to the free capacity  -> local engine (ProcQueue)
                          idle: BLPOP on the wake list (a submit pushes a token),
                          with a timeout no longer than the next delayed task
    done callbacks        queue (id, outcome) for the reporter; nothing blocks there
    reporter              finish() each outcome, fenced by its token
    keeper                every lease/3: renew every held lease (the reply says
                          which were lost and which to cancel), heartbeat, reclaim
                          expired leases of dead nodes

Retries are Redis's: a claimed attempt runs once here (no local retry) and its
error is reported as ``error``; the FINISH script retries it with backoff while
attempts (counted at claim) remain. A node's tasks outlive a lease only while
the keeper renews it: a frozen or partitioned node loses them, and its late
results are fenced off.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from typing import Any

from .._policy import RetryPolicy
from .._runtime.futures import _TaskFuture
from ..errors import TaskCancelledError
from ..executor import ProcQueue, task_id
from ._codec import bind_call, dump_outcome, error_text, load_call
from ._protocol import Broker, Claimed

__all__ = ["Node"]

_log = logging.getLogger("procqueue.node")


class Node:
    """One node serving ``broker``'s queue with ``workers`` local processes."""

    def __init__(
        self,
        broker: Broker,
        workers: int,
        *,
        lease: float = 30.0,
        prefetch: int | None = None,
        start_method: str | None = None,
    ) -> None:
        self.broker = broker
        self.workers = workers
        self.lease = lease
        #: Tasks held beyond the running ones (claimed ahead, one round trip saved).
        self.extra = workers if prefetch is None else prefetch
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._pool_options: dict[str, Any] = {
            "retry": RetryPolicy(max_retries=0),
            "start_method": start_method,
        }
        self.pool: ProcQueue | None = None
        # id -> (token, local future); guarded by _lock.
        self._held: dict[int, tuple[int, Future[Any]]] = {}
        self._outbox: deque[tuple[int, int, str, bytes, str]] = deque()
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._finished = threading.Event()  # every held task reported: the keeper ends
        self._backoff = _Backoff()
        self.completed = 0

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop claiming; what is held runs to its end and is reported (SIGTERM)."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()

    def run(self) -> None:
        """Serve until :meth:`stop`; returns once every held task is reported."""
        self.pool = ProcQueue(self.workers, **self._pool_options)
        threads = [
            threading.Thread(target=self._reporter, name="pq-node-reporter", daemon=True),
            threading.Thread(target=self._keeper, name="pq-node-keeper", daemon=True),
            threading.Thread(target=self._clock, name="pq-node-clock", daemon=True),
        ]
        for t in threads:
            t.start()
        self._beat()
        _log.info(
            "node %s serving queue %r with %d workers", self.owner, self.broker.queue, self.workers
        )
        try:
            self._claim_loop()
        finally:
            self._drain()
            self._stopping.set()
            self._finished.set()
            with self._lock:
                self._lock.notify_all()
            for t in threads:
                t.join()
            self.pool.shutdown(wait=True)
            try:
                self.broker.r.hdel(self.broker.keys.nodes, self.owner)
            except _redis_errors():
                pass  # its heartbeat ages out
            _log.info("node %s stopped after %d tasks", self.owner, self.completed)

    # ------------------------------------------------------------------ claiming

    def _claim_loop(self) -> None:
        broker = self.broker
        capacity = self.workers + self.extra
        batch = max(1, self.extra)
        while not self._stopping.is_set():
            with self._lock:
                # Claim in batches of ``extra`` (one CLAIM per batch, not per
                # task), but at once whenever a worker would otherwise idle.
                while not self._stopping.is_set() and (
                    len(self._held) >= capacity
                    or (len(self._held) >= self.workers and capacity - len(self._held) < batch)
                ):
                    self._lock.wait()
                free = capacity - len(self._held)
            if self._stopping.is_set():
                return
            try:
                claimed = broker.claim(free, self.lease, self.owner)
                if not claimed:
                    # Idle: block on the wake list (one token per submit), no
                    # longer than until the next delayed task is due.
                    broker.r.blpop([broker.keys.wake], timeout=self._idle_wait())
            except _redis_errors() as e:
                self._backoff.failed("claim", e, self._stopping)
                continue
            self._backoff.reset()
            for c in claimed:
                self._start(c)

    def _idle_wait(self) -> float:
        broker = self.broker
        with broker.r.pipeline(transaction=False) as p:  # one round trip
            p.zrange(broker.keys.delayed, 0, 0, withscores=True)
            p.time()
            nxt, (sec, usec) = p.execute()
        if not nxt:
            return 1.0
        now_ms = sec * 1000 + usec // 1000
        return float(min(1.0, max(0.01, (nxt[0][1] - now_ms) / 1000.0)))

    def _start(self, c: Claimed) -> None:
        if c.payload is None:
            return  # failed its signature check: dead-lettered, never run
        pool = self.pool
        assert pool is not None
        engine = pool._engine
        fut = _TaskFuture()
        # A dependent's result_of markers are bound in the worker, not here
        # (this process never unpickles user data): see _codec.bind_call.
        payload = bind_call(c.payload, c.inputs) if c.inputs else load_call(c.payload)
        rec = engine.new_record(c.name, 0, payload, None, c.timeout, fut)
        with self._lock:
            self._held[c.task_id] = (c.token, fut)
        try:
            engine.enqueue(rec)
        except Exception as e:  # the local pool is closing or broken
            with self._lock:
                self._held.pop(c.task_id, None)
            self._report(c.task_id, c.token, "error", b"", f"{type(e).__name__}: {e}")
            return
        fut.add_done_callback(functools.partial(self._done, c))

    def _done(self, c: Claimed, fut: Future[Any]) -> None:
        # In the engine's publishing thread: hand over, never block here.
        if fut.cancelled():
            outcome, value, error = "cancelled", b"", "cancelled"
        else:
            exc = fut.exception()
            if exc is None:
                outcome, value, error = "completed", _safe_dump(fut.result()), ""
            else:
                cancelled = isinstance(exc, TaskCancelledError)
                outcome = "cancelled" if cancelled else "error"
                value, error = _safe_dump(exc), error_text(exc)
        self._report(c.task_id, c.token, outcome, value, error)

    def _report(self, tid: int, token: int, outcome: str, value: bytes, error: str) -> None:
        with self._lock:
            self._outbox.append((tid, token, outcome, value, error))
            self._lock.notify_all()

    def _reporter(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not (self._stopping.is_set() and not self._held):
                    self._lock.wait()
                if not self._outbox:
                    return
                # Every outcome waiting, in one pipelined round trip.
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 256))]
            self._finish(batch)
            with self._lock:
                for tid, _, outcome, _, _ in batch:
                    self._held.pop(tid, None)
                    self.completed += outcome == "completed"
                self._lock.notify_all()

    def _finish(self, batch: list[tuple[int, int, str, bytes, str]]) -> None:
        """Report outcomes, retrying while Redis is unreachable, for at most
        two leases: after that the leases have expired, the tasks were (or
        will be) reclaimed, and the reports would be fenced off anyway."""
        give_up = time.monotonic() + 2 * self.lease
        backoff = _Backoff()
        while True:
            try:
                self.broker.finish_many(batch)
                return
            except _redis_errors() as e:
                if time.monotonic() >= give_up:
                    ids = [b[0] for b in batch]
                    _log.error("tasks %s: outcomes not reported (%s); reclaimed later", ids, e)
                    return
                backoff.failed(f"report of {len(batch)} outcome(s)", e, None)

    def _drain(self) -> None:
        """Wait for every held task to be reported (graceful stop)."""
        with self._lock:
            while self._held:
                self._lock.wait()

    # ------------------------------------------------------------------ leases

    def _keeper(self) -> None:
        # Renews until every held task is reported, stopping or not: a task
        # finishing after SIGTERM must keep its lease.
        period = self.lease / 3
        while not self._finished.wait(period):
            try:
                self._renew()
                self._beat()
                self.broker.reclaim()
            except Exception:
                _log.exception("lease renewal failed; retrying in %.1fs", period)

    def _clock(self) -> None:
        """Fire the queue's due schedules (each tick once across all nodes)."""
        from ._cron import evaluate

        backoff = _Backoff()
        while not self._stopping.is_set():
            try:
                wait = evaluate(self.broker)
                backoff.reset()
            except _redis_errors() as e:
                backoff.failed("schedules", e, self._stopping)
                continue
            except Exception:
                _log.exception("schedules: evaluation failed; retrying")
                wait = 1.0
            self._stopping.wait(wait)

    def _renew(self) -> None:
        with self._lock:
            held = [(tid, token) for tid, (token, _) in self._held.items()]
        lost, cancels = self.broker.renew(self.owner, held, self.lease)
        pool = self.pool
        assert pool is not None
        for tid in lost + cancels:
            with self._lock:
                entry = self._held.get(tid)
            if entry is None:
                continue
            why = "was cancelled" if tid in cancels else "lost its lease"
            _log.warning("task %d %s: killing it here", tid, why)
            pool._engine.request_cancel(task_id(entry[1]))

    def _beat(self) -> None:
        pool = self.pool
        procs = [dataclasses.asdict(w) for w in pool.get_stats().workers] if pool else []
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "workers": self.workers,
            "held": len(self._held),
            "beat": time.time(),
            "processes": procs,
        }
        self.broker.r.hset(self.broker.keys.nodes, self.owner, json.dumps(info))


class _Backoff:
    """Waits between retries while Redis is unreachable: 0.1 s doubling to 5 s."""

    def __init__(self) -> None:
        self.delay = 0.0

    def reset(self) -> None:
        if self.delay:
            _log.info("Redis is reachable again")
        self.delay = 0.0

    def failed(self, what: str, error: BaseException, stop: threading.Event | None) -> None:
        self.delay = min(5.0, max(0.1, self.delay * 2))
        _log.warning("%s: Redis unreachable (%s); retrying in %.1fs", what, error, self.delay)
        if stop is None:
            time.sleep(self.delay)  # a bounded wait for the server to come back
        else:
            stop.wait(self.delay)


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _safe_dump(value: Any) -> bytes:
    try:
        return dump_outcome(value)
    except Exception as e:
        return dump_outcome(RuntimeError(f"the task's outcome could not be pickled: {e!r}"))
