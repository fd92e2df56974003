"""A broker client's outcomes: one listener thread per client reads the
queue's ``done`` channel and resolves the waiting futures, and re-reads every
outstanding task once a second, so a missed message (the subscription was
reconnecting) only delays a result. Outcomes of the client's own tasks that
nobody awaits yet are kept (bounded), so ``result()`` after a burst costs no
round trip. Every value is opened (its signature checked) before it is
unpickled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

from ..errors import (
    ProcQueueError,
    QueueClosedError,
    QueueNotStartedError,
    RemoteTraceback,
    SerializationError,
    TaskCancelledError,
    TaskNotFoundError,
    UpstreamFailedError,
)
from ._codec import load_outcome, split_error
from ._protocol import Broker, Outcome, announcement_or_none
from ._signing import SignatureError

_log = logging.getLogger("procqueue.redis")

#: Seconds between re-reads of outstanding tasks (the pub/sub fallback).
POLL = 1.0


class RemoteTaskFailedError(ProcQueueError):
    """A task failed on a node and its exception could not be brought back
    (it did not pickle); the message is the node's text of it."""


class _Results:
    """The outcome side of a broker client (``_remote._RemoteCore`` is one):
    waiters, the early outcomes, the listener's loop. Thread-safe."""

    _broker: Broker | None

    def __init__(self) -> None:
        self._waiters: dict[int, Future[Any]] = {}
        #: Ids this client submitted and has not seen end (for ``join``).
        self.submitted: set[int] = set()
        self._early: OrderedDict[int, tuple[Outcome | None, bool] | SignatureError] = OrderedDict()
        self._early_bytes = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None

    def _b(self) -> Broker:
        if self._closed.is_set():
            raise QueueClosedError("this client is stopped")
        if self._broker is None:
            raise QueueNotStartedError("call 'await queue.start()' first")
        return self._broker

    # ------------------------------------------------------------------ outcomes

    def waiter(self, task_id: int) -> Future[Any]:
        self._b()
        with self._lock:
            fut = self._waiters.get(task_id)
            if fut is None:
                fut = self._waiters[task_id] = Future()
            early = self._early.pop(task_id, None)
            if early is not None:
                self._early_bytes -= _outcome_size(early)
        if early is not None:  # read with others of its burst when it ended
            self._resolve(task_id, early, new_waiter=True)
            return fut
        # Already final (or unknown) before we waited: settle now, not on a message.
        self._settle(task_id, new_waiter=True)
        return fut

    def _settle(self, task_id: int, new_waiter: bool = False) -> bool:
        """Resolve ``task_id``'s waiter if it is final; True if it was. A new
        waiter for a task the queue does not know fails with TaskNotFoundError."""
        broker = self._broker
        assert broker is not None
        try:
            found: tuple[Outcome | None, bool] | SignatureError = broker.lookup(task_id)
        except SignatureError as e:
            found = e
        return self._resolve(task_id, found, new_waiter)

    def _settle_ended(self, task_ids: list[int], carried: dict[int, bytes] | None = None) -> None:
        """Tasks announced as ended: one read for the lot, none for those
        whose value came in the message (``carried``: id -> sealed value;
        one that fails its check is read like the rest).
        Waiters are resolved; this client's own tasks nobody waits on yet keep
        their outcome here (bounded), so that a ``result()`` after a burst
        costs no round trip of its own (it was one read per result, half the
        cost of a no-op task end to end)."""
        broker = self._broker
        assert broker is not None
        found_all: list[tuple[tuple[Outcome | None, bool] | SignatureError, int]] = []
        reread = list(task_ids)
        for tid, sealed in (carried or {}).items():
            try:
                found_all.append((broker.carried(tid, sealed), tid))
            except SignatureError as e:
                # Anyone who may publish on the channel can send this: the
                # stored outcome decides, not the message.
                _log.warning("task %d: a done message carried a bad value (%s); reading it", tid, e)
                reread.append(tid)
        if reread:
            found_all += zip(broker.lookup_many(reread), reread)
        for found, tid in found_all:
            with self._lock:
                waited = tid in self._waiters
                own = tid in self.submitted
            if waited:
                self._resolve(tid, found)
            elif own and (isinstance(found, SignatureError) or found[0] is not None):
                self._keep_early(tid, found)

    def _keep_early(self, tid: int, found: tuple[Outcome | None, bool] | SignatureError) -> None:
        size = _outcome_size(found)
        with self._lock:
            waited = tid in self._waiters  # awaited since we looked: resolve it instead
            if not waited:
                early = self._early
                early[tid] = found
                self._early_bytes += size
                while early and (len(early) > EARLY_MAX or self._early_bytes > EARLY_BYTES):
                    _, dropped = early.popitem(last=False)  # read again if awaited later
                    self._early_bytes -= _outcome_size(dropped)
        if waited:
            self._resolve(tid, found)

    def _resolve(
        self,
        task_id: int,
        found: tuple[Outcome | None, bool] | SignatureError,
        new_waiter: bool = False,
    ) -> bool:
        exc: BaseException | None = None
        if isinstance(found, SignatureError):
            outcome: Outcome | None = Outcome("signature", None, str(found))
            known, exc = True, found
        else:
            outcome, known = found
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
        state, value, error, upstream = outcome
        try:
            if exc is not None:
                fut.set_exception(exc)
            elif state == "completed":
                fut.set_result(load_outcome(value) if value else None)
            elif state == "cancelled":
                text = error if error and error != "cancelled" else f"task {task_id} was cancelled"
                fut.set_exception(TaskCancelledError(text))
            elif upstream is not None:
                fut.set_exception(self._upstream_failure(error, upstream))
            else:
                fut.set_exception(_remote_error(task_id, value, error))
        except Exception as e:
            # Its waiter is already taken off the list: it must be settled
            # here, or nobody would. A value whose class this client cannot
            # import (a module only the nodes have) lands here.
            if not fut.done():
                fut.set_exception(
                    SerializationError(
                        f"task {task_id} {state}, but its outcome does not unpickle "
                        f"here: {type(e).__name__}: {e}"
                    )
                )
        return True

    def _upstream_failure(self, error: str, upstream: int) -> UpstreamFailedError:
        """The ``UpstreamFailedError`` of a task its failed ``upstream`` ended
        unrun, with the upstream's own error as ``__cause__`` (down a chain:
        each link's), as a local queue gives it, while those are still kept."""
        broker = self._broker
        assert broker is not None
        head = link = UpstreamFailedError(_message(error), upstream)
        for _ in range(1000):  # a chain of dependents ended unrun; bounded
            try:
                outcome = broker.lookup(upstream)[0]
            except SignatureError:
                break
            if outcome is None or outcome.state != "failed":
                break
            if outcome.upstream is None:  # the task that really failed
                link.__cause__ = _remote_error(upstream, outcome.value, outcome.error)
                break
            upstream = outcome.upstream
            nxt = UpstreamFailedError(_message(outcome.error), upstream)
            link.__cause__ = nxt
            link = nxt
        return head

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
                ended: list[int] = []
                carried: dict[int, bytes] = {}
                while msg is not None:  # a burst: read what else arrived, then one lookup
                    for tid, sealed in announcement_or_none(msg["data"]).items():
                        if tid in self._waiters or tid in self.submitted:
                            if sealed is None:
                                ended.append(tid)
                            else:
                                carried[tid] = sealed
                    if len(ended) + len(carried) >= 512:
                        break
                    msg = pubsub.get_message(timeout=0)
                if ended or carried:
                    self._settle_ended(ended, carried)
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
                    for start in range(0, len(outstanding), 512):
                        self._settle_ended(outstanding[start : start + 512])
                except Exception as e:
                    _log.warning("result listener: %s; polling again in %.0fs", e, POLL)
        _close_quietly(pubsub)


#: Outcomes of this client's own tasks read before anyone awaited them: at
#: most this many, and this many bytes of values.
EARLY_MAX = 10_000
EARLY_BYTES = 64 << 20


def _outcome_size(found: tuple[Outcome | None, bool] | SignatureError) -> int:
    if isinstance(found, SignatureError) or found[0] is None:
        return 64
    return 64 + len(found[0].value or b"") + len(found[0].error)


def _remote_error(task_id: int, value: bytes | None, error: str) -> BaseException:
    """A failed task's exception as its node pickled it (else one standing in
    for it), the worker's traceback as ``__cause__``, as a local queue gives it."""
    message, tb = split_error(error)
    exc = _load_exception(value) if value else None
    if exc is None:
        exc = RemoteTaskFailedError(f"task {task_id} failed: {message}")
    if tb and exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}\n"""')
    return exc


def _message(error: str) -> str:
    """``"UpstreamFailedError: text"`` (how errors are stored) -> ``text``."""
    error = split_error(error)[0]
    prefix = "UpstreamFailedError: "
    return error[len(prefix) :] if error.startswith(prefix) else error


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
