"""Every Redis key of a queue, in one place.

All keys of one queue share the hash tag ``{pq:<queue>}``, so they live in one
Redis Cluster slot and every script can declare every key it touches. Per-task
data lives in fields of a few fixed hashes (not a key per task), for the same
reason; only a finished task's result gets a key of its own, with a TTL, so
the key count returns to its baseline once results expire.

============================  =======  ==============================================
key                           type     holds
============================  =======  ==============================================
``{pq:Q}:ids``                string   task id allocator (``INCRBY``, in blocks)
``{pq:Q}:seq``                string   FIFO sequence within a priority (``INCR``)
``{pq:Q}:fence``              string   fencing tokens, one per claim (``INCR``)
``{pq:Q}:ready``              zset     ready task ids; score = priority, then FIFO
``{pq:Q}:delayed``            zset     not-yet-due ids (delay, backoff); score = due ms
``{pq:Q}:leases``             zset     claimed ids; score = lease deadline ms
``{pq:Q}:meta``               hash     id -> JSON: priority, attempts, token, owner...
``{pq:Q}:payload``            hash     id -> signed payload (until the task is final)
``{pq:Q}:dlq``                zset     dead-lettered ids; score = failed ms
``{pq:Q}:cancel``             set      ids whose owner must kill them (until their
                                       lease ends: finished, reclaimed)
``{pq:Q}:wake``               list     one token per submit, for idle nodes' BLPOP
``{pq:Q}:stop:<node>``        list     one token that ends that node's BLPOP when it
                                       stops (60 s TTL; deleted as it exits)
``{pq:Q}:nodes``              hash     node id -> JSON: host, pid, workers, lease, heartbeat
                                       (Redis TIME); dropped 3 leases after the last
``{pq:Q}:limits``             hash     limit key or pattern -> JSON: rate windows, cap
``{pq:Q}:rate``               zset     ``<concrete key>#<window>``; score = its theoretical
                                       arrival time (ms), swept once past (GCRA)
``{pq:Q}:waiting``            set      ids waiting for their upstream tasks (``after=``)
``{pq:Q}:down``               hash     upstream id -> n, ``<id>#<i>`` -> i-th dependent id
``{pq:Q}:held``               hash     upstream id -> signed value its dependents still
                                       need; ``<id>:n`` -> how many of them
``{pq:Q}:ended``              hash     id -> JSON: a dependent ended by its upstream
                                       without running (failed/cancelled), until its TTL
``{pq:Q}:ended_ttl``          zset     those ids; score = expiry ms (swept by RECLAIM)
``{pq:Q}:dormant``            hash     what ``requeue(cascade=True)`` re-arms: ``<id>:n``
                                       and ``<id>#<i>``, the dependents a failed task
                                       ended; per such dependent ``<dep>`` (its
                                       signed payload) and ``<dep>:m`` (its meta),
                                       swept with its ``ended`` entry
``{pq:Q}:caps``               hash     ``r:<key>`` running, ``p:<key>`` parked (at its
                                       cap), ``u:<key>`` unparked, ``t:<key>`` throttled
``{pq:Q}:parked``             zset     tasks at their key's cap; all scores 0, member
                                       ``<key>\0<rank><id>`` (ZRANGEBYLEX per key, in order)
``{pq:Q}:sched``              hash     schedule name -> JSON: trigger, next tick, counts
``{pq:Q}:schedp``             hash     schedule name -> signed payload
``{pq:Q}:fired:<name>``       list     the newest 1000 task ids a schedule fired
``{pq:Q}:r:<id>``             hash     a final task: state, signed result or error (TTL)
``{pq:Q}:p:<id>``             string   JSON of a task's last ``report_progress`` (TTL)
``{pq:Q}:k:<key>``            string   idempotency key -> first task id (TTL)
``{pq:Q}:done``               channel  ids of ended tasks (small sealed values too)
============================  =======  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

__all__ = ["FIXED", "Keys"]

#: The queue-wide keys, in the order scripts declare them (``KEYS[1..n]``: each
#: script the ones it uses, ``_scripts.KEYS_OF``), so each declares every key
#: it may touch, even down a dependency cascade whose tasks it only learns as
#: it goes. Per-task keys (``r:<id>``) follow them.
FIXED = (
    "ready", "delayed", "leases", "meta", "payload", "dlq", "cancel", "wake", "seq",
    "fence", "rate", "waiting", "down", "held", "ended", "ended_ttl", "caps", "parked",
    "dormant",
)  # fmt: skip


@dataclass(frozen=True)
class Keys:
    """The key names of one queue."""

    queue: str

    def __post_init__(self) -> None:
        if not self.queue or any(c in self.queue for c in "{}\0"):
            raise ValueError(
                f"a queue name cannot be empty or hold '{{', '}}' or NUL: {self.queue!r}"
            )

    @property
    def tag(self) -> str:
        return f"{{pq:{self.queue}}}"

    def _k(self, name: str) -> str:
        return f"{self.tag}:{name}"

    @property
    def ids(self) -> str:
        return self._k("ids")

    @property
    def seq(self) -> str:
        return self._k("seq")

    @property
    def fence(self) -> str:
        return self._k("fence")

    @property
    def ready(self) -> str:
        return self._k("ready")

    @property
    def delayed(self) -> str:
        return self._k("delayed")

    @property
    def leases(self) -> str:
        return self._k("leases")

    @property
    def meta(self) -> str:
        return self._k("meta")

    @property
    def payload(self) -> str:
        return self._k("payload")

    @property
    def dlq(self) -> str:
        return self._k("dlq")

    @property
    def cancel(self) -> str:
        return self._k("cancel")

    @property
    def wake(self) -> str:
        return self._k("wake")

    @property
    def nodes(self) -> str:
        return self._k("nodes")

    @property
    def limits(self) -> str:
        return self._k("limits")

    @property
    def rate(self) -> str:
        return self._k("rate")

    @property
    def waiting(self) -> str:
        return self._k("waiting")

    @property
    def down(self) -> str:
        return self._k("down")

    @property
    def held(self) -> str:
        return self._k("held")

    @property
    def ended(self) -> str:
        return self._k("ended")

    @property
    def ended_ttl(self) -> str:
        return self._k("ended_ttl")

    @property
    def dormant(self) -> str:
        return self._k("dormant")

    @property
    def caps(self) -> str:
        return self._k("caps")

    @property
    def parked(self) -> str:
        return self._k("parked")

    @property
    def fixed(self) -> list[str]:
        """Every key of :data:`FIXED`, in order."""
        return [self._k(name) for name in FIXED]

    def declared(self, names: tuple[str, ...]) -> list[bytes]:
        """The keys ``names`` (of :data:`FIXED`) that a script declares, in
        order, encoded once: every call of the script sends them."""
        got = self._declared.get(names)
        if got is None:
            got = self._declared[names] = [self._k(n).encode() for n in names]
        return got

    @cached_property
    def _declared(self) -> dict[tuple[str, ...], list[bytes]]:
        return {}

    @property
    def sched(self) -> str:
        return self._k("sched")

    @property
    def schedp(self) -> str:
        return self._k("schedp")

    @property
    def done(self) -> str:
        return self._k("done")

    def result(self, task_id: int) -> str:
        return self._k(f"r:{task_id}")

    def progress(self, task_id: int) -> str:
        return self._k(f"p:{task_id}")

    def fired(self, schedule: str) -> str:
        return self._k(f"fired:{schedule}")

    def idem(self, key: str) -> str:
        return self._k(f"k:{key}")

    def stop_node(self, owner: str) -> str:
        return self._k(f"stop:{owner}")

    def all_fixed(self) -> list[str]:
        """Every key that is not per task (for tests and cleanup)."""
        return [
            *self.fixed,
            self.nodes, self.limits, self.sched, self.schedp, self.ids,
        ]  # fmt: skip
