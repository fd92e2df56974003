"""A worker node: claims tasks from a Redis queue and runs them on the local
engine, whose own supervision (crash recovery, timeouts, memory limits, no
orphans) is unchanged.

Threads, and who does what::

    main (run)            claim up to the free capacity  -> local engine (ProcQueue);
                          (the reporter claims too, when its reports free room)
                          the capacity beyond the workers (prefetch) adapts to
                          the node's completion rate: ~PREFETCH_WINDOW of work
                          idle: BLPOP on the wake list (a submit pushes a token),
                          with a timeout no longer than the next delayed task
    done callbacks        queue (id, outcome) for the reporter; nothing blocks there
    reporter              every outcome waiting, in one FINISH run (each fenced
                          by its token)
    keeper                every lease/3: renew every held lease (the reply says
                          which were lost and which to cancel; a failed renewal
                          is retried after a short backoff), heartbeat (and
                          drop dead nodes' entries); and, then and when the
                          queue's earliest lease ends, reclaim expired leases
                          of dead nodes

Retries are Redis's: a claimed attempt runs once here (no local retry) and its
error is reported as ``error``; the FINISH script retries it with backoff while
attempts (counted at claim, less the refunded lost leases: LOST_FREE in
_scripts_node.py) remain. A node's tasks outlive a lease only while
the keeper renews it: a frozen or partitioned node loses them, and its late
results are fenced off.

Every entry of ``_held`` is one attempt, ``(token, local future)``: a node
whose lease lapsed (a missed renewal) may claim the same task again, under a
new token. The new attempt replaces the old one, whose local copy is
cancelled; whatever ends the old copy, its report and its renewal reply touch
nothing of the new one (each lookup compares tokens).

Redis failing (unreachable, or refusing: OOM, READONLY during a failover,
BUSY) never ends a thread: claims, reports and renewals are retried with
backoff. An error of any other kind in the reporter is logged, and the
batch's tasks are let go: their leases lapse and other nodes rerun them.
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

from .._core.records import TaskProgress, _TaskRecord
from .._policy import RetryPolicy
from .._runtime.futures import _TaskFuture
from ..errors import TaskCancelledError
from ..executor import ProcQueue, task_id
from ._backoff import Backoff, redis_errors, transient
from ._codec import bind_call, dump_outcome, encodable, error_text, load_call, node_gone
from ._protocol import Broker, Claimed

__all__ = ["Node"]

_log = logging.getLogger("procqueue.node")

#: Adaptive prefetch (``--prefetch`` not given): a node holds, beyond one task
#: per worker, about this many seconds of work at its recent completion rate,
#: so that short tasks are claimed in large batches (one CLAIM round trip for
#: many tasks: the lever of issue #9) while long ones are not hoarded away
#: from idle nodes: at 20 ms a task the extra stays at its floor. (SAQ's
#: worker, saq/worker.py ``process`` over saq/queue/redis.py ``dequeue``, takes
#: one job per BLMOVE and writes each outcome with its own round trips; a
#: node here claims and reports whole batches instead.)
PREFETCH_WINDOW = 0.02
#: The most tasks an adaptive node holds beyond its workers.
MAX_EXTRA = 128
#: After a claim that found fewer tasks than it asked for, a node still
#: holding tasks waits up to this long (s) before claiming again (Nagle's
#: algorithm, for claims): a task arriving meanwhile starts at most this much
#: later, and only while its node's workers have work.
LINGER = 0.002
#: The shortest wait (s) between two reclaims by one node's keeper, which
#: otherwise reclaims as soon as the queue's earliest lease ends (a live
#: node's lease is renewed before that: the reclaim finds nothing, cheaply).
RECLAIM_GAP = 0.05
#: The first wait (s) before a failed lease renewal is tried again (doubling,
#: up to a third of the lease): a renewal waiting a whole third of a lease
#: after one failure lost every lease after two.
RENEW_RETRY = 0.1
#: A node's heartbeat (every third of its lease) drops dead nodes' entries
#: from the node list once in this many beats (and at its first): the read
#: of every entry costs more than the write of its own.
PRUNE_EVERY = 3


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
        #: Tasks held beyond the running ones (claimed ahead, one round trip
        #: saved); with ``prefetch=None``, the floor of an adaptive amount.
        self.extra = workers if prefetch is None else prefetch
        self._adaptive = prefetch is None
        self._pace = _Pace()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._pool_options: dict[str, Any] = {
            "retry": RetryPolicy(max_retries=0),
            "start_method": start_method,
        }
        self.pool: ProcQueue | None = None
        # id -> (token, local future) of the attempt this node holds now (an
        # older attempt's entry is replaced: see the module docstring);
        # guarded by _lock.
        self._held: dict[int, tuple[int, Future[Any]]] = {}
        self._outbox: deque[tuple[int, int, str, bytes, str]] = deque()
        # report_progress of held tasks, by cluster id (the last one wins),
        # for the reporter to write; the engine's record id -> (cluster id,
        # token).
        self._progress: dict[int, TaskProgress] = {}
        self._local_ids: dict[int, tuple[int, int]] = {}
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._finished = threading.Event()  # every held task reported: the keeper ends
        self._backoff = Backoff()
        self._beats = 0  # heartbeats written: every PRUNE_EVERY-th also prunes
        self.completed = 0
        # One thread claims at a time (the claim loop, or the reporter when
        # outcomes free room); a short claim lingers (LINGER). Under _lock.
        self._claiming = False
        self._linger_until = 0.0
        # The last claim left the ready set empty (CLAIM says how many are
        # left): the next one waits for a wake token. Under _lock.
        self._dry = False

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop claiming; what is held runs to its end and is reported (SIGTERM)."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()

    def run(self) -> None:
        """Serve until :meth:`stop`; returns once every held task is reported."""
        self.pool = ProcQueue(self.workers, **self._pool_options)
        self.pool._engine.watch_progress(self._on_progress)
        threads = [
            threading.Thread(target=self._reporter, name="pq-node-reporter", daemon=True),
            threading.Thread(target=self._keeper, name="pq-node-keeper", daemon=True),
            threading.Thread(target=self._clock, name="pq-node-clock", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            self._beat()
        except Exception as e:  # the keeper beats again; the threads must be joined
            _log.warning("heartbeat failed (%r)", e)
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
            keys = self.broker.keys
            try:
                with self.broker.r.pipeline(transaction=False) as p:
                    p.hdel(keys.nodes, self.owner)
                    p.delete(keys.stop_node(self.owner))
                    p.execute()
            except redis_errors():
                pass  # its heartbeat ages out, its stop token expires
            _log.info("node %s stopped after %d tasks", self.owner, self.completed)

    # ------------------------------------------------------------------ claiming

    def _extra_now(self) -> int:
        """Tasks to hold beyond the workers now: ``extra``, or, adaptive,
        ``PREFETCH_WINDOW`` of work at the recent completion rate (at least
        ``extra``, at most ``MAX_EXTRA``)."""
        if not self._adaptive:
            return self.extra
        return max(self.extra, min(MAX_EXTRA, int(self._pace.rate * PREFETCH_WINDOW)))

    def _room(self, now: float) -> int:
        """How many tasks to claim now (under ``_lock``; 0: none). In batches
        (one CLAIM per batch, not per task): of ``extra``, or of half of a
        grown adaptive one (so the local queue is refilled before it runs
        dry); at once whenever a worker would otherwise idle, unless
        lingering (``LINGER``); never while another thread is claiming."""
        if self._claiming or self._stopping.is_set():
            return 0
        extra = self._extra_now()
        capacity = self.workers + extra
        batch = max(1, extra // 2 if extra > self.extra else extra)
        held = len(self._held)
        if held >= capacity or (held >= self.workers and capacity - held < batch):
            return 0
        if held and self._linger_until > now:
            return 0
        return capacity - held

    def _claim_loop(self) -> None:
        broker = self.broker
        while not self._stopping.is_set():
            with self._lock:
                while True:
                    now = time.monotonic()  # once: _room's linger and the wait agree
                    free = self._room(now)
                    if free or self._stopping.is_set():
                        break
                    linger = self._linger_until - now
                    lingering = self._held and not self._claiming and linger > 0
                    self._lock.wait(linger if lingering else None)
                if self._stopping.is_set():
                    return
                dry = self._dry
                self._claiming = not dry
            if dry:
                # The last claim emptied the ready set: claiming again finds
                # nothing until a submit's wake token comes (or a delayed
                # task falls due). Block on the wake list (one token per
                # task made ready), no longer than until the next delayed
                # task is due. Without this, an idle round trip cost two
                # empty CLAIMs (the node's CPU the client needs, on a small
                # machine: 0.1 ms of the round trip).
                # This node's stop token first: a stop wins over a wake.
                wait_on = [broker.keys.stop_node(self.owner), broker.keys.wake]
                try:
                    broker.r.blpop(wait_on, timeout=self._idle_wait())
                except redis_errors() as e:
                    self._backoff.failed("claim", e, self._stopping)
                with self._lock:
                    self._dry = False
                continue
            # Redis refusing (OOM, READONLY, BUSY: redis_errors) is retried
            # like Redis away: a node outlives a failover or a full server.
            try:
                self._claim(free)
            except redis_errors() as e:
                self._backoff.failed("claim", e, self._stopping)
                continue
            self._backoff.reset()

    def _claim(self, free: int) -> None:
        """Claim up to ``free`` tasks and start them (the caller set
        ``_claiming``; cleared here, also when Redis fails). Not once the
        node is stopping: a claim decided just before ``stop()`` is dropped.
        A short claim (the ready set ran dry: tasks come slower than this
        node runs them) sets the linger: while the node still holds work,
        its next claim waits up to LINGER for more to arrive instead of
        claiming them one by one (a CLAIM, a FINISH and a wake-up per task,
        which on a busy machine take the CPU the submitting clients need).
        A node holding nothing claims at once: no latency when idle. A claim
        that empties the ready set marks the node dry: the next claim waits
        for a wake token (``_claim_loop``)."""
        claimed: list[Claimed] = []
        dry = False
        try:
            if not self._stopping.is_set():
                claimed, dry = self.broker.claim_batch(free, self.lease, self.owner)
                self._start(claimed)
        finally:
            with self._lock:
                self._dry = dry
                short = 0 < len(claimed) < free
                self._linger_until = time.monotonic() + LINGER if short else 0.0
                self._claiming = False
                self._lock.notify_all()

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

    def _start(self, claimed: list[Claimed]) -> None:
        """Hand a claimed batch to the local engine: one task is stepped in
        this thread (straight down a worker's pipe: the idle round trip),
        a batch goes in with one lock round and one wake-up of the engine's
        coordinator (``enqueue_many``), not one step per task."""
        # A payload that failed its signature check was dead-lettered, never run.
        runnable = [c for c in claimed if c.payload is not None]
        if not runnable:
            return
        pool = self.pool
        assert pool is not None
        engine = pool._engine
        started = []
        for c in runnable:
            assert c.payload is not None
            fut = _TaskFuture()
            # A dependent's result_of markers are bound in the worker, not here
            # (this process never unpickles user data): see _codec.bind_call.
            payload = bind_call(c.payload, c.inputs) if c.inputs else load_call(c.payload)
            started.append((c, fut, engine.new_record(c.name, 0, payload, None, c.timeout, fut)))
        superseded = []
        with self._lock:
            for c, fut, rec in started:
                old = self._held.get(c.task_id)
                if old is not None and old[0] != c.token:
                    # Claimed again: this node's lease lapsed (a missed
                    # renewal) and the task was reclaimed. The old copy is
                    # cancelled, its report fenced off in Redis; the new
                    # attempt is the one held and renewed.
                    superseded.append((c.task_id, old))
                self._held[c.task_id] = (c.token, fut)
                self._local_ids[rec.task_id] = (c.task_id, c.token)
        for tid, (token, old_fut) in superseded:
            _log.warning("task %d claimed again: killing its stale attempt (token %d)", tid, token)
            self._cancel_local(old_fut)
        try:
            if len(started) == 1:
                engine.enqueue(started[0][2])
            else:
                engine.enqueue_many([rec for _, _, rec in started])
        except Exception as e:  # the local pool is closing or broken
            with self._lock:
                for c, _, rec in started:
                    self._release(c.task_id, c.token)
                    self._local_ids.pop(rec.task_id, None)
            for c, _, _ in started:
                error = encodable(f"{type(e).__name__}: {e}")
                self._report(c.task_id, c.token, "error", b"", error)
            return
        for c, fut, rec in started:
            fut.add_done_callback(functools.partial(self._done, c, rec))

    def _release(self, tid: int, token: int) -> bool:
        """Forget attempt ``(tid, token)`` (under ``_lock``), unless a newer
        attempt of the task is held: that one's entry stays. True if dropped."""
        entry = self._held.get(tid)
        if entry is None or entry[0] != token:
            return False
        del self._held[tid]
        return True

    def _cancel_local(self, fut: Future[Any]) -> None:
        """Cancel a local copy (killed if running), as a lost lease's is."""
        pool = self.pool
        assert pool is not None
        try:
            pool._engine.request_cancel(task_id(fut))
        except Exception:  # already gone from the engine: nothing to kill
            _log.debug("local copy already gone", exc_info=True)

    def _on_progress(self, local_id: int, progress: TaskProgress) -> None:
        # In the engine's coordinator thread: note it, the reporter writes it.
        with self._lock:
            ids = self._local_ids.get(local_id)
            # Not a superseded copy's: it would overwrite the new attempt's.
            if ids is not None and self._holds(*ids):
                self._progress[ids[0]] = progress
                self._lock.notify_all()

    def _done(self, c: Claimed, rec: _TaskRecord, fut: Future[Any]) -> None:
        # In the engine's publishing thread: hand over, never block here.
        with self._lock:
            self._local_ids.pop(rec.task_id, None)
            # Its last report (a final one comes ahead of the result, but may
            # reach the watchers after this callback): written before the
            # outcome, in the same reporter round.
            if rec.progress is not None and self._holds(c.task_id, c.token):
                self._progress[c.task_id] = rec.progress
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

    def _holds(self, tid: int, token: int) -> bool:
        """Whether attempt ``(tid, token)`` is the one held (under ``_lock``)."""
        entry = self._held.get(tid)
        return entry is not None and entry[0] == token

    def _report(self, tid: int, token: int, outcome: str, value: bytes, error: str) -> None:
        with self._lock:
            self._outbox.append((tid, token, outcome, value, error))
            self._lock.notify_all()

    def _reporter(self) -> None:
        while True:
            with self._lock:
                while (
                    not self._outbox
                    and not self._progress
                    and not (self._stopping.is_set() and not self._held and not self._claiming)
                ):
                    self._lock.wait()
                progress, self._progress = self._progress, {}
                if not self._outbox and not progress:
                    return
                # Every outcome waiting, in one pipelined round trip.
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 256))]
            if progress:
                self._write_progress(progress)  # logs its errors, never raises
            if not batch:
                continue
            try:
                self._finish(batch)
            except Exception:
                # The reporter must live on: it alone frees _held, which the
                # keeper renews and the drain waits for. The batch is let go
                # below as if reported; its leases lapse and other nodes (or
                # this one) reclaim and rerun those tasks.
                ids = [b[0] for b in batch]
                _log.exception("tasks %s: outcomes not reported; their leases will lapse", ids)
            with self._lock:
                for tid, token, outcome, _, _ in batch:
                    # Only this attempt's entry: a task claimed again since
                    # holds a newer token, whose lease must be renewed on.
                    self._release(tid, token)
                    self.completed += outcome == "completed"
                self._pace.add(len(batch), time.monotonic())
                # Room freed: claim here, not by waking the claim loop (one
                # thread wake-up less per batch of outcomes: with ~20 ms
                # tasks, each wake-up of a cold thread cost ~0.3 ms of CPU).
                # Not when dry: the ready set was empty at the last claim and
                # the claim loop waits for a wake token.
                free = 0 if self._dry else self._room(time.monotonic())
                if free:
                    self._claiming = True  # _claim notifies when it is done
                else:
                    self._lock.notify_all()
            if free:
                try:
                    self._claim(free)
                except redis_errors() as e:  # the claim loop retries, with backoff
                    _log.debug("claim after a report failed: %s", e)
                except Exception:  # the reporter must live on: it drains the node
                    _log.exception("claim after a report failed; the claim loop retries")

    def _write_progress(self, progress: dict[int, TaskProgress]) -> None:
        """The last report of each task, for clients' ``get_task_status``:
        plain JSON (no pickle: nothing to sign), kept ``result_ttl``. Best
        effort: a report lost while Redis is away is followed by the next."""
        broker = self.broker
        try:
            with broker.r.pipeline(transaction=False) as p:
                for tid, pr in progress.items():
                    doc = {"done": pr.done, "total": pr.total, "message": pr.message}
                    p.set(broker.keys.progress(tid), json.dumps(doc), ex=broker.result_ttl)
                p.execute()
        except redis_errors() as e:
            _log.warning("progress of %d task(s) not written: %s", len(progress), e)
        except Exception:  # never the reporter's end: outcomes come next
            _log.exception("progress of %d task(s) not written", len(progress))

    def _finish(
        self, batch: list[tuple[int, int, str, bytes, str]], give_up: float | None = None
    ) -> None:
        """Report outcomes, retrying while Redis is unreachable or refuses for
        a while (OOM, READONLY, BUSY: :func:`transient`), until ``give_up``
        (two leases from now): after that the leases have expired, the tasks
        were (or will be) reclaimed, and the reports would be fenced off
        anyway. An error of another kind (an outcome Redis cannot be sent, an
        error reply about this batch) is not retried: the batch is reported
        one outcome at a time, within the same ``give_up``, so that only the
        bad one is lost; that one raises."""
        if give_up is None:
            give_up = time.monotonic() + 2 * self.lease
        backoff = Backoff()
        while True:
            try:
                self.broker.finish_many(batch)
                return
            except redis_errors() as e:
                if not transient(e):
                    if len(batch) == 1:
                        raise
                    break
                if time.monotonic() >= give_up:
                    ids = [b[0] for b in batch]
                    _log.error("tasks %s: outcomes not reported (%s); reclaimed later", ids, e)
                    return
                backoff.failed(f"report of {len(batch)} outcome(s)", e, None)
            except Exception:
                if len(batch) == 1:
                    raise
                break
        for one in batch:
            try:
                self._finish([one], give_up)
            except Exception:  # the reporter lets it go with the rest
                _log.exception("task %d: outcome not reported; its lease will lapse", one[0])

    def _drain(self) -> None:
        """Wait for every held task to be reported (graceful stop), and for
        a claim under way (the reporter's) to have started what it took."""
        with self._lock:
            while self._held or self._claiming:
                self._lock.wait()

    # ------------------------------------------------------------------ leases

    def _keeper(self) -> None:
        # Renews until every held task is reported, stopping or not: a task
        # finishing after SIGTERM must keep its lease. Reclaims every renewal,
        # and also as soon as the queue's earliest lease ends: a dead node's
        # tasks come back when its lease expires, not up to a third of a
        # lease later (the reclaim row of benchmarks/redis_peers.py).
        # A failed renewal is retried after RENEW_RETRY, doubling up to a
        # period: soon enough that one failure costs no lease, and no more
        # than a few calls a second while Redis is away.
        period = self.lease / 3
        renew_at = time.monotonic() + period
        retry = 0.0
        while True:
            wait = renew_at - time.monotonic()
            try:
                expiry = self._next_expiry()
            except Exception:
                expiry = None  # the renewal below reports Redis's trouble
            if expiry is not None:
                wait = min(wait, max(RECLAIM_GAP, expiry + 0.005))
            if self._finished.wait(max(0.0, wait)):
                return
            if time.monotonic() >= renew_at:
                try:
                    self._renew()
                except Exception as e:
                    retry = min(period, max(RENEW_RETRY, retry * 2))
                    renew_at = time.monotonic() + retry
                    _log.warning(
                        "lease renewal failed (%r); retrying in %.1fs",
                        e,
                        retry,
                        exc_info=not isinstance(e, redis_errors()),  # a bug: its traceback
                    )
                    continue
                if retry:
                    _log.info("leases renewed again")
                retry = 0.0
                renew_at = time.monotonic() + period
                try:
                    self._beat()
                except Exception as e:  # the next one, a period later, will do
                    _log.warning("heartbeat failed (%r)", e)
            try:
                self.broker.reclaim()
            except Exception as e:
                _log.warning("reclaim failed (%r); retrying", e)

    def _next_expiry(self) -> float | None:
        """Seconds until the queue's earliest lease ends, on Redis's clock
        (``None``: no task is leased), in one round trip."""
        broker = self.broker
        with broker.r.pipeline(transaction=False) as p:
            p.zrange(broker.keys.leases, 0, 0, withscores=True)
            p.time()
            first, (sec, usec) = p.execute()
        if not first:
            return None
        return float(first[0][1] - (int(sec) * 1000 + int(usec) // 1000)) / 1000.0

    def _clock(self) -> None:
        """Fire the queue's due schedules (each tick once across all nodes)."""
        from ._cron import evaluate

        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                wait = evaluate(self.broker)
                backoff.reset()
            except redis_errors() as e:
                backoff.failed("schedules", e, self._stopping)
                continue
            except Exception:
                _log.exception("schedules: evaluation failed; retrying")
                wait = 1.0
            self._stopping.wait(wait)
        self._end_idle_wait()

    def _end_idle_wait(self) -> None:
        """The node is stopping: end the claim loop's BLPOP now, not at its
        timeout (up to a second of every stop). Pushed from this thread, not
        from :meth:`stop`: that runs in a signal handler, in the thread whose
        redis-py call may hold the connection pool's lock. A token of its own,
        not one on the shared wake list, which another node could take."""
        key = self.broker.keys.stop_node(self.owner)
        try:
            with self.broker.r.pipeline(transaction=False) as p:
                p.rpush(key, b"stop")
                p.expire(key, 60)  # a node that dies before deleting it
                p.execute()
        except redis_errors():
            pass  # Redis away: the BLPOP fails or times out on its own

    def _renew(self) -> None:
        with self._lock:
            held = {tid: token for tid, (token, _) in self._held.items()}
        lost, cancels = self.broker.renew(self.owner, list(held.items()), self.lease)
        for tid in lost + cancels:
            with self._lock:
                entry = self._held.get(tid)
            # The reply is about the attempt renewed: a task claimed again
            # meanwhile (a newer token) is not the one lost.
            if entry is None or entry[0] != held.get(tid):
                continue
            why = "was cancelled" if tid in cancels else "lost its lease"
            _log.warning("task %d %s: killing it here", tid, why)
            self._cancel_local(entry[1])

    def _beat(self) -> None:
        """Write this node's entry in ``{pq:Q}:nodes``, stamped with Redis's
        clock (the one ``get_stats`` ages it by), with its lease; and, every
        ``PRUNE_EVERY`` beats, delete the entries of nodes gone (older than
        ``GONE_AFTER_LEASES`` of their leases: ``_codec.node_gone``), which
        no clean stop removed (SIGKILL, a host lost)."""
        pool = self.pool
        procs = [dataclasses.asdict(w) for w in pool.get_stats().workers] if pool else []
        r, key = self.broker.r, self.broker.keys.nodes
        prune = self._beats % PRUNE_EVERY == 0
        self._beats += 1
        with r.pipeline(transaction=False) as p:
            p.time()
            if prune:
                p.hgetall(key)
            (sec, usec), *read = p.execute()
        now = int(sec) + int(usec) / 1e6
        entries: dict[bytes, bytes] = read[0] if read else {}
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "workers": self.workers,
            "held": len(self._held),
            "beat": now,
            "lease": self.lease,
            "processes": procs,
        }
        gone = [n for n, raw in entries.items() if n != self.owner.encode() and _gone(raw, now)]
        with r.pipeline(transaction=False) as p:
            p.hset(key, self.owner, json.dumps(info))
            if gone:
                # A node gone only for a while (paused past three leases)
                # writes its entry back at its next heartbeat.
                p.hdel(key, *gone)
            p.execute()
        if gone:
            _log.info("dropped %d dead node(s) from the node list: %s", len(gone), gone)


class _Pace:
    """A node's completions per second, smoothed (an exponentially weighted
    mean over ~``TAU`` seconds, updated at most every ``STEP``): sizes the
    adaptive prefetch. After an idle spell the first update brings it down
    (few completions over a long interval)."""

    TAU = 0.5
    STEP = 0.05

    def __init__(self) -> None:
        self.rate = 0.0
        self._since = time.monotonic()
        self._n = 0

    def add(self, n: int, now: float) -> None:
        self._n += n
        dt = now - self._since
        if dt < self.STEP:
            return
        self.rate += min(1.0, dt / self.TAU) * (self._n / dt - self.rate)
        self._since, self._n = now, 0


def _gone(raw: bytes, now: float) -> bool:
    """Whether a ``{pq:Q}:nodes`` entry is stale (unreadable ones are)."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return True
    return not isinstance(entry, dict) or node_gone(entry, now)


def _safe_dump(value: Any) -> bytes:
    try:
        return dump_outcome(value)
    except Exception as e:
        return dump_outcome(RuntimeError(f"the task's outcome could not be pickled: {e!r}"))
