"""Broker schedules with ``overlap="queue"``, and ``run_now`` through ``FIRE``:
a tick that finds the last run still going is queued behind it (waiting,
``all_done``), each tick once however many nodes evaluate it, every tick
kept, as on a local queue; ``run_now`` is recorded like a tick's run and
overlaps the same way.

The protocol tests drive ``evaluate`` and ``FIRE`` against a real Redis (each
with its own queue, its keys deleted after); the last test runs gated runs on
two nodes started through the CLI. Without Redis they skip, unless
``PROCQUEUE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _tasks import Gate, add, gated
from conftest import REDIS_URL as URL
from conftest import require_redis
from test_redis_nodes import Cluster

from procqueue import QueueClosedError, RetryPolicy, TaskState
from procqueue.redis._cron import RemoteSchedule, add_schedule, evaluate
from procqueue.redis._protocol import Broker, connect
from procqueue.redis._signing import Signer

SECRET = b"s" * 32


def scheduled(broker: Broker, overlap: str) -> RemoteSchedule:
    """A schedule ``job`` (every 60 s) on ``broker``; :func:`tick` makes it due."""
    return add_schedule(
        broker, add, (1, 2), {}, cron=None, every=60.0, name="job", tz="UTC",
        misfire_grace=60.0, catchup="latest", overlap=overlap, priority=0,
        policy=RetryPolicy(max_retries=0), timeout=None,
    )  # fmt: skip


def tick(broker: Broker) -> None:
    """Move the stored next tick to now (a tick of its grid, as a real one is)."""
    s = broker.schedules()["job"]
    s["next_ms"] = broker.now_ms()
    s["anchor"] = s["next_ms"] / 1000.0
    broker.r.hset(broker.keys.sched, "job", json.dumps(s))


def claim_one(broker: Broker) -> Any:
    (c,) = broker.claim(10, 30, "n")
    return c


def test_each_tick_queues_behind_the_last_run_whatever_its_outcome(broker: Broker) -> None:
    handle = scheduled(broker, "queue")
    runs = []
    for _ in range(3):
        tick(broker)
        evaluate(broker)
        runs.append(handle.last_task_id)
    assert handle.task_ids == runs and handle.runs == 3 and handle.skipped["overlap"] == 0
    first, second, third = runs
    assert broker.meta(first)["state"] == "pending"  # type: ignore[index]
    for up, dep in ((first, second), (second, third)):
        m = broker.meta(dep)
        assert m is not None and (m["state"], m["ups"], m["ad"]) == ("waiting", [up], True)

    c = claim_one(broker)  # only the first is claimable
    assert c.task_id == first and c.name == "add"
    assert broker.finish(first, c.token, "error", error="ValueError: boom")  # dead-lettered
    now = handle.run_now()  # an explicit run queues behind the last one too
    assert broker.meta(now)["ups"] == [third]  # type: ignore[index]
    assert handle.task_ids == [*runs, now] and handle.runs == 4
    for run, after in ((second, third), (third, now), (now, None)):
        c = claim_one(broker)
        assert c.task_id == run and c.timeout == 60.0  # a tick's run: the interval
        assert broker.finish(run, c.token, "completed", value=b"3")
        if after is not None:
            assert broker.meta(after)["state"] == "pending"  # type: ignore[index]
    assert broker.r.scard(broker.keys.waiting) == 0 and broker.claim(10, 30, "n") == []


def test_a_queued_tick_is_fired_once_whatever_the_number_of_evaluating_nodes(
    broker: Broker,
) -> None:
    handle = scheduled(broker, "queue")
    tick(broker)
    evaluate(broker)
    tick(broker)
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
    first, second = handle.task_ids
    assert broker.r.smembers(broker.keys.waiting) == {str(second).encode()}
    assert broker.meta(second)["ups"] == [first]  # type: ignore[index]


def test_run_now_is_recorded_and_overlaps_as_a_tick_s_run(broker: Broker) -> None:
    handle = scheduled(broker, "skip")
    handle.pause()
    now = handle.run_now()  # paused or not; "skip" does not stop it
    assert handle.task_ids == [now] and handle.last_task_id == now and handle.runs == 1
    assert broker.meta(now)["state"] == "pending"  # type: ignore[index]
    handle.resume()
    tick(broker)
    evaluate(broker)  # the run now is still pending: this tick is skipped
    assert handle.skipped["overlap"] == 1 and handle.task_ids == [now]
    handle.cancel()
    with pytest.raises(QueueClosedError):
        handle.run_now()


def test_queued_runs_follow_one_another_across_two_nodes(tmp_path: Path) -> None:
    cluster = Cluster(require_redis())
    gate = Gate(tmp_path)
    try:
        for _ in range(2):
            cluster.node(workers=2)

        async def main() -> None:
            async with cluster.queue_client() as q:
                sched = await q.schedule(
                    gated, gate.paths, "ran", every=0.2, overlap="queue", timeout=60
                )
                gate.wait_started()  # the first run holds its worker
                deadline = time.monotonic() + 30
                while len(sched.task_ids) < 3:  # more ticks come meanwhile
                    assert time.monotonic() < deadline, sched.skipped
                    await asyncio.sleep(0.05)
                sched.pause()
                ids = sched.task_ids
                assert sched.skipped["overlap"] == 0
                for prev, run in itertools.pairwise(ids):
                    status = q.get_task_status(run)
                    assert status.state is TaskState.WAITING and status.after == (prev,)
                for prev in ids[:-1]:
                    gate.release()
                    gate.wait_started()  # the next run starts once the last ended
                    assert q.get_task_status(prev).state is TaskState.COMPLETED
                gate.release()
                assert [await q.result(t, timeout=30) for t in ids] == ["ran"] * len(ids)
                sched.cancel()

        asyncio.run(main())
    finally:
        cluster.close()
        gate.close()


def test_a_schedule_this_node_cannot_build_does_not_hold_up_the_others(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored schedule in a zone this node's tz database lacks is logged
    (once) and left to other nodes; the schedules after it still fire."""
    handle = scheduled(broker, "allow")
    tick(broker)
    bad = dict(broker.schedules()["job"], cron="* * * * *", tz="Nowhere/Atlantis")
    broker.r.hset(broker.keys.sched, "bad", json.dumps(bad))
    with caplog.at_level("ERROR", logger="procqueue.schedules"):
        evaluate(broker)
        evaluate(broker)
    assert handle.runs == 1
    assert sum("'bad'" in r.getMessage() for r in caplog.records) == 1
