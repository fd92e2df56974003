"""``AdminCalls``: the broker calls of the operators' side, mixed into
``_protocol.Broker``: dead letters (list, requeue, with their dormant
dependents re-armed, purge) and the dashboard's reads (listings, metas,
states, a task's extras). Like every broker call, they open a sealed blob
before anything is unpickled; only a cascading requeue unpickles, to move
``result_of`` markers, after the seal checked out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import ProcQueueError, SerializationError, TaskNotFoundError
from ._keys import Keys
from ._signing import TASK, Signer

__all__ = ["AdminCalls"]

#: Reads of a dead letter's dormant tree a cascading requeue tries, should the
#: tree change between the read and the script each time.
REQUEUE_TRIES = 5


class AdminCalls:
    """The dead-letter and dashboard calls of a :class:`~._protocol.Broker`
    (a mixin: the attributes below are the broker's)."""

    r: Any
    keys: Keys
    queue: str
    signer: Signer
    result_ttl: int
    _s: dict[str, Any]
    _kk: dict[str, list[bytes]]

    def new_id(self) -> int:
        raise NotImplementedError  # the broker's own

    def dead_letters(self) -> list[tuple[int, dict[str, Any], float]]:
        """``(id, meta, failed at (s))`` of every dead letter, oldest first."""
        return self._letters(self.r.zrange(self.keys.dlq, 0, -1, withscores=True))

    def _letters(self, rows: list[tuple[bytes, float]]) -> list[tuple[int, dict[str, Any], float]]:
        """DLQ members ``(id, failed at ms)`` with their metas (one ``HMGET``)."""
        if not rows:
            return []
        metas = self.r.hmget(self.keys.meta, [tid for tid, _ in rows])
        return [
            (int(tid), dict(json.loads(raw)), score / 1000.0)
            for (tid, score), raw in zip(rows, metas)
            if raw is not None
        ]

    def requeue_dead(
        self, task_id: int, max_retries: int | None = None, priority: int | None = None
    ) -> int | None:
        """The new id of a dead letter run again, or ``None`` if it is not one."""
        ids = self._requeue(task_id, max_retries, priority, cascade=False)
        return None if ids is None else ids[task_id]

    def requeue_cascade(
        self, task_id: int, max_retries: int | None = None, priority: int | None = None
    ) -> dict[int, int] | None:
        """:meth:`requeue_dead`, and the dependents its failure ended (with
        ``UpstreamFailedError``), transitively, as new tasks waiting on the new
        ids, their ``result_of`` markers moved: ``{old id: new id}`` for every
        task queued, or ``None`` if it is not a dead letter. Raises
        :class:`TaskNotFoundError`, changing nothing (the letter stays), when a
        dependent's kept copy expired with its outcome (``result_ttl``) or
        another upstream of one is no longer known."""
        for _ in range(REQUEUE_TRIES):
            try:
                return self._requeue(task_id, max_retries, priority, cascade=True)
            except _TreeChanged:
                continue  # a dependent ended or was swept meanwhile: read it again
        raise ProcQueueError(
            f"the dependents of dead letter {task_id} kept changing while it was "
            f"requeued ({REQUEUE_TRIES} tries); nothing was queued"
        )

    def _requeue(
        self, task_id: int, max_retries: int | None, priority: int | None, cascade: bool
    ) -> dict[int, int] | None:
        """One try of ``REQUEUE``: read the letter (and, ``cascade``, its
        dormant tree), re-seal every payload for its new id, run the script."""
        k = self.keys
        sealed = self.r.hget(k.payload, task_id)
        if sealed is None or self.r.zscore(k.dlq, task_id) is None:
            return None
        tree = self._dormant_tree(task_id) if cascade else []
        # The MAC binds the task id: re-seal for the new one (only after the
        # old seal checks out: a tampered letter raises SignatureError here).
        data = self.signer.open(TASK, self.queue, str(task_id), sealed)
        ids = {task_id: self.new_id()}
        for dep, _, _ in tree:
            ids[dep] = self.new_id()
        outside: dict[int, None] = {}  # other upstreams of the re-armed tasks, in order
        deps: list[Any] = []
        for dep, m, dep_sealed in tree:
            for up in m.get("ups") or ():
                if int(up) not in ids:
                    outside[int(up)] = None
            deps += [dep, ids[dep], self._rearmed(dep, ids, m, dep_sealed)]
        args: list[Any] = [
            task_id,
            ids[task_id],
            "" if max_retries is None else max_retries,
            "" if priority is None else priority,
            self.signer.seal(TASK, self.queue, str(ids[task_id]), data),
            self.result_ttl,
            k.done,
            int(cascade),
            len(tree),
            len(outside),
            *deps,
            *outside,
        ]
        keys = [*self._kk["REQUEUE"], *(k.result(up) for up in outside)]
        try:
            ok = self._s["REQUEUE"](keys=keys, args=args)
        except _response_error() as e:
            code, *rest = str(e).split()
            if code == "PQCHANGED":
                raise _TreeChanged from None
            if code == "PQEXPIRED":
                raise _expired(task_id, int(rest[0])) from None
            if code == "PQGONE":
                raise TaskNotFoundError(
                    f"cannot re-arm task {rest[0]}: its upstream task {rest[1]} is no longer "
                    f"known to queue {self.queue!r} (its result expired after result_ttl)"
                ) from None
            raise
        return ids if ok else None

    def _dormant_tree(self, root: int) -> list[tuple[int, dict[str, Any], bytes]]:
        """``(id, meta, sealed payload)`` of each dependent kept dormant below
        dead letter ``root``, breadth first, as ``REQUEUE`` walks them (three
        round trips per level of the tree)."""
        d = self.keys.dormant
        out: list[tuple[int, dict[str, Any], bytes]] = []
        level = [root]
        while level:
            counts = self.r.hmget(d, [f"{up}:n" for up in level])
            fields = [
                f"{up}#{i}" for up, n in zip(level, counts) for i in range(1, int(n or 0) + 1)
            ]
            if not fields:
                break
            level = [int(x) for x in self.r.hmget(d, fields) if x is not None]
            with self.r.pipeline(transaction=False) as p:
                for dep in level:
                    p.hmget(d, [dep, f"{dep}:m"])
                rows = p.execute()
            for dep, (sealed, raw) in zip(level, rows):
                if sealed is None or raw is None:
                    raise _expired(root, dep)
                out.append((dep, dict(json.loads(raw)), sealed))
        return out

    def _rearmed(self, dep: int, ids: dict[int, int], m: dict[str, Any], sealed: bytes) -> bytes:
        """Dependent ``dep``'s payload, sealed for its new id, with its
        ``result_of`` markers of re-armed upstreams moved to their new ids."""
        data = self.signer.open(TASK, self.queue, str(dep), sealed)
        needed = [int(u) for u in m.get("inp") or ()]
        if any(u in ids for u in needed):
            from ._codec import move_markers  # the arguments are unpickled: only here

            try:
                data = move_markers(data, {u: ids.get(u, u) for u in needed})
            except Exception as e:
                raise SerializationError(
                    f"cannot re-arm task {dep} ({m.get('name')}): its arguments do not unpickle "
                    f"here to move their result_of markers: {type(e).__name__}: {e}"
                ) from e
        return self.signer.seal(TASK, self.queue, str(ids[dep]), data)

    def purge_dead(self, task_ids: list[int] | None = None) -> int:
        k = self.keys
        ids = task_ids if task_ids is not None else [int(t) for t in self.r.zrange(k.dlq, 0, -1)]
        if not ids:
            return 0
        return int(self._s["PURGE"](keys=self._kk["PURGE"], args=ids))

    # ------------------------------------------------------------------ reads (dashboard)

    def listing_sizes(self) -> dict[str, int]:
        """How many ids each listable place holds (one round trip): the
        dashboard's task listings (:meth:`list_ids`)."""
        k = self.keys
        with self.r.pipeline(transaction=False) as p:
            p.zcard(k.leases)
            p.zcard(k.ready)
            p.zcard(k.parked)
            p.zcard(k.delayed)
            p.scard(k.waiting)
            p.zcard(k.dlq)
            running, ready, parked, delayed, waiting, dlq = p.execute()
        return {
            "running": running, "ready": ready, "parked": parked,
            "delayed": delayed, "waiting": waiting, "dlq": dlq,
        }  # fmt: skip

    def list_ids(self, place: str, start: int, count: int) -> list[tuple[int, float | None]]:
        """``(id, score)`` of ``count`` ids of one place from position
        ``start``, in its own order: ``running`` (lease deadline ms, soonest
        first), ``ready`` (next to be claimed first), ``parked`` (per key, in
        order), ``delayed`` (due ms, soonest first), ``dlq`` (failed ms,
        newest first); ``waiting`` is a set: its ids sorted, newest first,
        read whole (``SMEMBERS``), so only for sets of a bounded size."""
        k = self.keys
        stop = start + count - 1
        if place == "waiting":
            ids = sorted((int(x) for x in self.r.smembers(k.waiting)), reverse=True)
            return [(tid, None) for tid in ids[start : stop + 1]]
        if place == "parked":
            # Members are ``<key>\0<17-digit rank><id>``: the id follows the rank.
            members = self.r.zrange(k.parked, start, stop)
            return [(int(m[m.index(b"\0") + 18 :]), None) for m in members]
        key, newest_first = {
            "running": (k.leases, False),
            "ready": (k.ready, False),
            "delayed": (k.delayed, False),
            "dlq": (k.dlq, True),
        }[place]
        rows = self.r.zrange(key, start, stop, desc=newest_first, withscores=True)
        return [(int(tid), score) for tid, score in rows]

    def metas(self, task_ids: Sequence[int]) -> list[dict[str, Any] | None]:
        """The ``meta`` of each id (``None``: no longer live), in one ``HMGET``."""
        if not task_ids:
            return []
        raws = self.r.hmget(self.keys.meta, list(task_ids))
        return [None if raw is None else dict(json.loads(raw)) for raw in raws]

    def states(self, task_ids: Sequence[int]) -> list[str | None]:
        """Each id's state in one pipelined round trip: from ``meta`` while
        live, else ``r:<id>`` or ``ended`` while its outcome is kept (``None``:
        unknown or expired). Held-back states read ``pending``, as a status does."""
        if not task_ids:
            return []
        k = self.keys
        with self.r.pipeline(transaction=False) as p:
            for tid in task_ids:
                p.hget(k.meta, tid)
                p.hget(k.result(tid), "state")
                p.hget(k.ended, tid)
            flat = p.execute()
        out: list[str | None] = []
        for i in range(0, len(flat), 3):
            raw, final, gone = flat[i : i + 3]
            if raw is not None:
                state = str(json.loads(raw)["state"])
                out.append("pending" if state in ("throttled", "parked") else state)
            elif final is not None:
                out.append(final.decode())
            elif gone is not None:
                out.append(str(json.loads(gone)["state"]))
            else:
                out.append(None)
        return out

    def dependents(self, task_id: int, limit: int = 100) -> list[int]:
        """Up to ``limit`` ids waiting on ``task_id`` (``down``), while it has any."""
        k = self.keys
        n = min(limit, int(self.r.hget(k.down, task_id) or 0))
        if not n:
            return []
        got = self.r.hmget(k.down, [f"{task_id}#{i}" for i in range(1, n + 1)])
        return [int(x) for x in got if x is not None]

    def task_extras(self, task_id: int) -> tuple[bytes | None, bytes | None, float | None]:
        """``(sealed call or None, sealed result or None, dead-lettered at (s)
        or None)`` of one task, in one round trip (the task page)."""
        k = self.keys
        with self.r.pipeline(transaction=True) as p:
            p.hget(k.payload, task_id)
            p.hmget(k.result(task_id), ["state", "value"])
            p.zscore(k.dlq, task_id)
            sealed, (state, value), failed_ms = p.execute()
        result = value if state == b"completed" and value else None
        return sealed, result, None if failed_ms is None else failed_ms / 1000.0

    def dead_letter_page(self, start: int, count: int) -> list[tuple[int, dict[str, Any], float]]:
        """``(id, meta, failed at (s))`` of ``count`` dead letters from
        position ``start``, newest first (two round trips, whatever the DLQ's size)."""
        end = start + count - 1
        return self._letters(self.r.zrange(self.keys.dlq, start, end, desc=True, withscores=True))

    def fired_ids(self, name: str, count: int) -> list[int]:
        """The newest ``count`` ids a schedule fired, newest first."""
        return [int(x) for x in reversed(self.r.lrange(self.keys.fired(name), -count, -1))]


class _TreeChanged(Exception):
    """``REQUEUE`` found the dormant tree changed since it was read."""


def _expired(root: int, dep: int) -> TaskNotFoundError:
    return TaskNotFoundError(
        f"cannot re-arm task {dep}, ended by the failure of dead letter {root}: its kept copy "
        "expired with its outcome (result_ttl); requeue the letter without cascade=True "
        "and submit the dependents again"
    )


def _response_error() -> type[BaseException]:
    import redis

    return redis.exceptions.ResponseError
