"""What makes a node fast without weakening a guarantee (issue #9): outcomes
reported in one script run, each still fenced and announced on its own; the
client's one-script outcome read; results pickled by the stdlib when it can;
the adaptive prefetch; the keeper's view of the earliest lease.

Real Redis at 127.0.0.1:6379, a queue name per test (its keys deleted after);
skipped without one unless ``PROCQUEUE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import pickle
import time
from typing import Any, cast

import pytest

from procqueue import RetryPolicy
from procqueue.errors import InvalidArgumentError
from procqueue.redis import _node
from procqueue.redis._codec import dump_outcome, load_outcome
from procqueue.redis._node import MAX_EXTRA, PREFETCH_WINDOW, Node, _Pace
from procqueue.redis._protocol import Broker, Outcome, announced, announcement
from procqueue.redis._scripts import INLINE_MAX
from procqueue.redis._signing import SignatureError

SECRET = b"b" * 32


def test_one_report_of_many_outcomes_fences_each_and_announces_them_at_once(broker: Broker) -> None:
    retry = RetryPolicy(max_retries=1, backoff_base=0)
    ids = [broker.submit(b"call", name=f"t{i}", policy=retry) for i in range(4)]
    claimed = {c.task_id: c for c in broker.claim(10, 30, "node-a")}
    pubsub = broker.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(broker.keys.done)
    a, b, c, d = ids
    got = broker.finish_many(
        [
            (a, claimed[a].token, "completed", b"1", ""),
            (b, claimed[b].token + 1000, "completed", b"forged", ""),  # a stale token
            (c, claimed[c].token, "error", b"", "ValueError: once"),  # retried
            (d, claimed[d].token, "cancelled", b"", "cancelled"),
        ]
    )
    assert got == [True, False, True, True]
    assert broker.outcome(a) == ("completed", b"1", "")
    assert broker.outcome(b) is None  # still leased to its node: the forged one was dropped
    assert broker.meta(c)["state"] == "retrying"  # type: ignore[index]
    assert broker.outcome(d) == ("cancelled", None, "cancelled")
    # One message for the run, naming each task that ended (a retry ends
    # nothing), in the order they ended: listeners read a batch, not a task.
    msg = None
    deadline = time.monotonic() + 5
    while msg is None and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
    assert msg is not None
    seen = announcement(msg["data"])
    assert pubsub.get_message(timeout=0.05) is None  # nothing else was published
    pubsub.close()
    assert sorted(seen) == sorted(announced(msg["data"])) == sorted([a, d])
    # A completed task's small value rides along, sealed; a cancelled one has none.
    carried, none = seen[a], seen[d]
    assert carried is not None and none is None
    assert broker.carried(a, carried) == (Outcome("completed", b"1", ""), True)


def test_a_done_message_carries_small_values_only_and_each_is_checked(broker: Broker) -> None:
    big = b"x" * (INLINE_MAX + 1)
    small = b":|,~:12:"  # the message's own separators, inside a value
    ids = [broker.submit(b"call", name=f"t{i}") for i in range(3)]
    claimed = {c.task_id: c for c in broker.claim(10, 30, "node-a")}
    pubsub = broker.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(broker.keys.done)
    a, b, c = ids
    values = {a: small, b: big, c: b"ok"}
    broker.finish_many([(t, claimed[t].token, "completed", values[t], "") for t in ids])
    msg = None
    deadline = time.monotonic() + 5
    while msg is None and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.2)
    pubsub.close()
    assert msg is not None
    seen = announcement(msg["data"])
    assert seen[b] is None  # too big: read with LOOKUP
    assert broker.carried(a, seen[a] or b"") == (Outcome("completed", small, ""), True)
    assert broker.carried(c, seen[c] or b"") == (Outcome("completed", b"ok", ""), True)
    # Whatever a message carries is opened before use: a forged or moved value fails.
    with pytest.raises(SignatureError):
        broker.carried(b, seen[a] or b"")  # another task's sealed value
    with pytest.raises(SignatureError):
        broker.carried(a, b"PQ1" + b"\0" * 40)
    # The format, by hand: plain ids, inline entries, both, and a cut-short one.
    assert announcement(b"7") == {7: None}
    assert announcement(b"7,8") == {7: None, 8: None}
    assert announcement(b"~7:3:a|b9:0:|8,10") == {7: b"a|b", 9: b"", 8: None, 10: None}
    for bad in (b"~7:30:short", b"~1:0:2:-9:", b"~7: 3:abc", b"~7:+3:abc", b"~7:1_0:abc"):
        with pytest.raises(ValueError):  # raised, never a loop: anyone may publish here
            announcement(bad)


def test_an_empty_report_costs_nothing_and_a_bad_outcome_is_refused(broker: Broker) -> None:
    assert broker.finish_many([]) == []
    tid = broker.submit(b"call", name="t")
    (c,) = broker.claim(1, 30, "node-a")
    with pytest.raises(InvalidArgumentError):
        broker.finish_many([(tid, c.token, "completed", b"", ""), (tid, c.token, "won", b"", "")])
    assert broker.outcome(tid) is None  # nothing was recorded


def test_lookup_tells_unknown_live_and_final_apart_in_one_read(broker: Broker) -> None:
    assert broker.lookup(999_999) == (None, False)
    tid = broker.submit(b"call", name="t")
    assert broker.lookup(tid) == (None, True)
    (c,) = broker.claim(1, 30, "node-a")
    assert broker.lookup(tid) == (None, True)
    assert broker.finish(tid, c.token, "completed", value=b"v")
    outcome, known = broker.lookup(tid)
    assert known and outcome is not None and (outcome.state, outcome.value) == ("completed", b"v")


def test_results_pickle_with_the_stdlib_and_fall_back_to_cloudpickle() -> None:
    assert dump_outcome(41) == pickle.dumps(41, protocol=5)
    assert load_outcome(dump_outcome(ValueError("x"))).args == ("x",)

    class Local:  # not importable by name: the stdlib refuses, cloudpickle does it
        def __init__(self) -> None:
            self.v = 7

    value = load_outcome(dump_outcome(Local()))
    assert value.v == 7 and type(value).__name__ == "Local"


def test_the_pace_follows_completions_and_falls_after_an_idle_spell() -> None:
    pace = _Pace()
    t = 0.0
    pace._since = t
    for _ in range(40):  # 1,000 completions a second for 2 s
        t += 0.05
        pace.add(50, t)
    assert 900 < pace.rate <= 1000
    pace.add(1, t + 10.0)  # one completion after 10 s of nothing
    assert pace.rate < 10  # from ~1,000: the next claims are small again


def test_the_adaptive_prefetch_grows_with_the_pace_between_its_bounds() -> None:
    node = Node(cast(Any, None), 2)
    assert node._extra_now() == 2  # the floor: one task per worker
    node._pace.rate = 2_000.0
    assert node._extra_now() == int(2_000 * PREFETCH_WINDOW)
    node._pace.rate = 1e9
    assert node._extra_now() == MAX_EXTRA
    fixed = Node(cast(Any, None), 2, prefetch=3)
    fixed._pace.rate = 1e9
    assert fixed._extra_now() == 3  # --prefetch is taken as given


def test_the_keeper_sees_when_the_earliest_lease_ends(broker: Broker) -> None:
    node = Node(broker, 1, lease=30.0)
    assert node._next_expiry() is None
    broker.submit(b"call", name="t")
    broker.claim(1, 5.0, "node-a")
    left = node._next_expiry()
    assert left is not None and 4.0 < left <= 5.0
    assert _node.RECLAIM_GAP < 1.0


def _complete_all(broker: Broker, n: int) -> None:
    """Act as a node: claim ``n`` tasks and report each as completed with its id."""
    claimed: list[Any] = []
    deadline = time.monotonic() + 30
    while len(claimed) < n:
        assert time.monotonic() < deadline, f"claimed {len(claimed)} of {n}"
        claimed += broker.claim(n - len(claimed), 30, "node-t")
    broker.finish_many(
        [(c.task_id, c.token, "completed", dump_outcome(c.task_id), "") for c in claimed]
    )


def test_a_burst_of_results_is_read_in_one_go_then_awaited_without_a_round_trip(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's listener takes a burst of its own tasks' outcomes from the
    done messages (small values ride in them) and keeps them; ``result()``
    afterwards asks Redis nothing."""
    import asyncio

    from conftest import REDIS_URL

    from procqueue import TaskQueue

    async def main() -> None:
        async with TaskQueue(broker=REDIS_URL, queue=broker.queue, secret=SECRET) as q:
            ids = [await q.submit(abs, -i) for i in range(30)]
            remote = cast(Any, q)._remote
            looked_up = _count_lookups(remote, monkeypatch)
            _complete_all(broker, 30)
            deadline = time.monotonic() + 30
            while len(remote._early) < 30:  # the listener's batch, a condition with a deadline
                assert time.monotonic() < deadline, f"kept {len(remote._early)} of 30"
                await asyncio.sleep(0.01)

            def no_single_lookups(task_id: int) -> Any:
                raise AssertionError(f"a round trip for task {task_id}")

            monkeypatch.setattr(remote._broker, "lookup", no_single_lookups)
            assert [await q.result(t) for t in ids] == ids  # each reported its own id
            assert not remote._early
            assert not looked_up  # small values came in the done messages

    asyncio.run(main())


def test_a_listed_schedule_runs_now_with_its_own_retry_policy(broker: Broker) -> None:
    """``schedules()`` hands back handles whose run_now uses the policy the
    schedule was stored with, not the client's default."""
    import asyncio

    from conftest import REDIS_URL

    from procqueue import TaskQueue

    async def main() -> None:
        client_default = RetryPolicy(max_retries=0)
        async with TaskQueue(
            broker=REDIS_URL, queue=broker.queue, secret=SECRET, retry=client_default
        ) as q:
            await q.schedule(abs, -1, every=3600, name="hourly", max_retries=4)
            [handle] = q.schedules()
            tid = handle.run_now()
            assert q.get_task_status(tid).max_retries == 4
            handle.cancel()

    asyncio.run(main())


def test_a_node_never_holds_more_than_its_capacity_with_two_claimers(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim loop and the reporter (which claims when its reports free
    room) take turns: no claim asks for more than the room left, so a node
    with 1 worker and ``prefetch=1`` never holds more than 2 tasks."""
    import threading

    from procqueue.redis._codec import dump_call

    ids = [broker.submit(dump_call(abs, (-i,), {}), name="abs") for i in range(40)]
    node = Node(broker, 1, prefetch=1)
    capacity, seen = 2, []
    claim = broker.claim_batch

    def counted_claim(n: int, lease: float, owner: str) -> Any:
        with node._lock:
            seen.append((threading.current_thread().name, len(node._held), n))
        return claim(n, lease, owner)

    monkeypatch.setattr(broker, "claim_batch", counted_claim)
    _serve_until_done(node, ids, broker)
    outcomes = [broker.lookup(t)[0] for t in ids]
    assert [o.state if o else None for o in outcomes] == ["completed"] * len(ids)
    assert [load_outcome(o.value) for o in outcomes if o] == list(range(len(ids)))
    assert all(held + n <= capacity for _, held, n in seen), seen
    assert {who for who, _, _ in seen} == {"node-run", "pq-node-reporter"}


def test_a_forged_value_in_a_done_message_is_never_unpickled_nor_believed(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone who can publish on the queue's channel can put bytes in a done
    message: the client checks them like a stored value, and one that fails
    is neither unpickled nor taken as the outcome: the client reads the
    stored outcome instead, and the task's result is its own."""
    import asyncio

    from conftest import REDIS_URL

    from procqueue import TaskQueue

    async def main() -> None:
        async with TaskQueue(broker=REDIS_URL, queue=broker.queue, secret=SECRET) as q:
            tid = await q.submit(abs, -1)
            remote = cast(Any, q)._remote
            looked_up = _count_lookups(remote, monkeypatch)
            deadline = time.monotonic() + 30
            while broker.r.pubsub_numsub(broker.keys.done)[0][1] < 1:  # the listener is on
                assert time.monotonic() < deadline, "the client never subscribed"
                await asyncio.sleep(0.01)
            forged = b"PQ1" + bytes(40) + pickle.dumps(1)
            broker.r.publish(broker.keys.done, b"~%d:%d:%s" % (tid, len(forged), forged))
            while tid not in looked_up:  # the bad value sent the listener to Redis
                assert time.monotonic() < deadline, "the forged message was not read"
                await asyncio.sleep(0.01)
            _complete_all(broker, 1)  # the real outcome: the task's own id
            assert await asyncio.wait_for(q.result(tid), 30) == tid

    asyncio.run(main())


def test_a_failed_claim_in_the_reporter_leaves_the_node_serving(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reporter also drains the node on stop: an error of any kind in a
    claim it makes (here Redis refusing the script) is logged, and the
    reporter, the claim loop and every task go on."""
    import threading

    import redis

    from procqueue.redis._codec import dump_call

    ids = [broker.submit(dump_call(abs, (-i,), {}), name="abs") for i in range(20)]
    node = Node(broker, 1, prefetch=1)
    claim, failed = broker.claim_batch, []

    def flaky_claim(n: int, lease: float, owner: str) -> Any:
        if threading.current_thread().name == "pq-node-reporter" and not failed:
            failed.append(n)
            raise redis.exceptions.ResponseError("READONLY You can't write against a replica.")
        return claim(n, lease, owner)

    monkeypatch.setattr(broker, "claim_batch", flaky_claim)
    _serve_until_done(node, ids, broker)
    assert failed  # the reporter's claim did fail once


def _serve_until_done(node: Node, ids: list[int], broker: Broker) -> None:
    """Run ``node`` in a thread until it has completed ``ids``, stop it (it
    must drain and return), and check each task answered its own index."""
    import threading

    runner = threading.Thread(target=node.run, name="node-run")
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while node.completed < len(ids):  # a condition with a deadline
            assert time.monotonic() < deadline, f"{node.completed} of {len(ids)} done"
            time.sleep(0.01)
    finally:
        node.stop()
        runner.join(timeout=60)
    assert not runner.is_alive()  # it drained and stopped
    outcomes = [broker.lookup(t)[0] for t in ids]
    assert [load_outcome(o.value) for o in outcomes if o] == list(range(len(ids)))


def test_a_stopping_node_waits_for_a_claim_under_way() -> None:
    """A claim the reporter began before ``stop()`` starts its tasks, which
    the node then runs and reports: the drain waits for that claim to end,
    not only for the held tasks (else the keeper stops renewing leases the
    claim just took)."""
    import threading

    node = Node(cast(Any, None), 1)
    node._claiming = True  # as the reporter sets it, under the lock
    drained = threading.Event()
    drainer = threading.Thread(target=lambda: (node._drain(), drained.set()))
    drainer.start()
    deadline = time.monotonic() + 30
    while not cast(Any, node._lock)._waiters:  # the drain is waiting on the node's lock
        assert not drained.is_set(), "the drain returned while a claim was under way"
        assert time.monotonic() < deadline, "the drain never waited"
        time.sleep(0.001)
    assert not drained.is_set()
    with node._lock:  # what _claim's finally does
        node._claiming = False
        node._lock.notify_all()
    drainer.join(timeout=30)
    assert drained.is_set()


def _count_lookups(remote: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids a client's ``lookup_many`` reads from now on, as a list that fills."""
    looked_up: list[int] = []
    lookup_many = remote._broker.lookup_many

    def counted(task_ids: list[int]) -> Any:
        looked_up.extend(task_ids)
        return lookup_many(task_ids)

    monkeypatch.setattr(remote._broker, "lookup_many", counted)
    return looked_up


def test_a_claim_says_the_ready_set_ran_dry_only_when_it_did(broker: Broker) -> None:
    """A short batch is not an empty ready set (tasks parked at their key's
    cap are taken off it but not returned), and a full one may have emptied
    it. The node waits for a wake token only when nothing is left ready."""
    capped = [broker.submit(b"call", name="capped", limit=("db", []), cap=1) for _ in range(3)]
    plain = [broker.submit(b"call", name="plain") for _ in range(2)]
    got, dry = broker.claim_batch(2, 30, "node-a")
    assert [c.task_id for c in got] == capped[:1] and not dry  # the 2nd is parked
    got, dry = broker.claim_batch(2, 30, "node-a")
    assert [c.task_id for c in got] == plain[:1] and not dry  # the 3rd capped one parked too
    got, dry = broker.claim_batch(1, 30, "node-a")
    assert [c.task_id for c in got] == plain[1:] and dry  # a full batch that emptied it
    assert broker.claim_batch(1, 30, "node-a") == ([], True)


def test_an_idle_node_claims_once_per_task_it_is_woken_for(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task at a time on an idle node: one CLAIM each (the one that
    takes it), then the node blocks on the wake list. It used to claim twice
    more per task (the reporter after the report, the claim loop before
    blocking), both empty: CPU that, on a small machine, the submitting
    client needs (issue #9's idle round trip)."""
    import threading

    from procqueue.redis._codec import dump_call

    node = Node(broker, 1, prefetch=0)
    claim, calls = broker.claim_batch, []

    def counted_claim(n: int, lease: float, owner: str) -> Any:
        got = claim(n, lease, owner)
        calls.append(len(got[0]))
        return got

    monkeypatch.setattr(broker, "claim_batch", counted_claim)
    runner = threading.Thread(target=node.run, name="node-run")
    runner.start()
    try:
        ids = []
        for i in range(10):
            ids.append(broker.submit(dump_call(abs, (-i,), {}), name="abs"))
            deadline = time.monotonic() + 30
            while broker.lookup(ids[-1])[0] is None:  # a condition with a deadline
                assert time.monotonic() < deadline, f"task {i} never ended"
                time.sleep(0.005)
    finally:
        node.stop()
        runner.join(timeout=60)
    assert not runner.is_alive()
    assert calls.count(1) == 10
    # The first claim (empty: nothing queued yet), and at most one spurious
    # wake-up: a claim per task, not three.
    assert calls.count(0) <= 2, calls


def test_a_task_that_becomes_the_earliest_delayed_one_wakes_a_node(broker: Broker) -> None:
    """A node whose last claim emptied the ready set blocks on the wake
    list, its wait taken from the earliest delayed task then. A task put on
    ``delayed`` ahead of that one (a delayed submit, a retry's backoff)
    pushes a token, so the node looks again; one due later pushes none. It
    used to start such a task up to the 1 s idle wait late."""
    wake = broker.keys.wake
    later = broker.submit(b"call", name="later", delay=60.0)
    assert broker.r.llen(wake) == 1  # the first delayed task is the earliest
    broker.r.delete(wake)
    broker.submit(b"call", name="even later", delay=120.0)
    assert broker.r.llen(wake) == 0  # behind the earliest: no node's wait changes
    broker.submit(b"call", name="sooner", delay=30.0)
    assert broker.r.llen(wake) == 1
    broker.r.delete(wake)
    # A retry's backoff ahead of every delayed task: a token too.
    retried = broker.submit(b"call", name="retried", policy=RetryPolicy(max_retries=1))
    broker.r.delete(wake)
    (c,) = broker.claim(1, 30, "node-a")
    assert c.task_id == retried and later != retried
    assert broker.finish(c.task_id, c.token, "error", error="ValueError: once")
    assert broker.meta(retried)["state"] == "retrying"  # type: ignore[index]
    assert broker.r.llen(wake) == 1
