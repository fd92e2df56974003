"""``dlq.requeue(..., cascade=True)`` on a Redis broker: the dependents a dead
letter's failure ended come back as new tasks waiting on the new ids, with
their ``result_of`` markers moved, in one script; a dependent whose kept copy
expired, or whose other upstream is no longer known, refuses the requeue and
leaves the letter where it was.

The protocol tests drive the scripts through ``Broker`` against a real Redis
(each with its own queue, its keys deleted after); the last test runs a chain
on a node started through the CLI. Without Redis they skip, unless
``PROCQUEUE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from _tasks import add, fail_times, ident
from conftest import REDIS_URL as URL
from conftest import require_redis
from test_redis_nodes import SECRET as SECRET_TEXT
from test_redis_nodes import Cluster

from procqueue import (
    ProcQueue,
    RetryPolicy,
    TaskNotFoundError,
    TaskState,
    UpstreamFailedError,
    result_of,
    task_id,
)
from procqueue._runtime import _calls
from procqueue.redis._codec import dump_call, load_call
from procqueue.redis._protocol import Broker

SECRET = b"s" * 32
NO_WAIT = RetryPolicy(max_retries=0, backoff_base=0)


def call(fn: Any, *args: Any) -> bytes:
    return dump_call(fn, args, {})


def fail(broker: Broker, tid: int) -> None:
    (c,) = [c for c in broker.claim(100, 30, "n") if c.task_id == tid]
    assert broker.finish(tid, c.token, "error", error="ValueError: boom")


def complete(broker: Broker, tid: int, value: bytes = b"v") -> Any:
    """Claim ``tid`` (it must be claimable now), complete it; returns its claim."""
    (c,) = [c for c in broker.claim(100, 30, "n") if c.task_id == tid]
    assert broker.finish(tid, c.token, "completed", value=value)
    return c


def arguments(payload: bytes | None) -> Any:
    assert payload is not None
    return _calls._load_segments(load_call(payload)[1])


def dormant(broker: Broker) -> dict[bytes, bytes]:
    return dict(broker.r.hgetall(broker.keys.dormant))


def test_a_chain_comes_back_on_the_new_ids_with_its_markers_moved(broker: Broker) -> None:
    root = broker.submit(call(add, 1), name="root", policy=NO_WAIT)
    a = broker.submit(call(add, result_of(root), 1), name="a", after=[root], needs=[root])
    b = broker.submit(
        call(ident, {"v": [result_of(a)]}), name="b", after=[root, a], needs=[a], priority=3
    )
    cleanup = broker.submit(b"c", name="cleanup", after=[root], all_done=True)
    fail(broker, root)
    assert broker.lookup(a)[0].upstream == root  # type: ignore[union-attr]
    assert broker.lookup(b)[0].state == "failed"  # type: ignore[union-attr]
    complete(broker, cleanup)  # all_done ran: nothing to re-arm there

    ids = broker.requeue_cascade(root, max_retries=2)
    assert ids is not None and set(ids) == {root, a, b}
    assert len(set(ids.values()) - {root, a, b}) == 3  # three new tasks
    new_a, new_b = broker.meta(ids[a]), broker.meta(ids[b])
    assert new_a is not None and new_b is not None
    assert new_a["state"] == new_b["state"] == "waiting"
    assert new_a["ups"] == [ids[root]] and new_b["ups"] == [ids[root], ids[a]]
    assert new_b["inp"] == {str(ids[a]): 1} and new_b["priority"] == 3
    assert broker.meta(ids[root])["max_retries"] == 2  # type: ignore[index]
    assert new_a["max_retries"] == 0  # the override is the letter's alone
    # The old tasks stay as they ended; the letter left the DLQ; no copy is left.
    assert broker.lookup(a)[0].state == "failed"  # type: ignore[union-attr]
    assert broker.r.zcard(broker.keys.dlq) == 0 and dormant(broker) == {}

    complete(broker, ids[root], b"10")
    c = complete(broker, ids[a], b"11")
    assert [(i.task_id, i.value) for i in c.inputs] == [(ids[root], b"10")]
    assert arguments(c.payload)[0][0].task_id == ids[root]  # the marker follows
    (c,) = broker.claim(10, 30, "n")
    assert c.task_id == ids[b] and [i.task_id for i in c.inputs] == [ids[a]]
    assert arguments(c.payload)[0][0]["v"][0].task_id == ids[a]  # nested, too


def test_without_cascade_the_dependents_stay_failed_and_their_copies_expire(
    broker: Broker,
) -> None:
    root = broker.submit(b"r", name="root", policy=NO_WAIT)
    dep = broker.submit(b"d", name="dep", after=[root])
    fail(broker, root)
    assert set(dormant(broker)) == {b"%d:n" % root, b"%d#1" % root, b"%d" % dep, b"%d:m" % dep}
    new = broker.requeue_dead(root)
    assert new is not None and broker.requeue_cascade(root) is None  # not a letter any more
    assert broker.lookup(dep)[0].state == "failed"  # type: ignore[union-attr]
    assert set(dormant(broker)) == {b"%d" % dep, b"%d:m" % dep}  # the edges went
    broker.r.zadd(broker.keys.ended_ttl, {str(dep): 0}, xx=True)  # as if expired
    broker.reclaim()
    assert dormant(broker) == {} and broker.ended(dep) is None


def test_a_dependent_whose_copy_expired_refuses_the_cascade(broker: Broker) -> None:
    root = broker.submit(b"r", name="root", policy=NO_WAIT)
    dep = broker.submit(b"d", name="dep", after=[root])
    grandchild = broker.submit(b"g", name="g", after=[dep])
    fail(broker, root)
    broker.r.zadd(broker.keys.ended_ttl, {str(grandchild): 0}, xx=True)  # its TTL passed
    broker.reclaim()
    with pytest.raises(TaskNotFoundError, match=f"cannot re-arm task {grandchild}.*expired"):
        broker.requeue_cascade(root)
    # Nothing changed: the letter and the copies still there stay.
    assert [t for t, _, _ in broker.dead_letters()] == [root]
    assert broker.meta(dep) is None and b"%d:m" % dep in dormant(broker)
    assert broker.requeue_dead(root) is not None  # the plain requeue still works


def test_an_upstream_outside_the_tree_that_is_gone_refuses_the_cascade(broker: Broker) -> None:
    other = broker.submit(b"o", name="other")
    complete(broker, other)
    root = broker.submit(b"r", name="root", policy=NO_WAIT)
    dep = broker.submit(call(add, result_of(other)), name="dep", after=[root, other], needs=[other])
    fail(broker, root)
    broker.r.delete(broker.keys.result(other))  # as its result_ttl would
    with pytest.raises(TaskNotFoundError, match=f"upstream task {other} is no longer known"):
        broker.requeue_cascade(root)
    assert [t for t, _, _ in broker.dead_letters()] == [root] and broker.meta(dep) is None


def test_an_upstream_outside_the_tree_keeps_its_value_and_its_marker(broker: Broker) -> None:
    other = broker.submit(b"o", name="other")
    complete(broker, other, b"7")
    root = broker.submit(b"r", name="root", policy=NO_WAIT)
    dep = broker.submit(
        call(add, result_of(other), result_of(root)),
        name="dep",
        after=[root, other],
        needs=[other, root],
    )
    fail(broker, root)
    ids = broker.requeue_cascade(root)
    assert ids is not None
    m = broker.meta(ids[dep])
    assert m is not None and m["ups"] == [ids[root], other] and m["wait"] == 1  # other counted
    complete(broker, ids[root], b"1")
    (c,) = broker.claim(10, 30, "n")
    assert c.task_id == ids[dep]
    assert sorted((i.task_id, i.value) for i in c.inputs) == sorted(
        [(other, b"7"), (ids[root], b"1")]
    )
    args = arguments(c.payload)[0]
    assert [x.task_id for x in args] == [other, ids[root]]


def test_a_dependent_re_armed_before_its_re_armed_upstream_waits_for_it(broker: Broker) -> None:
    """``d`` was ended by the root itself, ``e`` (its other upstream) one
    level further down, by ``b``: breadth first, ``d`` is queued before ``e``
    is; it must wait for ``e``, and end with it if ``e`` ends at once."""
    root = broker.submit(b"r", name="root", policy=NO_WAIT)
    b = broker.submit(b"b", name="b", after=[root])
    e = broker.submit(b"e", name="e", after=[b])
    d = broker.submit(b"d", name="d", after=[root, e])
    fail(broker, root)
    ids = broker.requeue_cascade(root)
    assert ids is not None and list(ids) == [root, b, d, e]  # breadth first
    assert broker.meta(ids[d])["ups"] == [ids[root], ids[e]]  # type: ignore[index]
    for up in (root, b, e):
        complete(broker, ids[up])
    assert [c.task_id for c in broker.claim(10, 30, "n")] == [ids[d]]

    # Again, with an upstream of e outside the tree cancelled meanwhile: the
    # new e ends at once, and the new d, already waiting on it, ends with it.
    x = broker.submit(b"x", name="x", delay=3600)
    root2 = broker.submit(b"r", name="root2", policy=NO_WAIT)
    b2 = broker.submit(b"b", name="b2", after=[root2])
    e2 = broker.submit(b"e", name="e2", after=[b2, x])
    d2 = broker.submit(b"d", name="d2", after=[root2, e2])
    fail(broker, root2)
    assert broker.cancel(x) == 1
    ids2 = broker.requeue_cascade(root2)
    assert ids2 is not None and list(ids2) == [root2, b2, d2, e2]
    gone = broker.lookup(ids2[e2])[0]
    assert gone is not None and (gone.state, gone.upstream) == ("cancelled", x)
    gone = broker.lookup(ids2[d2])[0]
    assert gone is not None and (gone.state, gone.upstream) == ("cancelled", ids2[e2])
    assert broker.r.smembers(broker.keys.waiting) == {str(ids2[b2]).encode()}


def test_a_tree_that_grows_between_the_read_and_the_script_is_read_again(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = broker.submit(b"r", name="root", policy=NO_WAIT)
    first = broker.submit(b"1", name="first", after=[root])
    fail(broker, root)
    read = broker._dormant_tree
    late: list[int] = []

    def racing(tid: int) -> list[tuple[int, dict[str, Any], bytes]]:
        tree = read(tid)
        if not late:  # another client submits a dependent of the letter meanwhile
            late.append(broker.submit(b"2", name="late", after=[root]))
        return tree

    monkeypatch.setattr(broker, "_dormant_tree", racing)
    ids = broker.requeue_cascade(root)
    assert ids is not None and set(ids) == {root, first, *late}


def test_purge_drops_the_edges_and_the_sweep_the_copies(broker: Broker) -> None:
    root = broker.submit(b"r", name="root", policy=NO_WAIT)
    deps = [broker.submit(b"d", name=f"d{i}", after=[root]) for i in range(3)]
    fail(broker, root)
    assert broker.purge_dead() == 1
    assert {k for k in dormant(broker) if b"#" in k or k.endswith(b":n")} == set()
    broker.r.zadd(broker.keys.ended_ttl, {str(t): 0 for t in deps}, xx=True)
    broker.reclaim()
    assert not broker.r.exists(broker.keys.dormant)


def test_cascade_on_a_node_reruns_the_chain(tmp_path: Path) -> None:
    cluster = Cluster(require_redis())
    try:
        cluster.node(workers=2)

        async def main() -> None:
            async with cluster.queue_client() as q:
                root = await q.submit(fail_times, str(tmp_path / "c"), 1, 10, max_retries=0)
                a = await q.submit(add, result_of(root), 1)
                b = await q.submit(ident, {"v": [result_of(a)]}, after=[root])
                cleanup = await q.submit(ident, "cleaned", after=[root], trigger="all_done")
                with pytest.raises(UpstreamFailedError):
                    await q.result(b, timeout=30)
                assert await q.result(cleanup, timeout=30) == "cleaned"
                with pytest.raises(TaskNotFoundError):
                    q.dlq.requeue(a, cascade=True)  # a dependent is not a letter

                ids = q.dlq.requeue(root, cascade=True)
                assert set(ids) == {root, a, b}
                assert await q.result(ids[b], timeout=30) == {"v": [11]}
                assert await q.result(ids[root], timeout=30) == 10
                assert q.get_task_status(ids[b]).after == (ids[root], ids[a])
                assert q.get_task_status(a).state is TaskState.FAILED
                assert q.dlq.list() == []

        asyncio.run(main())

        # The ProcQueue door: its futures as arguments, the new ones by id.
        with ProcQueue(broker=URL, queue=cluster.queue, secret=SECRET_TEXT) as pool:
            root = pool.submit_task(fail_times, str(tmp_path / "p"), 1, 5, max_retries=0)
            mid = pool.submit(add, root, 1)
            leaf = pool.submit(add, mid, 1)
            with pytest.raises(UpstreamFailedError):
                leaf.result(timeout=30)
            ids = pool.dlq.requeue(task_id(root), cascade=True)
            assert set(ids) == {task_id(root), task_id(mid), task_id(leaf)}
            assert pool.future(ids[task_id(leaf)]).result(timeout=30) == 7
    finally:
        cluster.close()
