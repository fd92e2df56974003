"""The Redis protocol's scripts against a real Redis (127.0.0.1:6379): order,
claim, leases, fencing, reclaim, cancel, signatures, the key count, and
schedules evaluated by several nodes at once.

Each test uses its own queue name (its own hash tag) and deletes its keys.
Without a Redis the tests skip, unless ``PROCQUEUE_REQUIRE_SERVICES=1`` (CI),
which turns the skip into a failure.
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from _tasks import add
from conftest import REDIS_URL as URL
from conftest import require_redis

from procqueue import RetryPolicy
from procqueue.errors import InvalidArgumentError
from procqueue.redis._protocol import Broker, connect
from procqueue.redis._signing import Signer

SECRET = b"s" * 32
NO_WAIT = RetryPolicy(max_retries=0, backoff_base=0)


@pytest.fixture
def broker() -> Iterator[Broker]:
    client = require_redis()
    b = Broker(client, f"t-{uuid.uuid4().hex[:12]}", Signer([SECRET]), result_ttl=60)
    yield b
    keys = list(client.scan_iter(match=f"{b.keys.tag}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def tag_keys(b: Broker) -> set[bytes]:
    return set(b.r.scan_iter(match=f"{b.keys.tag}*", count=1000))


def test_claims_come_in_priority_then_fifo_order(broker: Broker) -> None:
    ids = {}
    for n, prio in enumerate([0, 5, 0, 5, -1, 10]):
        ids[n] = broker.submit(b"call", name=f"t{n}", priority=prio)
    got = [c.task_id for c in broker.claim(10, 30, "node-a")]
    assert got == [ids[5], ids[1], ids[3], ids[0], ids[2], ids[4]]


def test_a_claim_leases_counts_the_attempt_and_fences_with_a_fresh_token(broker: Broker) -> None:
    tid = broker.submit(b"call", name="t", policy=RetryPolicy(max_retries=1, backoff_base=0))
    (c,) = broker.claim(5, 30, "node-a")
    assert (c.task_id, c.attempts, c.payload) == (tid, 1, b"call")
    m = broker.meta(tid)
    assert m is not None and m["state"] == "running" and m["owner"] == "node-a"
    assert broker.r.zscore(broker.keys.leases, tid) is not None
    assert broker.claim(5, 30, "node-b") == []  # nothing left: no double delivery
    assert broker.finish(tid, c.token, "retry", error="boom")
    (c2,) = broker.claim(5, 30, "node-b")  # backoff 0: due at once
    assert c2.attempts == 2 and c2.token > c.token
    assert not broker.finish(tid, c.token, "completed", value=b"late")  # the old token is fenced
    assert broker.finish(tid, c2.token, "completed", value=b"42")
    assert broker.outcome(tid) == ("completed", b"42", "")


def test_a_late_result_after_reclaim_is_fenced_off(broker: Broker) -> None:
    tid = broker.submit(b"call", name="t", policy=RetryPolicy(max_retries=1, backoff_base=0))
    (old,) = broker.claim(1, 0, "frozen-node")  # lease of 0 s: expired at once
    assert broker.reclaim() == ([tid], [])
    (new,) = broker.claim(1, 30, "healthy-node")
    assert not broker.finish(tid, old.token, "completed", value=b"stale")
    assert broker.renew("frozen-node", [(tid, old.token)], 30) == ([tid], [])
    assert broker.finish(tid, new.token, "completed", value=b"fresh")
    assert broker.outcome(tid) == ("completed", b"fresh", "")


def test_a_renewed_lease_is_not_reclaimed(broker: Broker) -> None:
    tid = broker.submit(b"call", name="t")
    (c,) = broker.claim(1, 30, "node-a")
    assert broker.renew("node-a", [(tid, c.token)], 30) == ([], [])
    assert broker.reclaim() == ([], [])
    assert broker.renew("node-b", [(tid, c.token)], 30) == ([tid], [])  # not its lease


def test_concurrent_reclaimers_requeue_each_expired_lease_once(broker: Broker) -> None:
    policy = RetryPolicy(max_retries=3, backoff_base=0)
    ids = [broker.submit(b"call", name=f"t{i}", policy=policy) for i in range(60)]
    assert len(broker.claim(60, 0, "dead-node")) == 60
    results: list[tuple[list[int], list[int]]] = []
    barrier = threading.Barrier(6)

    def reclaimer() -> None:
        b = Broker(connect(URL), broker.queue, Signer([SECRET]))
        barrier.wait()
        results.append(b.reclaim(limit=1000))
        b.r.close()

    threads = [threading.Thread(target=reclaimer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    requeued = [tid for r, _ in results for tid in r]
    assert sorted(requeued) == sorted(ids)  # each exactly once, across all reclaimers
    assert all(broker.meta(t)["attempts"] == 1 for t in ids)  # type: ignore[index]


def test_a_task_that_kills_its_node_each_time_ends_in_the_dlq(broker: Broker) -> None:
    tid = broker.submit(b"call", name="t", policy=RetryPolicy(max_retries=2, backoff_base=0))
    for attempt in (1, 2, 3):
        (c,) = broker.claim(1, 0, f"node-{attempt}")
        assert c.attempts == attempt
        requeued, dead = broker.reclaim()
        assert (requeued, dead) == (([tid], []) if attempt < 3 else ([], [tid]))
    assert broker.claim(1, 30, "node-4") == []
    state, value, error = broker.outcome(tid)  # type: ignore[misc]
    assert (state, value) == ("failed", None) and "lease expired" in error
    assert broker.r.zscore(broker.keys.dlq, tid) is not None


def test_tampered_unsigned_and_wrong_key_payloads_are_dead_lettered_unopened(
    broker: Broker,
) -> None:
    good = broker.submit(b"call", name="good", policy=NO_WAIT)
    tampered = broker.submit(b"call", name="tampered", policy=NO_WAIT)
    raw = bytearray(broker.r.hget(broker.keys.payload, tampered))
    raw[-1] ^= 1
    broker.r.hset(broker.keys.payload, tampered, bytes(raw))
    unsigned = broker.submit(b"call", name="unsigned", policy=NO_WAIT)
    broker.r.hset(broker.keys.payload, unsigned, b"\x80\x05N.")
    foreign = Broker(broker.r, broker.queue, Signer([b"x" * 32])).submit(
        b"call", name="foreign", policy=NO_WAIT
    )
    claimed = {c.task_id: c for c in broker.claim(10, 30, "node-a")}
    assert claimed[good].payload == b"call" and claimed[good].rejected is None
    for tid in (tampered, unsigned, foreign):
        assert claimed[tid].payload is None and claimed[tid].rejected
        state, _, error = broker.outcome(tid)  # type: ignore[misc]
        assert state == "failed" and error.startswith("SignatureError")


def test_a_result_with_a_bad_signature_raises_on_the_client(broker: Broker) -> None:
    from procqueue.redis._signing import SignatureError

    tid = broker.submit(b"call", name="t")
    (c,) = broker.claim(1, 30, "node-a")
    assert broker.finish(tid, c.token, "completed", value=b"v")
    broker.r.hset(broker.keys.result(tid), "value", b"\x80\x05N.")
    with pytest.raises(SignatureError):
        broker.outcome(tid)


def test_cancel_queued_delayed_and_running(broker: Broker) -> None:
    queued = broker.submit(b"call", name="q")
    delayed = broker.submit(b"call", name="d", delay=3600)
    running = broker.submit(b"call", name="r")
    assert broker.cancel(queued) == 1 and broker.cancel(delayed) == 1
    (c,) = broker.claim(5, 30, "node-a")
    assert c.task_id == running
    assert broker.cancel(running) == 2  # its owner must kill it
    assert broker.renew("node-a", [(running, c.token)], 30) == ([], [running])
    assert broker.finish(running, c.token, "cancelled", error="killed on request")
    for tid in (queued, delayed, running):
        assert broker.outcome(tid)[0] == "cancelled"  # type: ignore[index]
    assert broker.cancel(queued) == 0


def test_delayed_tasks_wait_in_redis_time(broker: Broker) -> None:
    later = broker.submit(b"call", name="later", delay=3600)
    now = broker.submit(b"call", name="now")
    assert [c.task_id for c in broker.claim(5, 30, "n")] == [now]
    assert broker.r.zscore(broker.keys.delayed, later) is not None


def test_finished_tasks_leave_only_counters_and_expiring_results(broker: Broker) -> None:
    ids = [broker.submit(b"call", name=f"t{i}") for i in range(20)]
    for c in broker.claim(20, 30, "n"):
        assert broker.finish(c.task_id, c.token, "completed", value=b"ok")
    assert broker.r.hlen(broker.keys.meta) == 0 and broker.r.hlen(broker.keys.payload) == 0
    results = {broker.keys.result(t).encode() for t in ids}
    assert all(0 < broker.r.ttl(k) <= 60 for k in results)
    counters = {broker.keys.ids, broker.keys.seq, broker.keys.fence, broker.keys.wake}
    assert tag_keys(broker) - results == {k.encode() for k in counters}


def test_bad_priorities_are_refused(broker: Broker) -> None:
    with pytest.raises(InvalidArgumentError):
        broker.submit(b"call", name="t", priority=2**20)
    with pytest.raises(InvalidArgumentError):
        broker.submit(b"call", name="t", priority=True)


def _due_schedule(broker: Broker, **options: Any) -> str:
    """A schedule whose next tick is due now (its stored tick moved back)."""
    from procqueue.redis._cron import add_schedule

    sched = add_schedule(
        broker,
        add,
        (1, 2),
        {},
        cron=options.pop("cron", None),
        every=options.pop("every", 60.0),
        name="job",
        tz="UTC",
        misfire_grace=options.pop("grace", 60.0),
        catchup=options.pop("catchup", "latest"),
        overlap=options.pop("overlap", "skip"),
        priority=0,
        policy=RetryPolicy(),
        timeout=None,
    )
    s = broker.schedules()["job"]
    s["next_ms"] = broker.now_ms() - int(options.pop("late_ms", 0))
    s["anchor"] = s["next_ms"] / 1000.0  # a tick of its grid, as a real one is
    broker.r.hset(broker.keys.sched, "job", json.dumps(s))
    return sched.name


def test_a_due_tick_fires_once_whatever_the_number_of_evaluating_nodes(broker: Broker) -> None:
    from procqueue.redis._cron import evaluate

    _due_schedule(broker)
    barrier = threading.Barrier(6)

    def node() -> None:
        b = Broker(connect(URL), broker.queue, Signer([SECRET]))
        barrier.wait()
        evaluate(b)
        b.r.close()

    threads = [threading.Thread(target=node) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert broker.r.zcard(broker.keys.ready) == 1
    s = broker.schedules()["job"]
    assert s["runs"] == 1 and s["next_ms"] > broker.now_ms()
    (c,) = broker.claim(5, 30, "n")
    assert c.name == "add" and c.timeout == 60.0  # the interval is the default timeout
    assert broker.r.lrange(broker.keys.fired("job"), 0, -1) == [str(c.task_id).encode()]


def test_a_tick_later_than_its_grace_is_counted_not_run(broker: Broker) -> None:
    from procqueue.redis._cron import evaluate

    _due_schedule(broker, grace=30.0, late_ms=45_000)
    evaluate(broker)
    s = broker.schedules()["job"]
    assert broker.r.zcard(broker.keys.ready) == 0
    assert s["misfired"] == 1 and s.get("runs", 0) == 0


def test_overlap_skip_and_the_controls(broker: Broker) -> None:
    from procqueue.redis._cron import RemoteSchedule, evaluate

    _due_schedule(broker)
    evaluate(broker)  # first run queued
    s = broker.schedules()["job"]
    s["next_ms"] = broker.now_ms()
    s["anchor"] = s["next_ms"] / 1000.0
    broker.r.hset(broker.keys.sched, "job", json.dumps(s))
    evaluate(broker)  # the first run is still pending: skipped
    handle = RemoteSchedule(broker, "job", b"", 0, RetryPolicy(), None)
    assert handle.runs == 1 and handle.skipped["overlap"] == 1
    handle.pause()
    assert handle.paused and handle.next_run is None
    handle.resume()
    assert handle.next_run is not None and not handle.paused
    handle.cancel()
    assert handle.cancelled and broker.schedules() == {}
    assert not broker.r.exists(broker.keys.fired("job"))


def test_a_rate_limited_key_starts_each_task_in_its_own_slot(broker: Broker) -> None:
    limit = ("api", [[1000.0, 0.0]])  # 1/s, no burst
    keyed = [broker.submit(b"call", name=f"k{i}", limit=limit) for i in range(4)]
    free = broker.submit(b"call", name="free")
    claimed = [c.task_id for c in broker.claim(10, 30, "n")]
    assert claimed == [keyed[0], free]  # the key is throttled, not the queue
    slots = [broker.r.zscore(broker.keys.delayed, t) for t in keyed[1:]]
    assert [b - a for a, b in itertools.pairwise(slots)] == [1000.0, 1000.0]  # FIFO, spaced
    m = broker.meta(keyed[1])
    assert m is not None and m["state"] == "throttled" and m["attempts"] == 0
