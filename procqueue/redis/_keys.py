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
``{pq:Q}:cancel``             set      ids whose owner must kill them
``{pq:Q}:wake``               list     one token per submit, for idle nodes' BLPOP
``{pq:Q}:nodes``              hash     node id -> JSON: host, pid, workers, heartbeat
``{pq:Q}:limits``             hash     limit key or pattern -> JSON: rate windows
``{pq:Q}:buckets``            hash     concrete key#window -> theoretical arrival time (ms)
``{pq:Q}:sched``              hash     schedule name -> JSON: trigger, next tick, counts
``{pq:Q}:schedp``             hash     schedule name -> signed payload
``{pq:Q}:fired:<name>``       list     the newest 1000 task ids a schedule fired
``{pq:Q}:r:<id>``             hash     a final task: state, signed result or error (TTL)
``{pq:Q}:k:<key>``            string   idempotency key -> first task id (TTL)
``{pq:Q}:done``               channel  ids of tasks that became final
============================  =======  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


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
    def buckets(self) -> str:
        return self._k("buckets")

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

    def fired(self, schedule: str) -> str:
        return self._k(f"fired:{schedule}")

    def idem(self, key: str) -> str:
        return self._k(f"k:{key}")

    def all_fixed(self) -> list[str]:
        """Every key that is not per task (for tests and cleanup)."""
        return [
            self.ids, self.seq, self.fence, self.ready, self.delayed, self.leases,
            self.meta, self.payload, self.dlq, self.cancel, self.wake,
        ]  # fmt: skip
