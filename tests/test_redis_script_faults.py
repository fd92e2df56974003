"""Faults the Redis scripts must absorb: a node that dies holding leases
(prefetched tasks too), a cancel asked while a task is leased, Redis Cluster's
one-slot rule, and rate-limit state left by keys that went idle.

A node's death is a lease that expired: the tests push a lease's deadline
back to 0 (``ZADD XX``) rather than wait for it. Real Redis at
127.0.0.1:6379, a queue name per test (its keys deleted after); skipped
without one unless ``PROCQUEUE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot

from procqueue import RetryPolicy
from procqueue.redis._protocol import Broker, announced
from procqueue.redis._remote import status_from_meta
from procqueue.redis._scripts_node import LOST_FREE

SECRET = b"f" * 32
NO_WAIT = RetryPolicy(max_retries=0, backoff_base=0)


def node_died(broker: Broker, ids: Sequence[int]) -> None:
    """The leases of ``ids`` expire now, as when their node stops renewing."""
    assert broker.r.zadd(broker.keys.leases, {str(t): 0 for t in ids}, xx=True, ch=True) == len(ids)


def claim_ids(broker: Broker, k: int, owner: str) -> list[int]:
    return [c.task_id for c in broker.claim(k, 30, owner)]


# --------------------------------------------------------------- lost leases


def test_the_prefetched_tasks_of_a_dead_node_run_again_under_the_default_policy(
    broker: Broker,
) -> None:
    ids = [broker.submit(b"call", name=f"t{i}") for i in range(4)]  # max_retries=0
    assert claim_ids(broker, 4, "killed") == ids  # one running, three prefetched
    node_died(broker, ids)
    assert broker.reclaim() == (ids, [])
    assert broker.r.zcard(broker.keys.dlq) == 0
    m = broker.meta(ids[3])
    assert m is not None and m["state"] == "pending" and m["lost"] == 1
    free = f"not charged: lost lease 1 of {LOST_FREE} free"
    assert m["error"] == f"lease expired on node killed (attempt 1, {free})"
    # Back at once, in their place in line, to the next node.
    claimed = broker.claim(4, 30, "healthy")
    assert [c.task_id for c in claimed] == ids
    assert [c.attempts for c in claimed] == [2, 2, 2, 2]  # runs started
    for c in claimed:
        assert broker.finish(c.task_id, c.token, "completed", value=b"ok")
    assert broker.outcome(ids[3]) == ("completed", b"ok", "")
    assert broker.r.hget(broker.keys.result(ids[3]), "attempts") == b"2"


def test_a_task_that_kills_its_node_each_time_still_ends_in_the_dlq(broker: Broker) -> None:
    tid = broker.submit(b"call", name="killer")  # max_retries=0
    for death in range(1, LOST_FREE + 2):
        assert claim_ids(broker, 1, f"n{death}") == [tid]
        node_died(broker, [tid])
        expected = ([], [tid]) if death == LOST_FREE + 1 else ([tid], [])
        assert broker.reclaim() == expected
    assert broker.claim(1, 30, "next") == []
    state, value, error = broker.outcome(tid)  # type: ignore[misc]
    assert (state, value) == ("failed", None)
    n = LOST_FREE + 1
    lost = f"{n} leases lost, the first {LOST_FREE} not charged"
    assert error == f"lease expired on node n{n} (attempt {n}; {lost})"
    ((letter, m, _),) = broker.dead_letters()
    assert letter == tid and (m["attempts"], m["lost"], m["max_retries"]) == (n, n, 0)
    status = status_from_meta(tid, m)  # what get_task_status and the dashboard show
    assert status.state == "failed" and status.attempts == n
    assert status.error is not None and status.error.message.startswith("lease expired on node")


def test_a_refunded_lease_leaves_the_retries_whole(broker: Broker) -> None:
    tid = broker.submit(b"call", name="t", policy=RetryPolicy(max_retries=1, backoff_base=0))
    assert claim_ids(broker, 1, "killed") == [tid]
    node_died(broker, [tid])
    assert broker.reclaim() == ([tid], [])  # not charged
    (c,) = broker.claim(1, 30, "healthy")
    assert broker.finish(tid, c.token, "error", error="ValueError: once")
    assert broker.meta(tid)["state"] == "retrying"  # type: ignore[index]  # its one retry is left
    (c,) = broker.claim(1, 30, "healthy")
    assert c.attempts == 3
    assert broker.finish(tid, c.token, "error", error="ValueError: twice")
    assert broker.outcome(tid) == ("failed", None, "ValueError: twice")


def test_a_requeued_dead_letter_gets_its_free_lost_leases_again(broker: Broker) -> None:
    tid = broker.submit(b"call", name="killer", policy=NO_WAIT)
    for death in range(LOST_FREE + 1):
        claim_ids(broker, 1, f"n{death}")
        node_died(broker, [tid])
        broker.reclaim()
    new = broker.requeue_dead(tid)
    assert new is not None
    m = broker.meta(new)
    assert m is not None and m["attempts"] == 0 and "lost" not in m
    assert claim_ids(broker, 1, "again") == [new]
    node_died(broker, [new])
    assert broker.reclaim() == ([new], [])


# ----------------------------------------------------- cancel while leased


def test_a_cancel_asked_while_leased_ends_the_task_when_its_lease_is_reclaimed(
    broker: Broker,
) -> None:
    k = broker.keys
    tid = broker.submit(b"call", name="t", policy=RetryPolicy(max_retries=3, backoff_base=0))
    dep = broker.submit(b"dep", name="dep", after=[tid])
    assert claim_ids(broker, 1, "ghost") == [tid]
    assert broker.cancel(tid) == 2  # flagged for its owner, which then dies
    pubsub = broker.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(k.done)
    assert pubsub.get_message(timeout=5) is None  # returns on the subscription's confirmation
    node_died(broker, [tid])
    assert broker.reclaim() == ([], [])  # neither requeued nor dead-lettered
    assert broker.outcome(tid) == ("cancelled", None, "cancelled")
    assert broker.lookup(dep)[0] == (
        "cancelled",
        None,
        f"task {dep} was cancelled: its upstream task {tid} was",
        tid,
    )
    assert broker.claim(5, 30, "healthy") == []  # it does not run again
    seen: list[int] = []
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
        if msg is not None:
            seen += announced(msg["data"])
    pubsub.close()
    assert sorted(seen) == sorted([tid, dep])
    # Nothing of either task is left but their outcomes (with a TTL).
    for key in (k.cancel, k.leases, k.ready, k.delayed, k.meta, k.payload, k.waiting, k.down):
        assert not broker.r.exists(key), key
    assert broker.r.ttl(k.result(tid)) > 0


def test_a_cancel_flagged_between_reclaim_runs_keeps_the_lease_until_declared(
    broker: Broker,
) -> None:
    k = broker.keys
    tid = broker.submit(b"call", name="t", policy=RetryPolicy(max_retries=3, backoff_base=0))
    claim_ids(broker, 1, "ghost")
    assert broker.cancel(tid) == 2
    node_died(broker, [tid])
    # A run that did not declare its r:<id> cannot end it: it leaves it.
    got = broker._s["RECLAIM"](keys=broker._kk["RECLAIM"], args=[100, k.done, 60])
    assert got == [[], [], [str(tid).encode()]]
    assert broker.r.zscore(k.leases, tid) == 0 and broker.meta(tid)["state"] == "running"  # type: ignore[index]
    assert broker.reclaim() == ([], [])  # runs again, declaring it
    assert broker.outcome(tid) == ("cancelled", None, "cancelled")
    assert not broker.r.exists(k.cancel)


def test_a_cancel_asked_while_leased_outlives_a_retry(broker: Broker) -> None:
    tid = broker.submit(b"call", name="t", policy=RetryPolicy(max_retries=3, backoff_base=0))
    (c,) = broker.claim(1, 30, "node")
    assert broker.cancel(tid) == 2
    # The attempt fails before the node's renewal passes the cancel on.
    assert broker.finish(tid, c.token, "error", error="ValueError: boom")
    assert broker.outcome(tid) == ("cancelled", None, "cancelled")
    assert broker.claim(1, 30, "node") == [] and not broker.r.exists(broker.keys.cancel)


def test_cancelling_a_queued_task_drops_a_stale_cancel_flag(broker: Broker) -> None:
    tid = broker.submit(b"call", name="t")
    broker.r.sadd(broker.keys.cancel, tid)  # left by a lease that ended otherwise
    assert broker.cancel(tid) == 1
    assert not broker.r.exists(broker.keys.cancel)


# ------------------------------------------------------------ Cluster slots


def test_every_key_a_script_is_given_shares_the_queue_s_slot(broker: Broker) -> None:
    slot = key_slot(broker.keys.tag.encode())
    given: list[tuple[str, Any]] = []

    class Recording:
        def __init__(self, name: str, script: Any) -> None:
            self.name, self.script = name, script

        def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
            given.extend((self.name, key) for key in keys)
            return self.script(keys=keys, args=args)

    broker._s = {name: Recording(name, s) for name, s in broker._s.items()}
    plain = broker.submit(b"call", name="plain", policy=NO_WAIT)
    keyed = broker.submit(b"call", name="keyed", key="order-1")
    assert broker.submit(b"again", name="keyed", key="order-1") == keyed  # still idempotent
    dep = broker.submit(b"dep", name="dep", after=[plain, keyed], key="order-2")
    doomed = broker.submit(b"call", name="doomed", policy=NO_WAIT)
    claimed = {c.task_id: c for c in broker.claim(10, 30, "node")}
    assert set(claimed) == {plain, keyed, doomed}
    broker.finish(keyed, claimed[keyed].token, "completed", value=b"1")
    broker.finish(doomed, claimed[doomed].token, "failed", error="ValueError: no")
    assert broker.requeue_dead(doomed) is not None
    assert broker.cancel(plain) == 2
    node_died(broker, [plain])
    broker.reclaim()
    broker.lookup_many([plain, keyed, dep])
    submits = [key for name, key in given if name == "SUBMIT"]
    assert b"" not in submits and "" not in submits
    assert broker.keys.idem("order-1") in submits and broker.keys.idem("order-2") in submits
    wrong = [(name, key) for name, key in given if key_slot(_b(key)) != slot]
    assert wrong == []


def _b(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


# ------------------------------------------------------- rate-limit state


def test_the_rate_slots_of_idle_keys_do_not_pile_up(broker: Broker) -> None:
    k = broker.keys
    once_a_minute = [[60_000.0, 0.0]]
    for i in range(50):
        tid = broker.submit(b"call", name="t", limit=(f"tenant:{i}", once_a_minute))
        assert claim_ids(broker, 1, "node") == [tid]
        assert broker.r.zcard(k.rate) == 1  # this key's slot; the idle ones went
        # As if its minute passed: the key is idle, its bucket full again.
        broker.r.zadd(k.rate, {f"tenant:{i}#1": 0}, xx=True)
    # A key still within its interval keeps its slot: its next task waits.
    first = broker.submit(b"call", name="t", limit=("busy", once_a_minute))
    second = broker.submit(b"call", name="t", limit=("busy", once_a_minute))
    assert claim_ids(broker, 2, "node") == [first]
    assert broker.r.zcard(k.rate) == 1 and broker.r.zscore(k.rate, "busy#1") is not None
    assert broker.meta(second)["state"] == "throttled"  # type: ignore[index]


def test_the_rate_slots_expire_with_their_latest_time(broker: Broker) -> None:
    """Once every slot's time has passed the zset means nothing: it expires
    then, so a queue that stops admitting rate-limited tasks is left
    without it (it used to stay for ever: the sweep runs only on admission)."""
    k = broker.keys
    tids = [
        broker.submit(b"call", name="t", limit=(f"tenant:{i}", [[500.0, 0.0]])) for i in range(3)
    ]
    assert sorted(claim_ids(broker, 3, "node")) == sorted(tids)
    latest = max(score for _, score in broker.r.zrange(k.rate, 0, -1, withscores=True))
    expires_at = broker.r.pexpiretime(k.rate)
    assert expires_at == math.ceil(latest) + 1
