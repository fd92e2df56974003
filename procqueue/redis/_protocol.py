"""``Broker``: the Redis side of one queue, as typed calls over the scripts in
``_scripts*.py``. Every blob it writes is sealed and every blob it reads is
opened (``_signing.py``) before anyone unpickles it; it never unpickles itself.

Not thread-safe per instance beyond what redis-py's connection pool gives;
each node and client holds its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._policy import RetryPolicy
from ..errors import (
    InvalidArgumentError,
    MissingExtraError,
    OptionTypeError,
    TaskNotFoundError,
)
from . import _scripts_client, _scripts_node, _scripts_schedules
from ._keys import Keys
from ._lanes import Lanes
from ._protocol_admin import AdminCalls
from ._scripts import KEYS_OF
from ._signing import RESULT, TASK, SignatureError, Signer

__all__ = ["Broker", "Claimed", "Input", "Outcome", "connect"]

_log = logging.getLogger("procqueue.redis")

#: Priorities must fit the ready score (``-priority * 2**32 + seq`` in a double).
MAX_PRIORITY = 2**20
#: Ids reserved per ``INCRBY`` round trip.
ID_BLOCK = 256
#: What :meth:`Broker.finish` records.
OUTCOMES = frozenset(("completed", "error", "retry", "failed", "cancelled"))


def announced(data: bytes) -> list[int]:
    """The task ids in a message of the ``done`` channel."""
    return list(announcement(data))


def announcement(data: bytes) -> dict[int, bytes | None]:
    """A message of the ``done`` channel: the ids of the tasks that ended,
    each with its sealed value where the message carries it (a completed
    task's, up to ``INLINE_MAX`` bytes), else ``None`` (``lookup_many``
    reads it). One id, comma-separated ids, or ``~``, inline entries
    ``<id>:<size>:<bytes>``, then ``|`` and comma-separated ids (the
    ``announce`` and ``flush`` of the scripts)."""
    if data[:1] != b"~":
        return dict.fromkeys(int(x) for x in data.split(b","))
    out: dict[int, bytes | None] = {}
    pos, n = 1, len(data)
    while pos < n and data[pos] != 0x7C:  # b"|": the ids without a value follow
        c1 = data.index(b":", pos)
        c2 = data.index(b":", c1 + 1)
        size = data[c1 + 1 : c2]
        if not size.isdigit():  # anyone may publish here: no sign, no blank, no "_"
            raise ValueError(f"a done message with a bad size {bytes(size[:20])!r}")
        end = c2 + 1 + int(size)
        if end > n:
            raise ValueError("a done message cut short")
        out[int(data[pos:c1])] = data[c2 + 1 : end]
        pos = end
    if pos < n:
        out.update(dict.fromkeys(int(x) for x in data[pos + 1 :].split(b",")))
    return out


def announcement_or_none(data: bytes) -> dict[int, bytes | None]:
    """:func:`announcement`, or nothing (logged) for a malformed message:
    anyone allowed to publish on the channel can send one, and it must not
    make a listener drop its burst and resubscribe."""
    try:
        return announcement(data)
    except (ValueError, TypeError) as e:
        _log.warning("a malformed message on the done channel was ignored: %s", e)
        return {}


def connect(url: str) -> Any:
    """A redis-py client for ``url`` (``redis://`` or ``rediss://``)."""
    try:
        import redis
    except ImportError as e:
        raise MissingExtraError(
            "the Redis broker needs the optional 'redis' package: pip install 'procqueue[redis]'"
        ) from e
    return redis.Redis.from_url(url)


@dataclass(frozen=True, slots=True)
class Input:
    """How an upstream task ended, for a dependent that takes its result
    (``result_of``): read by the claim, its value verified (never unpickled)."""

    task_id: int
    #: ``completed``, ``failed`` or ``cancelled``.
    state: str
    #: The pickled value (completed) or exception (failed), when there is one.
    value: bytes | None
    #: The node's text of its error (``Type: message``), if it did not complete.
    error: str
    #: For an upstream ended without running by its own upstream: that one's id.
    upstream: int | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A task a node has leased: run it, then :meth:`Broker.finish` with the token.
    ``payload`` is verified (``None`` with ``rejected`` set when it failed the
    check: it was dead-lettered and must not be run). ``inputs``: the upstream
    values its ``result_of`` markers stand for, verified too."""

    task_id: int
    token: int
    attempts: int
    payload: bytes | None
    rejected: str | None = None
    timeout: float | None = None
    name: str = ""
    inputs: tuple[Input, ...] = ()


class Outcome(NamedTuple):
    """A final task's outcome, as :meth:`Broker.lookup` reads it."""

    state: str
    #: Verified pickled value (completed) or exception (failed), if any.
    value: bytes | None
    error: str
    #: Set when the task never ran because this upstream of it failed or was
    #: cancelled (``UpstreamFailedError`` on the client).
    upstream: int | None = None


_DEFAULT_POLICY = RetryPolicy()
#: Every script by name: the client's, the node's and the schedules'.
_SCRIPTS: dict[str, str] = {
    name: getattr(module, name)
    for module, names in (
        (_scripts_client, ("SUBMIT", "LOOKUP", "CANCEL", "REQUEUE", "PURGE")),
        (_scripts_node, ("CLAIM", "RENEW", "FINISH", "RECLAIM")),
        (_scripts_schedules, ("FIRE", "SCHEDULE")),
    )
    for name in names
}
#: Ids per LOOKUP run: a burst larger than this is read in several.
LOOKUP_CHUNK = 512
#: RECLAIM runs per :meth:`Broker.reclaim` at most: each further one only
#: for tasks flagged for cancel meanwhile; any still left keep their expired
#: lease for the next reclaim.
RECLAIM_RUNS = 3


class Broker(AdminCalls):
    """One queue on one Redis: submit, claim, renew, finish, cancel, reclaim
    (and, from :class:`AdminCalls`, dead letters and the dashboard's reads)."""

    def __init__(self, client: Any, queue: str, signer: Signer, *, result_ttl: int = 3600) -> None:
        if result_ttl < 1:
            raise InvalidArgumentError("result_ttl must be at least 1 second")
        self.r = client
        self.keys = Keys(queue)
        self.queue = queue
        self.signer = signer
        self.result_ttl = result_ttl
        self._ids: list[int] = []
        self._metas: dict[tuple[str, RetryPolicy], str] = {}
        self._lanes = Lanes(client)
        self._s = {name: self._lanes.script(text) for name, text in _SCRIPTS.items()}
        #: Each script's declared fixed keys, encoded once.
        self._kk = {name: self.keys.declared(keys) for name, keys in KEYS_OF.items()}

    # ------------------------------------------------------------------ ids

    def new_id(self) -> int:
        """A task id unique in the queue (reserved in blocks: one round trip
        per ``ID_BLOCK`` submits)."""
        if not self._ids:
            top = int(self.r.incrby(self.keys.ids, ID_BLOCK))
            self._ids = list(range(top, top - ID_BLOCK, -1))
        return self._ids.pop()

    # ------------------------------------------------------------------ client side

    def submit(
        self,
        payload: bytes,
        *,
        name: str,
        priority: int = 0,
        policy: RetryPolicy | None = None,
        delay: float = 0.0,
        timeout: float | None = None,
        task_id: int | None = None,
        key: str | None = None,
        limit: tuple[str, list[list[float]]] | None = None,
        cap: int | None = None,
        after: Sequence[int] = (),
        needs: Collection[int] = (),
        all_done: bool = False,
    ) -> int:
        """Queue a pickled call (sealed here); returns its id. ``key``: an
        idempotency key: while it is remembered (``result_ttl`` + 24 h), a
        second submit with it queues nothing and returns the first task's id.
        ``limit``: ``(concrete key, rate windows)``, with ``cap`` its
        concurrency cap. ``after``: upstream ids (distinct) it waits for;
        ``needs``: those whose results its ``result_of`` markers take;
        ``all_done``: run once they all ended, whatever the outcome. An
        unknown upstream raises :class:`TaskNotFoundError` (nothing queued)."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise OptionTypeError(f"priority must be an int, got {priority!r}")  # as locally
        if abs(priority) >= MAX_PRIORITY:
            raise InvalidArgumentError(f"on Redis, priority must lie within ±{MAX_PRIORITY - 1}")
        policy = policy or _DEFAULT_POLICY
        tid = self.new_id() if task_id is None else task_id
        k = self.keys
        if timeout is None and limit is None and not after:
            meta_json = self._plain_meta(name, policy)  # the common case: made once
        else:
            meta = self._meta(name, policy)
            if timeout is not None:
                meta["timeout"] = float(timeout)
            if limit is not None:  # (concrete key, [[interval ms, tolerance ms], ...])
                meta["lk"], meta["lw"] = limit
                if cap is not None:
                    meta["lc"] = int(cap)
            if after:
                meta["ups"] = [int(u) for u in after]
                if needs:
                    meta["inp"] = {str(u): 1 for u in needs}
                if all_done:
                    meta["ad"] = True
            meta_json = json.dumps(meta)
        sealed = self.signer.seal(TASK, self.queue, str(tid), payload)
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidArgumentError(f"key must be a non-empty str, got {key!r}")
        # The idempotency key's own key only when there is one: every key
        # declared shares the queue's hash tag (Cluster: one slot).
        idem = (k.idem(key),) if key is not None else ()
        try:
            return int(
                self._s["SUBMIT"](
                    keys=[*self._kk["SUBMIT"], *idem, *(k.result(u) for u in after)],
                    args=[
                        tid,
                        priority,
                        meta_json,
                        sealed,
                        max(0, int(delay * 1000)),
                        self.result_ttl + 86400,
                        self.result_ttl,
                        k.done,
                        *after,
                    ],
                )
            )
        except _response_error() as e:
            if str(e).startswith("PQUNKNOWN"):
                up = str(e).split()[1]
                raise TaskNotFoundError(
                    f"upstream task {up} is unknown to queue {self.queue!r} (never submitted "
                    "here, or its result expired after result_ttl)"
                ) from None
            raise

    def _meta(self, name: str, policy: RetryPolicy) -> dict[str, Any]:
        return {
            "name": name,
            "max_retries": policy.max_retries,
            "bb": policy.backoff_base * 1000.0,
            "bf": policy.backoff_factor,
            "bm": policy.backoff_max * 1000.0,
            "ttl": self.result_ttl,
        }

    def _plain_meta(self, name: str, policy: RetryPolicy) -> str:
        """The meta JSON of a task with no timeout, limit or upstream: the
        same for every submit of a function under one policy (bounded cache)."""
        key = (name, policy)
        text = self._metas.get(key)
        if text is None:
            if len(self._metas) >= 1024:
                self._metas.clear()
            text = self._metas[key] = json.dumps(self._meta(name, policy))
        return text

    def cancel(self, task_id: int) -> int:
        """1: cancelled now; 2: running, its owner is told; 0: unknown or final."""
        k = self.keys
        return int(
            self._s["CANCEL"](
                keys=[*self._kk["CANCEL"], k.result(task_id)],
                args=[task_id, self.result_ttl, k.done],
            )
        )

    def outcome(self, task_id: int) -> tuple[str, bytes | None, str] | None:
        """``(state, verified value or None, error)`` of a final task, or ``None``
        while it is not final (or unknown). For a failed task the value is its
        pickled exception, when the node could pickle it. A value with a bad
        signature raises :class:`SignatureError` (it is never unpickled)."""
        outcome = self.lookup(task_id)[0]
        return None if outcome is None else (outcome.state, outcome.value, outcome.error)

    def lookup(self, task_id: int) -> tuple[Outcome | None, bool]:
        """``(outcome, known)`` in one round trip: the outcome as :meth:`outcome`
        gives it (plus the upstream that ended it unrun, if one did), and
        whether the queue knows the task at all, in one atomic script
        (``LOOKUP``): a task finishing between two reads would otherwise look
        unknown."""
        found = self.lookup_many([task_id])[0]
        if isinstance(found, SignatureError):
            raise found
        return found

    def lookup_many(
        self, task_ids: Sequence[int]
    ) -> list[tuple[Outcome | None, bool] | SignatureError]:
        """:meth:`lookup` for several tasks in one script run (one round trip,
        one snapshot); a task whose stored value fails its signature gives its
        ``SignatureError``."""
        result, script, declared = self.keys.result, self._s["LOOKUP"], self._kk["LOOKUP"]
        rows: list[Any] = []
        for i in range(0, len(task_ids), LOOKUP_CHUNK):
            ids = task_ids[i : i + LOOKUP_CHUNK]
            rows += script(keys=[*declared, *(result(tid) for tid in ids)], args=ids)
        out: list[tuple[Outcome | None, bool] | SignatureError] = []
        for tid, row in zip(task_ids, rows):
            try:
                out.append(self._parse_lookup(tid, row))
            except SignatureError as e:
                out.append(e)
        return out

    def carried(self, task_id: int, sealed: bytes) -> tuple[Outcome | None, bool]:
        """The outcome of a completed task whose sealed value came in its
        ``done`` message (:func:`announcement`): opened, as a lookup gives it.
        Raises :class:`SignatureError` for a value that fails its check."""
        return Outcome("completed", self._opened(task_id, sealed), ""), True

    def _opened(self, task_id: int, sealed: bytes) -> bytes:
        """A result sealed for ``task_id`` of this queue, checked and opened."""
        return self.signer.open(RESULT, self.queue, str(task_id), sealed)

    def _parse_lookup(self, task_id: int, row: Any) -> tuple[Outcome | None, bool]:
        kind = int(row[0])
        if kind == 1:  # completed or cancelled
            state, value, error = row[1].decode(), row[2], row[3].decode()
            opened = self._opened(task_id, value) if state == "completed" else None
            return Outcome(state, opened, error), True
        if kind == 0:
            return None, False
        if kind == 3:  # ended unrun by its upstream
            g = json.loads(row[1])
            return Outcome(str(g["state"]), None, str(g["error"]), int(g["up"])), True
        m = json.loads(row[1])
        if m["state"] != "failed":
            return None, True
        sealed = row[2]
        exc = self._opened(task_id, sealed) if sealed else None
        return Outcome("failed", exc, str(m.get("error", ""))), True

    def ended(self, task_id: int) -> dict[str, Any] | None:
        """A task ended unrun by its upstream (``state``, ``error``, ``up``,
        ``name``, ``finished``, ``ups``), while its outcome is kept."""
        raw = self.r.hget(self.keys.ended, task_id)
        return None if raw is None else dict(json.loads(raw))

    def finish_many(self, outcomes: Sequence[tuple[int, int, str, bytes, str]]) -> list[bool]:
        """:meth:`finish` for several ``(id, token, outcome, value, error)``
        in one script run (one round trip; each outcome fenced on its own)."""
        if not outcomes:
            return []
        k, seal, queue = self.keys, self.signer.seal, self.queue
        keys: list[Any] = list(self._kk["FINISH"])
        args: list[Any] = [self.result_ttl, k.done]
        for tid, token, outcome, value, error in outcomes:
            if outcome not in OUTCOMES:
                raise InvalidArgumentError(f"unknown outcome {outcome!r}")
            keys.append(k.result(tid))
            sealed = seal(RESULT, queue, str(tid), value) if value else b""
            args += [tid, token, outcome, sealed, error]
        results = self._s["FINISH"](keys=keys, args=args)
        for (tid, token, *_), ok in zip(outcomes, results):
            if not ok:
                _log.warning(
                    "late outcome of task %d (token %d) dropped: its lease was lost", tid, token
                )
        return [bool(ok) for ok in results]

    def meta(self, task_id: int) -> dict[str, Any] | None:
        raw = self.r.hget(self.keys.meta, task_id)
        return None if raw is None else dict(json.loads(raw))

    # ------------------------------------------------------------------ node side

    def claim(self, k: int, lease: float, owner: str) -> list[Claimed]:
        """Lease up to ``k`` tasks for ``lease`` seconds. A payload that fails
        its signature check is dead-lettered with the reason, never returned
        for running."""
        return self.claim_batch(k, lease, owner)[0]

    def claim_batch(self, k: int, lease: float, owner: str) -> tuple[list[Claimed], bool]:
        """:meth:`claim`, and whether it left the ready set empty (claiming
        again finds nothing until a task is made ready, which pushes a wake
        token). Tasks parked at their key's cap or throttled are taken off the
        ready set but not returned, so the batch's size alone does not say."""
        rows, left = self._s["CLAIM"](keys=self._kk["CLAIM"], args=[k, int(lease * 1000), owner])
        out = []
        for row in rows:
            tid_b, token, attempts, sealed, timeout_b, name_b = row[:6]
            tid = int(tid_b)
            timeout = float(timeout_b) or None
            name = name_b.decode() if isinstance(name_b, bytes) else str(name_b)
            try:
                data = self.signer.open(TASK, self.queue, str(tid), sealed or b"")
                inputs = self._inputs(row[6]) if len(row) > 6 else ()
            except SignatureError as e:
                _log.error("task %d rejected, never unpickled: %s", tid, e)
                self.finish(tid, int(token), "failed", error=f"SignatureError: {e}")
                out.append(Claimed(tid, int(token), int(attempts), None, str(e)))
                continue
            out.append(Claimed(tid, int(token), int(attempts), data, None, timeout, name, inputs))
        return out, int(left) == 0

    def _inputs(self, flat: list[Any]) -> tuple[Input, ...]:
        """CLAIM's upstream rows (id, state, sealed blob, error, its upstream),
        each blob verified against the upstream's id: a forged or swapped value
        raises :class:`SignatureError` and the task is rejected unopened."""
        out = []
        for i in range(0, len(flat), 5):
            up_b, state_b, sealed, error_b, uu_b = flat[i : i + 5]
            up = int(up_b)
            value = self._opened(up, sealed) if sealed else None
            out.append(
                Input(up, state_b.decode(), value, error_b.decode(), int(uu_b) if uu_b else None)
            )
        return tuple(out)

    def renew(
        self, owner: str, held: list[tuple[int, int]], lease: float
    ) -> tuple[list[int], list[int]]:
        """Extend the leases of ``held`` (``(id, token)``); returns the ids lost
        (reclaimed meanwhile: stop reporting them) and those to cancel."""
        if not held:
            return [], []
        args: list[Any] = [int(lease * 1000), owner]
        for tid, token in held:
            args += [tid, token]
        lost, cancels = self._s["RENEW"](keys=self._kk["RENEW"], args=args)
        return [int(x) for x in lost], [int(x) for x in cancels]

    def finish(
        self,
        task_id: int,
        token: int,
        outcome: str,
        *,
        value: bytes = b"",
        error: str = "",
    ) -> bool:
        """Record an attempt's outcome (``completed``, ``error`` (retried while
        attempts remain), ``retry``, ``failed``, ``cancelled``), fenced by
        ``token``: False (and logged) when the lease was lost, so each attempt
        has exactly one recorded outcome."""
        return self.finish_many([(task_id, token, outcome, value, error)])[0]

    def reclaim(self, limit: int = 100) -> tuple[list[int], list[int]]:
        """Requeue or dead-letter tasks whose lease expired (the first
        ``LOST_FREE`` lost leases of a task are not charged; later ones are
        spent attempts, retried with backoff); returns ``(requeued,
        dead-lettered)``. A task whose cancel was asked while it ran ends
        cancelled instead (announced; in neither list). Safe to run from every
        node. Also drops the kept outcomes of dependents ended unrun, once
        expired."""
        k, script, declared = self.keys, self._s["RECLAIM"], self._kk["RECLAIM"]
        requeued: list[int] = []
        dead: list[int] = []
        later: list[bytes] = []
        for _ in range(RECLAIM_RUNS):
            # Ending a flagged task writes its r:<id>, which a script has to
            # declare: the run returns the ids it met without it (its
            # ``later``), for this next run to declare. None, almost always.
            got, lost, later = script(
                keys=[*declared, *(k.result(int(t)) for t in later)],
                args=[limit, k.done, self.result_ttl, *later],
            )
            requeued += (int(x) for x in got)
            dead += (int(x) for x in lost)
            if not later:
                break
        return requeued, dead

    # ------------------------------------------------------------------ schedules

    def now_ms(self) -> int:
        """Redis's clock (the one every node agrees on), in ms."""
        sec, usec = self.r.time()
        return int(sec) * 1000 + int(usec) // 1000

    def schedule_op(self, name: str, op: str, arg: str = "", payload: bytes = b"") -> bool:
        """``add`` (``arg``: the definition JSON; False if the name is taken),
        ``pause``, ``resume`` (``arg``: the next tick, ms) or ``cancel``."""
        k = self.keys
        keys = [k.sched, k.schedp, k.fired(name)]
        return bool(self._s["SCHEDULE"](keys=keys, args=[name, op, arg, payload]))

    def schedule(self, name: str) -> dict[str, Any] | None:
        """One schedule's definition and counts, or ``None`` once cancelled."""
        raw = self.r.hget(self.keys.sched, name)
        return None if raw is None else dict(json.loads(raw))

    def schedules(self) -> dict[str, dict[str, Any]]:
        return {
            name.decode(): dict(json.loads(raw))
            for name, raw in self.r.hgetall(self.keys.sched).items()
        }

    def schedule_payload(self, name: str) -> bytes:
        """A schedule's call, verified (:class:`SignatureError` otherwise)."""
        sealed = self.r.hget(self.keys.schedp, name)
        return self.signer.open(TASK, self.queue, f"sched:{name}", sealed or b"")

    def fire(
        self,
        name: str,
        expected_ms: int | None,
        next_ms: int,
        misfired: int,
        skipped: int,
        runs: list[tuple[int, int, dict[str, Any], bytes]],
    ) -> int:
        """Queue a schedule's runs for one evaluation, if no other node did:
        the runs queued, or -1 when the tick was taken (see ``FIRE``).
        ``runs``: ``(id, priority, meta, payload)``, payloads sealed here.
        ``expected_ms=None``: ``run_now`` (no compare-and-set, the ticks do
        not move; -1 only if the schedule is gone)."""
        k = self.keys
        expected = "" if expected_ms is None else expected_ms
        args: list[Any] = [name, expected, next_ms, misfired, skipped]
        for tid, priority, meta, payload in runs:
            sealed = self.signer.seal(TASK, self.queue, str(tid), payload)
            args += [tid, priority, json.dumps(meta), sealed]
        keys = [*self._kk["FIRE"], k.sched, k.fired(name)]
        return int(self._s["FIRE"](keys=keys, args=args))

    # ------------------------------------------------------------------ limits

    def publish_limits(self, limits: dict[str, dict[str, Any]]) -> None:
        """Store limits by key or pattern (``{"windows": [[interval ms,
        tolerance ms], ...], "cap": n or None}``), for every client of the queue."""
        if limits:
            self.r.hset(self.keys.limits, mapping={k: json.dumps(v) for k, v in limits.items()})

    def limits(self) -> dict[str, dict[str, Any]]:
        return {
            k.decode(): dict(json.loads(v)) for k, v in self.r.hgetall(self.keys.limits).items()
        }


def _response_error() -> type[BaseException]:
    import redis

    return redis.exceptions.ResponseError
