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
from typing import Any

import pytest
from _tasks import add
from conftest import REDIS_URL as URL
from conftest import require_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procqueue import RetryPolicy
from procqueue.errors import InvalidArgumentError, OptionTypeError
from procqueue.redis._protocol import Broker, connect
from procqueue.redis._scripts_node import LOST_FREE
from procqueue.redis._signing import Signer

SECRET = b"s" * 32
NO_WAIT = RetryPolicy(max_retries=0, backoff_base=0)


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
    deaths = LOST_FREE + 2 + 1  # the free lost leases, then every attempt
    for attempt in range(1, deaths + 1):
        (c,) = broker.claim(1, 0, f"node-{attempt}")
        assert c.attempts == attempt  # runs started, refunded or not
        requeued, dead = broker.reclaim()
        assert (requeued, dead) == (([tid], []) if attempt < deaths else ([], [tid]))
    assert broker.claim(1, 30, "node-last") == []
    state, value, error = broker.outcome(tid)  # type: ignore[misc]
    assert (state, value) == ("failed", None)
    assert error == (
        f"lease expired on node node-{deaths} (attempt {deaths}; "
        f"{deaths} leases lost, the first {LOST_FREE} not charged)"
    )
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
    with pytest.raises(OptionTypeError):  # a TypeError, as on a local queue
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


# ---------------------------------------------------------------- dependencies


def claim_all(broker: Broker, owner: str = "n", lease: float = 30) -> dict[int, Any]:
    return {c.task_id: c for c in broker.claim(100, lease, owner)}


def test_a_dependent_waits_unclaimable_and_is_released_by_the_finish(broker: Broker) -> None:
    top = broker.submit(b"top", name="top")
    left = broker.submit(b"left", name="left", after=[top], needs=[top])
    bottom = broker.submit(b"bottom", name="bottom", after=[left, top], needs=[left])
    assert broker.meta(left)["state"] == "waiting"  # type: ignore[index]
    assert broker.r.scard(broker.keys.waiting) == 2
    (c,) = broker.claim(10, 30, "n")  # only the upstream is claimable
    assert c.task_id == top and c.inputs == ()
    assert broker.finish(top, c.token, "completed", value=b"2")
    # Released in the same script: claimable at once, with the value verified.
    (c,) = broker.claim(10, 30, "n")
    assert c.task_id == left and [(i.task_id, i.state, i.value) for i in c.inputs] == [
        (top, "completed", b"2")
    ]
    assert broker.finish(left, c.token, "completed", value=b"12")
    (c,) = broker.claim(10, 30, "n")
    assert c.task_id == bottom and [i.task_id for i in c.inputs] == [left]  # only what it takes
    assert broker.finish(bottom, c.token, "completed", value=b"ok")
    assert broker.r.scard(broker.keys.waiting) == 0 and not broker.r.exists(broker.keys.held)


def test_retries_of_an_upstream_are_invisible_downstream(broker: Broker) -> None:
    up = broker.submit(b"up", name="up", policy=RetryPolicy(max_retries=2, backoff_base=0))
    dep = broker.submit(b"dep", name="dep", after=[up])
    (c,) = broker.claim(10, 30, "n")
    assert broker.finish(up, c.token, "error", error="ValueError: once")  # retried
    assert broker.meta(dep)["state"] == "waiting"  # type: ignore[index]
    (c,) = broker.claim(1, 0, "dead-node")  # and lost once, reclaimed
    assert broker.reclaim() == ([up], [])
    assert broker.meta(dep)["state"] == "waiting"  # type: ignore[index]
    (c,) = broker.claim(10, 30, "n")
    assert c.attempts == 3 and broker.finish(up, c.token, "completed", value=b"v")
    assert [c.task_id for c in broker.claim(10, 30, "n")] == [dep]


def test_failure_propagates_transitively_and_all_done_runs_anyway(broker: Broker) -> None:
    bad = broker.submit(b"bad", name="bad", policy=NO_WAIT)
    one = broker.submit(b"one", name="one", after=[bad], needs=[bad])
    two = broker.submit(b"two", name="two", after=[one])
    cleanup = broker.submit(b"c", name="cleanup", after=[bad], needs=[bad], all_done=True)
    late = broker.submit(b"late", name="late", after=[two], needs=[two], all_done=True)
    (c,) = broker.claim(10, 30, "n")
    assert broker.finish(bad, c.token, "error", value=b"exc", error="ValueError: boom")
    first = broker.lookup(one)[0]
    assert first is not None and (first.state, first.upstream) == ("failed", bad)
    assert first.error.startswith(f"UpstreamFailedError: task {one} (one) did not run")
    assert first.error.endswith(f"task {bad} (bad) failed with ValueError: boom")
    second = broker.lookup(two)[0]
    assert second is not None and (second.state, second.upstream) == ("failed", one)
    # Neither ran, and neither is a dead letter of its own.
    assert broker.meta(one) is None and broker.r.zcard(broker.keys.dlq) == 1
    claimed = claim_all(broker)
    assert set(claimed) == {cleanup, late}
    (i,) = claimed[cleanup].inputs
    assert (i.task_id, i.state, i.value, i.error) == (bad, "failed", b"exc", "ValueError: boom")
    (j,) = claimed[late].inputs
    assert (j.task_id, j.state, j.value, j.upstream) == (two, "failed", None, one)


def test_cancel_propagates_down_the_graph(broker: Broker) -> None:
    parked = broker.submit(b"p", name="p", delay=3600)
    child = broker.submit(b"c", name="c", after=[parked], needs=[parked])
    grandchild = broker.submit(b"g", name="g", after=[child])
    keeper = broker.submit(b"k", name="k", after=[child], all_done=True)
    assert broker.cancel(child) == 1
    assert broker.outcome(child) == ("cancelled", None, "cancelled")
    g = broker.lookup(grandchild)[0]
    assert g is not None and g.state == "cancelled" and g.upstream == child
    assert [c.task_id for c in broker.claim(10, 30, "n")] == [keeper]  # all_done: runs
    assert broker.cancel(parked) == 1  # its edge to the cancelled child is cleaned up
    assert not broker.r.exists(broker.keys.down)


def test_submit_sees_upstreams_that_already_ended(broker: Broker) -> None:
    from procqueue.errors import TaskNotFoundError

    done = broker.submit(b"d", name="done")
    failed = broker.submit(b"f", name="failed", policy=NO_WAIT)
    cancelled = broker.submit(b"x", name="cancelled", delay=3600)
    for c in broker.claim(10, 30, "n"):
        if c.task_id == done:
            broker.finish(done, c.token, "completed", value=b"1")
        else:
            broker.finish(failed, c.token, "error", error="KeyError: k")
    broker.cancel(cancelled)
    ok = broker.submit(b"ok", name="ok", after=[done], needs=[done])
    doomed = broker.submit(b"doomed", name="doomed", after=[done, failed])
    gone = broker.submit(b"gone", name="gone", after=[cancelled])
    anyway = broker.submit(b"a", name="anyway", after=[failed, cancelled], all_done=True)
    assert broker.outcome(doomed)[0] == "failed"  # type: ignore[index]
    assert broker.outcome(gone)[0] == "cancelled"  # type: ignore[index]
    assert {c.task_id for c in broker.claim(10, 30, "n")} == {ok, anyway}
    with pytest.raises(TaskNotFoundError):
        broker.submit(b"?", name="orphan", after=[done, 10**9])
    assert broker.r.scard(broker.keys.waiting) == 0  # the refused one left nothing


def test_an_upstream_value_outlives_its_result_ttl_until_the_dependent_ends(
    broker: Broker,
) -> None:
    retry = RetryPolicy(max_retries=1, backoff_base=0)
    up = broker.submit(b"u", name="up")
    dep = broker.submit(b"d", name="dep", after=[up], needs=[up], policy=retry)
    (c,) = broker.claim(1, 30, "n")
    broker.finish(up, c.token, "completed", value=b"v")
    broker.r.delete(broker.keys.result(up))  # as if result_ttl had passed
    (first,) = broker.claim(1, 0, "dying-node")  # its lease is lost: it runs again
    assert first.task_id == dep and first.inputs[0].value == b"v"
    assert broker.reclaim() == ([dep], [])
    (again,) = broker.claim(1, 30, "n")
    assert again.inputs[0].value == b"v"  # still held for the retry
    broker.finish(dep, again.token, "completed", value=b"w")
    assert not broker.r.exists(broker.keys.held)  # released with its last dependent


def test_a_forged_upstream_value_is_never_opened(broker: Broker) -> None:
    up = broker.submit(b"u", name="up")
    dep = broker.submit(b"d", name="dep", after=[up], needs=[up], policy=NO_WAIT)
    (c,) = broker.claim(1, 30, "n")
    broker.finish(up, c.token, "completed", value=b"v")
    broker.r.hset(broker.keys.held, up, b"\x80\x05N.")
    (c,) = broker.claim(1, 30, "n")
    assert c.task_id == dep and c.payload is None and c.rejected
    assert broker.outcome(dep)[0] == "failed"  # type: ignore[index]


def test_a_dag_leaves_only_counters_once_results_expire(broker: Broker) -> None:
    a = broker.submit(b"a", name="a", policy=NO_WAIT)
    b = broker.submit(b"b", name="b", after=[a], needs=[a])
    c = broker.submit(b"c", name="c", after=[a], needs=[a])
    d = broker.submit(b"d", name="d", after=[b, c], needs=[b, c])
    bad = broker.submit(b"x", name="bad", policy=NO_WAIT)
    e = broker.submit(b"e", name="e", after=[bad, d])
    f = broker.submit(b"f", name="f", after=[e], needs=[e], all_done=True)
    g = broker.submit(b"g", name="g", after=[f], delay=3600)
    h = broker.submit(b"h", name="h", after=[g])
    ids = [a, b, c, d, bad, e, f, g, h]
    while True:
        claimed = broker.claim(100, 30, "n")
        if not claimed:
            break
        for cl in claimed:
            outcome = "error" if cl.task_id == bad else "completed"
            broker.finish(cl.task_id, cl.token, outcome, value=b"v", error="E: e")
    assert broker.cancel(g) == 1  # delayed after its release; h follows it
    assert all(broker.lookup(t)[0] is not None for t in ids)  # every task ended
    assert broker.purge_dead() == 1
    broker.r.zadd(broker.keys.ended_ttl, {str(t): 0 for t in ids}, xx=True)  # as if expired
    broker.reclaim()
    for t in ids:
        broker.r.delete(broker.keys.result(t))  # as their TTL would
    counters = {broker.keys.ids, broker.keys.seq, broker.keys.fence, broker.keys.wake}
    assert tag_keys(broker) == {k.encode() for k in counters}


# ---------------------------------------------------------------- concurrency caps


def test_a_capped_key_parks_in_order_and_a_lease_end_frees_its_slot(broker: Broker) -> None:
    retry = RetryPolicy(max_retries=1, backoff_base=0)
    limit = ("db", [])  # a cap only: no rate windows
    keyed = [broker.submit(b"k", name=f"k{i}", limit=limit, cap=1, policy=retry) for i in range(3)]
    urgent = broker.submit(b"k", name="urgent", limit=limit, cap=1, priority=5)
    free = broker.submit(b"f", name="free")
    got = claim_all(broker, "node-a")
    assert set(got) == {urgent, free}  # one of the key, and other work beside it
    assert all(broker.meta(t)["state"] == "parked" for t in keyed)  # type: ignore[index]
    assert broker.claim(10, 30, "node-b") == []  # at its cap on every node
    broker.finish(urgent, got[urgent].token, "completed")
    (c,) = broker.claim(10, 30, "node-b")
    assert c.task_id == keyed[0] and c.attempts == 1  # FIFO within the key; no attempt used
    assert broker.claim(10, 0, "node-c") == []
    # A node dying with the slot: reclaim frees it for the next parked task.
    broker.r.zadd(broker.keys.leases, {str(keyed[0]): 0}, xx=True)
    assert broker.reclaim() == ([keyed[0]], [])
    (c,) = broker.claim(10, 30, "node-c")
    assert c.task_id == keyed[1]
    assert broker.cancel(keyed[2]) == 1  # a parked task cancelled leaves no count
    broker.finish(keyed[1], c.token, "completed")
    (c,) = broker.claim(10, 30, "node-c")  # the retried one comes back in its turn
    assert c.task_id == keyed[0] and c.attempts == 2
    broker.finish(keyed[0], c.token, "completed")
    assert not broker.r.exists(broker.keys.caps) and not broker.r.exists(broker.keys.parked)


def test_cancelling_an_unparked_task_passes_its_slot_on(broker: Broker) -> None:
    limit = ("db", [])
    keyed = [broker.submit(b"k", name=f"k{i}", limit=limit, cap=1) for i in range(3)]
    (c,) = broker.claim(10, 30, "n")
    broker.finish(keyed[0], c.token, "completed")  # keyed[1] unparked, not claimed yet
    assert broker.meta(keyed[1])["state"] == "pending"  # type: ignore[index]
    assert broker.cancel(keyed[1]) == 1
    assert [c.task_id for c in broker.claim(10, 30, "n")] == [keyed[2]]


# ---------------------------------------------------------------- a property

CAP = 2


@st.composite
def dags(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Random DAGs: each task may depend on earlier ones, take some of their
    results, trigger on all_done, share a capped key, and has a planned fate."""
    n = draw(st.integers(2, 12))
    tasks = []
    for i in range(n):
        ups = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        tasks.append(
            {
                "ups": ups,
                "needs": [u for u in ups if draw(st.booleans())],
                "all_done": draw(st.booleans()),
                "capped": draw(st.booleans()),
                "priority": draw(st.integers(0, 2)),
                "fate": draw(st.sampled_from(["ok", "ok", "fail", "retry", "cancel", "lost"])),
            }
        )
    return tasks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=dags(), rnd=st.randoms(use_true_random=False))
def test_every_task_ends_once_no_dependent_runs_early_and_caps_hold(
    plan: list[dict[str, Any]], rnd: Any
) -> None:
    """Submits, claims (held open across steps), outcomes, lost leases and
    cancels interleaved at random: every task ends in exactly one final state;
    none is claimed before its upstreams ended as its trigger wants, or after
    it ended; the capped key never has more than ``CAP`` leases; and nothing is
    left behind."""
    client = require_redis()
    b = Broker(client, f"h-{uuid.uuid4().hex[:12]}", Signer([SECRET]), result_ttl=60)
    retry = RetryPolicy(max_retries=1, backoff_base=0)
    ids: list[int] = []
    final: dict[int, str] = {}  # index -> state, read as soon as it is final
    claims: dict[int, int] = {}
    held: list[tuple[int, Any]] = []

    def settle() -> None:
        for i, tid in enumerate(ids):
            if i not in final and (o := b.lookup(tid)[0]) is not None:
                final[i] = o.state

    def busy() -> bool:
        return any(b.r.exists(getattr(b.keys, k)) for k in ("ready", "delayed", "parked"))

    try:
        pending = list(range(len(plan)))
        for _ in range(1000):
            if not (pending or held or busy()):
                break
            step = rnd.random()
            if pending and step < 0.4:  # submit the next task
                i = pending.pop(0)
                t = plan[i]
                tid = b.submit(
                    b"x", name=f"t{i}", policy=retry, priority=t["priority"],
                    after=[ids[u] for u in t["ups"]], needs=[ids[u] for u in t["needs"]],
                    all_done=t["all_done"], limit=("k", []) if t["capped"] else None, cap=CAP,
                )  # fmt: skip
                ids.append(tid)
                if t["fate"] == "cancel" and rnd.random() < 0.5:
                    b.cancel(tid)  # before it runs: waiting, queued or parked
            elif held and step < 0.7:  # one held attempt ends
                i, c = held.pop(rnd.randrange(len(held)))
                fate = plan[i]["fate"]
                if fate == "lost" and claims[i] == 1:
                    b.r.zadd(b.keys.leases, {str(c.task_id): 0}, xx=True)
                    b.reclaim()
                elif fate == "fail" or (fate == "retry" and claims[i] == 1):
                    b.finish(c.task_id, c.token, "error", value=b"e", error="ValueError: no")
                elif fate == "cancel":
                    b.finish(c.task_id, c.token, "cancelled", error="cancelled")
                else:
                    b.finish(c.task_id, c.token, "completed", value=b"v")
            else:
                for c in b.claim(rnd.randint(1, 3), 30, "n"):
                    i = ids.index(c.task_id)
                    t = plan[i]
                    assert i not in final, f"t{i} claimed after it ended"
                    for u in t["ups"]:
                        assert u in final, f"t{i} claimed before its upstream t{u} ended"
                        assert t["all_done"] or final[u] == "completed"
                    assert {x.task_id for x in c.inputs} == {ids[u] for u in t["needs"]}
                    claims[i] = claims.get(i, 0) + 1
                    held.append((i, c))
                assert sum(plan[i]["capped"] for i, _ in held) <= CAP
            settle()
        else:
            pytest.fail("the queue did not drain: something is stuck")
        settle()
        assert sorted(final) == list(range(len(plan)))  # every task ended
        for i, t in enumerate(plan):
            if not t["all_done"] and any(final[u] != "completed" for u in t["ups"]):
                assert i not in claims and final[i] in ("failed", "cancelled")
            assert final[i] != "completed" or i in claims
        assert b.purge_dead() == sum(s == "failed" and i in claims for i, s in final.items())
        for name in ("waiting", "down", "held", "caps", "parked", "leases"):
            assert not b.r.exists(getattr(b.keys, name)), name
    finally:
        keys = list(client.scan_iter(match=f"{b.keys.tag}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
