"""Dependencies and concurrency caps across nodes started through the CLI:
a diamond with results passed along, failure and cancel propagating, the
``all_done`` trigger, upstreams that ended before the submit, a node
SIGKILLed under a running upstream, ``ProcQueue(broker=...)`` futures as
arguments, and a ``Concurrency(1)`` key served by two nodes.

Real Redis and real processes; each test has its own queue and deletes its
keys. Without Redis the tests skip, unless ``PROCQUEUE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _tasks import Gate, add, fail_times, gated, ident, raise_value_error
from conftest import REDIS_URL as URL
from conftest import require_redis
from test_redis_nodes import SECRET, Cluster, _kill_tree

from procqueue import (
    Concurrency,
    InvalidArgumentError,
    OptionTypeError,
    ProcQueue,
    RemoteTraceback,
    TaskCancelledError,
    TaskNotFoundError,
    TaskQueue,
    UpstreamFailedError,
    result_of,
    task_id,
)

BOUND = 30.0


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(require_redis())
    yield c
    c.close()


def capped(url: str, counter: str, hold: float) -> int:
    """Hold a slot of the key for ``hold`` seconds; returns how many tasks of
    the key were running at once, this one included (a Redis counter)."""
    import redis

    r = redis.Redis.from_url(url)
    try:
        running = int(r.incr(counter))
        time.sleep(hold)  # the scenario: the slot is held this long
        r.decr(counter)
        return running
    finally:
        r.close()


async def back_to_baseline(cluster: Cluster, deadline: float = 20.0) -> None:
    """Wait for result TTLs (1 s here) and the nodes' sweeps: then only the
    queue's counters, its wake list and the nodes' heartbeats are left."""
    tag = f"{{pq:{cluster.queue}}}:"
    baseline = {f"{tag}{k}".encode() for k in ("ids", "seq", "fence", "wake", "nodes")}
    end = time.monotonic() + deadline
    while (left := set(cluster.client.scan_iter(match=f"{tag}*", count=1000)) - baseline) != set():
        assert time.monotonic() < end, sorted(left)
        await asyncio.sleep(0.1)  # waiting for Redis expiries, with a deadline


def test_a_diamond_across_two_nodes_passes_results_along(cluster: Cluster, tmp_path: Path) -> None:
    for _ in range(2):
        cluster.node(workers=1, prefetch=1, lease=1.0)
    gate = Gate(tmp_path)

    async def main() -> None:
        async with TaskQueue(broker=URL, queue=cluster.queue, secret=SECRET, result_ttl=1) as q:
            top = await q.submit(gated, gate.paths, 2)
            left = await q.submit(add, result_of(top), 10)  # 12
            right = await q.submit(add, result_of(top), 20)  # 22
            # Markers inside a list and a dict, and as a keyword argument.
            both = await q.submit(ident, [result_of(left), {"r": result_of(right)}])
            total = await q.submit(add, result_of(left), b=result_of(right))  # 34
            gate.wait_started()
            status = q.get_task_status(total)
            assert status.state == "waiting" and status.after == (left, right)
            assert q.get_stats().waiting == 4
            gate.release()
            assert await q.result(both, timeout=BOUND) == [12, {"r": 22}]
            assert await q.result(total, timeout=BOUND) == 34
            assert q.get_stats().waiting == 0
            assert q.get_task_status(total).after == (left, right)
            await back_to_baseline(cluster)

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_failure_and_cancel_propagate_and_all_done_runs_anyway(cluster: Cluster) -> None:
    cluster.node(workers=1, lease=1.0)

    async def main() -> None:
        async with TaskQueue(broker=URL, queue=cluster.queue, secret=SECRET, result_ttl=1) as q:
            bad = await q.submit(raise_value_error, "boom", max_retries=1)
            one = await q.submit(add, result_of(bad), 1)
            two = await q.submit(add, result_of(one), 1, priority=4, max_retries=2)
            three = await q.submit(add, 0, after=[two])
            cleanup = await q.submit(ident, result_of(bad), trigger="all_done")
            for tid in (one, two, three):
                with pytest.raises(UpstreamFailedError) as info:
                    await q.result(tid, timeout=BOUND)
                st = q.get_task_status(tid)
                assert st.state == "failed" and st.attempts == 0  # never ran
                assert st.submitted_at > 0 and st.started_at is None
            # Ended unrun, it still reports what it was submitted with.
            st = q.get_task_status(two)
            assert (st.priority, st.max_retries) == (4, 2)
            assert info.value.upstream_id == two
            chain = info.value.__cause__  # three <- two <- one <- bad's ValueError
            assert isinstance(chain, UpstreamFailedError) and chain.upstream_id == one
            assert isinstance(chain.__cause__, UpstreamFailedError)
            assert isinstance(chain.__cause__.__cause__, ValueError)
            assert "Traceback" not in str(info.value)  # the message names, the cause shows
            assert isinstance(chain.__cause__.__cause__.__cause__, RemoteTraceback)
            # all_done runs anyway, and gets the upstream's exception as the value.
            err = await q.result(cleanup, timeout=BOUND)
            assert isinstance(err, ValueError) and str(err) == "boom"
            assert q.get_task_status(bad).attempts == 2  # retries invisible downstream
            # An upstream that already ended: completed runs at once, failed ends at once.
            again = await q.result(await q.submit(ident, result_of(cleanup)), timeout=BOUND)
            assert isinstance(again, ValueError)  # cleanup completed: its value flows on
            with pytest.raises(UpstreamFailedError):
                await q.result(await q.submit(add, 1, after=[bad]), timeout=BOUND)

            parked = await q.submit(add, 1, delay=3600)
            child = await q.submit(add, result_of(parked), 1)
            grandchild = await q.submit(add, 0, after=[child])
            other = await q.submit(add, 5, after=[parked])
            assert q.get_task_status(child).state == "waiting"
            assert q.cancel(other) and q.cancel(parked)
            for tid in (child, grandchild, other):
                with pytest.raises(TaskCancelledError):
                    await q.result(tid, timeout=BOUND)
                assert q.get_task_status(tid).state == "cancelled"

            with pytest.raises(TaskNotFoundError):
                await q.submit(add, 1, after=[10**9])
            with pytest.raises(TaskNotFoundError):
                await q.submit(add, result_of(10**9 + 1), 1)
            with pytest.raises(OptionTypeError):
                await q.submit(add, 1, after=5)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError):
                await q.submit(add, 1, after=[], trigger="sometimes")
            assert q.dlq.purge() == 1
            await back_to_baseline(cluster)

    asyncio.run(main())


def test_an_upstream_on_a_killed_node_is_rerun_and_its_dependent_runs_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    first = cluster.node(workers=1, lease=1.0)
    runs = tmp_path / "runs"

    async def main() -> None:
        async with cluster.queue_client() as q:
            up = await q.submit(gated, gate.paths, 7, max_retries=2)
            gate.wait_started()
            dep = await q.submit(fail_times, str(runs), 0, result_of(up))
            _kill_tree(first.pid)  # SIGKILL: the node and its worker, mid-run
            cluster.node(workers=1, lease=1.0)  # reclaims the expired lease
            gate.wait_started()  # the upstream runs again on the new node
            assert q.get_task_status(dep).state == "waiting"
            gate.release()
            assert await q.result(dep, timeout=BOUND) == 7
            assert q.get_task_status(up).attempts == 2
            assert runs.read_bytes() == b"x"  # the dependent ran once

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_procqueue_futures_as_arguments_and_after(cluster: Cluster) -> None:
    cluster.node(workers=2)
    with ProcQueue(broker=URL, queue=cluster.queue, secret=SECRET) as pool:
        a = pool.submit(add, 2, 3)
        b = pool.submit(add, a, 1)  # a future of this pool as an argument
        c = pool.submit_task(ident, {"a": a, "b": [b]}, after=[a])
        assert c.result(timeout=BOUND) == {"a": 5, "b": [6]}
        done = pool.submit(add, a, 100)  # a finished future: its value at once
        assert done.result(timeout=BOUND) == 105
        assert pool.get_task_status(task_id(done)).after == ()
        with ProcQueue(broker=URL, queue=f"{cluster.queue}-x", secret=SECRET) as other:
            foreign = other.submit(add, 1)
            with pytest.raises(InvalidArgumentError):
                pool.submit_task(add, 1, after=[foreign])
            other.cancel(task_id(foreign))


def test_a_concurrency_cap_holds_across_nodes(cluster: Cluster) -> None:
    for _ in range(2):
        cluster.node(workers=2, prefetch=1)
    counter = f"{{pq:{cluster.queue}}}:test-running"  # under the tag: cleaned up

    async def main() -> None:
        limits = {"db": Concurrency(1)}
        async with TaskQueue(
            broker=URL, queue=cluster.queue, secret=SECRET, key_limits=limits
        ) as q:
            keyed = [await q.submit(capped, URL, counter, 0.2, limit_key="db") for _ in range(6)]
            free = [await q.submit(add, i, 1) for i in range(4)]
            first = await q.result(keyed[0], timeout=BOUND)
            stats = q.get_stats().limits["db"]
            assert stats.cap == 1 and stats.running <= 1 and stats.waiting >= 1
            assert [await q.result(t, timeout=BOUND) for t in free] == [1, 2, 3, 4]
            peaks = [first] + [await q.result(t, timeout=BOUND) for t in keyed[1:]]
            assert peaks == [1] * 6  # never two of the key at once, on any node
            assert "db" not in q.get_stats().limits  # idle keys are not listed

    asyncio.run(main())
