"""A node facing faults: an outcome Redis cannot be sent, Redis refusing a
report or a claim (OOM, READONLY), a bug in the reporter, a task claimed
again by its own node after its lease lapsed, nodes that died without a
word, a failed lease renewal.

Nodes run in this process (``Node.run`` in a thread, workers forked), against
the real Redis at 127.0.0.1:6379 on a queue of each test's own; skipped
without one unless ``PROCQUEUE_REQUIRE_SERVICES=1``. Every wait is on a
condition, with a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from _tasks import Gate, gated_pid
from conftest import REDIS_URL

from procqueue import RetryPolicy
from procqueue.redis._client import RemoteProcQueue
from procqueue.redis._codec import dump_call, error_text, load_outcome, split_error
from procqueue.redis._node import Node
from procqueue.redis._protocol import Broker, connect
from procqueue.redis._signing import Signer

SECRET = b"f" * 40
#: A message with a lone surrogate, as ``os.fsdecode`` gives for a file name
#: that is not UTF-8.
CAFE = "cannot read " + os.fsdecode(b"caf\xe9.txt")


def fail_with_surrogate() -> None:
    raise ValueError(CAFE)


def double(x: int) -> int:
    return 2 * x


def _wait_for(what: str, cond: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # a condition, polled, with a deadline
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextmanager
def serving(node: Node) -> Iterator[threading.Thread]:
    """``node.run()`` in a thread; stopped at the end, and it must drain."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            node.run()
        except BaseException as e:  # what ended the node, for the test to show
            errors.append(e)

    # A daemon: a node that cannot drain (the bug under test) fails its test
    # below, and must not keep the test process from exiting.
    runner = threading.Thread(target=run, name="node-run", daemon=True)
    runner.start()
    try:
        yield runner
    finally:
        node.stop()
        runner.join(timeout=60)
    assert not runner.is_alive(), "the node did not drain after stop()"
    assert not errors, f"Node.run() ended with {errors[0]!r}"


def _submit(broker: Broker, fn: Callable[..., Any], *args: Any, retries: int = 0) -> int:
    policy = RetryPolicy(max_retries=retries, backoff_base=0)
    return broker.submit(dump_call(fn, args, {}), name=fn.__name__, policy=policy)


def _final(broker: Broker, tid: int) -> tuple[str, bytes | None, str]:
    _wait_for(f"task {tid}'s outcome", lambda: broker.outcome(tid) is not None)
    outcome = broker.outcome(tid)
    assert outcome is not None
    return outcome


def _attempts(broker: Broker, tid: int) -> int:
    """A final task's attempts, from its result hash (its meta is gone)."""
    return int(broker.r.hget(broker.keys.result(tid), "attempts") or 0)


# ---------------------------------------------------------------- bug: the reporter died


def test_an_error_text_is_always_encodable() -> None:
    text = error_text(ValueError(CAFE))
    text.encode()  # what redis-py does with it; raised UnicodeEncodeError before
    assert text == "ValueError: cannot read caf\\udce9.txt"
    assert error_text(ValueError("déjà vu")) == "ValueError: déjà vu"  # untouched


def test_an_error_with_a_lone_surrogate_is_reported_and_the_node_serves_on(
    broker: Broker,
) -> None:
    node = Node(broker, 1, lease=3.0, prefetch=0, start_method="fork")
    with serving(node):
        bad = _submit(broker, fail_with_surrogate)
        state, value, error = _final(broker, bad)
        message, tb = split_error(error)
        assert state == "failed" and message == "ValueError: cannot read caf\\udce9.txt"
        assert "fail_with_surrogate" in tb
        assert value is not None and str(load_outcome(value)) == CAFE  # the exception itself
        good = _submit(broker, double, 21)
        state, value, _ = _final(broker, good)
        assert state == "completed" and value is not None and load_outcome(value) == 42


def test_a_batch_with_an_outcome_redis_cannot_take_reports_the_others(broker: Broker) -> None:
    a, b = _submit(broker, double, 1), _submit(broker, double, 2)
    tokens = {c.task_id: c.token for c in broker.claim(2, 30, "node-a")}
    node = Node(broker, 1, lease=30.0)
    node._finish(
        [
            (a, tokens[a], "completed", b"ok", ""),
            (b, tokens[b], "error", b"", "ValueError: caf\udce9"),  # not encodable
        ]
    )
    assert broker.outcome(a) == ("completed", b"ok", "")
    assert broker.outcome(b) is None  # still leased: reclaimed once its lease lapses


def test_an_error_reply_about_one_outcome_is_not_retried_for_the_batch(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error reply that is about the command (a script error for one
    outcome), not about Redis's state, would come back every time: the batch
    is reported one outcome at a time at once, not retried for two leases."""
    a, b = _submit(broker, double, 1), _submit(broker, double, 2)
    tokens = {c.task_id: c.token for c in broker.claim(2, 30, "node-a")}
    finish_many, calls = broker.finish_many, list[int]()

    def refuses_b(outcomes: Any) -> list[bool]:
        calls.append(len(outcomes))
        if any(o[0] == b for o in outcomes):
            raise redis.exceptions.ResponseError("ERR Error running script: bad value")
        return finish_many(outcomes)

    monkeypatch.setattr(broker, "finish_many", refuses_b)
    node = Node(broker, 1, lease=30.0)
    with pytest.raises(redis.exceptions.ResponseError):
        node._finish([(b, tokens[b], "completed", b"x", "")])
    node._finish([(a, tokens[a], "completed", b"ok", ""), (b, tokens[b], "completed", b"x", "")])
    assert calls == [1, 2, 1, 1]  # no retries: the batch, then each outcome once
    assert broker.outcome(a) == ("completed", b"ok", "")


def test_a_report_redis_refuses_is_retried(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    oom = redis.exceptions.ResponseError("OOM command not allowed when used memory")
    refused = _fail_first_report(broker, monkeypatch, oom)
    node = Node(broker, 1, lease=3.0, prefetch=0, start_method="fork")
    with serving(node):
        tid = _submit(broker, double, 4)
        state, value, _ = _final(broker, tid)
    assert refused and state == "completed" and value is not None and load_outcome(value) == 8


def test_the_reporter_outlives_a_bug_and_lets_the_batch_s_leases_lapse(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = _fail_first_report(broker, monkeypatch, RuntimeError("a bug in the report"))
    node = Node(broker, 1, lease=1.0, prefetch=0, start_method="fork")
    with serving(node):
        tid = _submit(broker, double, 5)
        # Its first outcome was lost: the lease lapsed, it was reclaimed (a
        # lost lease costs no retry) and run again, here.
        state, value, _ = _final(broker, tid)
        assert failed and state == "completed" and value is not None and load_outcome(value) == 10
        assert _attempts(broker, tid) == 2
        assert not node._held


# ---------------------------------------------------------------- bug: claimed again


def test_a_task_its_node_claims_again_runs_once_there_and_keeps_its_new_lease(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The node missed a renewal: its lease on a running task ran out and
    another node's keeper reclaimed it; this node claims it again. The stale
    copy is killed, its late report changes nothing, and the new attempt is
    held and renewed until it ends."""
    caplog.set_level(logging.WARNING, logger="procqueue")
    gate = Gate(tmp_path)
    other = Broker(connect(REDIS_URL), broker.queue, Signer([SECRET]))  # another node's keeper
    node = Node(broker, 2, lease=3.0, prefetch=0, start_method="fork")
    try:
        with serving(node):
            try:
                tid = _submit(broker, gated_pid, gate.paths, retries=3)
                first = gate.wait_started()
                old_token = node._held[tid][0]
                for _ in range(5):
                    # The lease runs out and another keeper reclaims it. Under the
                    # node's lock: its keeper cannot take a renewal's snapshot
                    # meanwhile (RENEW would extend the lapsed lease); again in
                    # the rare case a renewal was already under way.
                    with node._lock:
                        if (broker.meta(tid) or {}).get("token") != old_token:
                            break  # reclaimed and claimed again already
                        if broker.r.zscore(broker.keys.leases, str(tid)) is None:
                            break  # reclaimed (by this node's own keeper, maybe)
                        broker.r.zadd(broker.keys.leases, {str(tid): 0}, xx=True)
                        other.reclaim()
                broker.r.rpush(broker.keys.wake, "1")  # as a submit would: wake the idle node
                second = gate.wait_started()
                assert second != first

                def stale_copy_gone() -> bool:
                    try:
                        return psutil.Process(first).status() == psutil.STATUS_ZOMBIE
                    except psutil.NoSuchProcess:
                        return True

                _wait_for("the stale copy to be killed", stale_copy_gone)
                _wait_for(
                    "the stale copy's report to be fenced off",
                    lambda: any("late outcome" in r.getMessage() for r in caplog.records),
                )
                with node._lock:
                    new_token = node._held[tid][0]  # the new attempt is still held
                assert new_token != old_token
                before = broker.r.zscore(broker.keys.leases, str(tid))
                assert before is not None
                _wait_for(  # and renewed: its lease moves on
                    "the new attempt's lease to be renewed",
                    lambda: (broker.r.zscore(broker.keys.leases, str(tid)) or 0) > before,
                )
                gate.release()
                state, value, _ = _final(broker, tid)
                assert state == "completed" and value is not None and load_outcome(value) == second
                assert _attempts(broker, tid) == 2
            finally:
                gate.release(2)  # all that waits at the gate (on a failure), before stop()
    finally:
        gate.close()
        other.r.close()


# ---------------------------------------------------------------- bug: a refused claim


def test_a_claim_or_idle_wait_redis_refuses_is_retried(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim, blpop, refused = broker.claim_batch, broker.r.blpop, []

    def refusing_blpop(*args: Any, **kwargs: Any) -> Any:
        if "blpop" not in refused:
            refused.append("blpop")
            raise redis.exceptions.ResponseError("READONLY You can't write against a replica.")
        return blpop(*args, **kwargs)

    def refusing_claim(n: int, lease: float, owner: str) -> Any:
        if "blpop" in refused and "claim" not in refused:
            refused.append("claim")
            raise redis.exceptions.ResponseError("OOM command not allowed when used memory")
        return claim(n, lease, owner)

    monkeypatch.setattr(broker.r, "blpop", refusing_blpop)
    monkeypatch.setattr(broker, "claim_batch", refusing_claim)
    node = Node(broker, 1, lease=3.0, prefetch=0, start_method="fork")
    with serving(node) as runner:
        _wait_for("the idle wait to be refused", lambda: refused or not runner.is_alive())
        ids = [_submit(broker, double, i) for i in range(3)]
        outcomes = [_final(broker, t) for t in ids]
    assert refused == ["blpop", "claim"]
    assert [load_outcome(v) for _, v, _ in outcomes if v is not None] == [0, 2, 4]


# ---------------------------------------------------------------- bug: dead nodes listed


def test_dead_nodes_leave_the_node_list_and_the_stats(broker: Broker) -> None:
    sec, usec = broker.r.time()
    now = int(sec) + int(usec) / 1e6
    entry = {"host": "h", "pid": 1, "workers": 1, "held": 0, "processes": []}
    broker.r.hset(
        broker.keys.nodes,
        mapping={
            "alive": json.dumps({**entry, "beat": now - 2.0, "lease": 1.0}),
            "dead": json.dumps({**entry, "beat": now - 3.5, "lease": 1.0}),  # 3 leases + 0.5 s
            "old-style": json.dumps({**entry, "beat": now - 100.0}),  # 3 x the default lease
            "slow": json.dumps({**entry, "beat": now - 100.0, "lease": 60.0}),
        },
    )
    with RemoteProcQueue(broker=REDIS_URL, queue=broker.queue, secret=SECRET) as client:
        listed = [n.node for n in client.get_stats().nodes]
    assert listed == ["alive", "slow"]
    Node(broker, 1, lease=1.0)._beat()  # a live node's heartbeat drops the dead ones
    remaining = {k.decode() for k in broker.r.hkeys(broker.keys.nodes)}
    assert len(remaining) == 3 and {"alive", "slow"} < remaining


# ---------------------------------------------------------------- a failed renewal


def test_a_failed_renewal_is_retried_soon_not_a_third_of_a_lease_later(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    renew, calls = broker.renew, []

    def flaky(owner: str, held: list[tuple[int, int]], lease: float) -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise redis.exceptions.ConnectionError("Connection reset by peer")
        return renew(owner, held, lease)

    monkeypatch.setattr(broker, "renew", flaky)
    lease = 3.0
    node = Node(broker, 1, lease=lease, start_method="fork")
    with serving(node):
        _wait_for("two renewals after", lambda: len(calls) >= 3)
    first, retry, next_one = calls[:3]
    assert retry - first < lease / 3 / 2  # soon (RENEW_RETRY), not a period later
    assert next_one - retry >= lease / 3 * 0.9  # then the normal period: no hammering


def _fail_first_report(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> list[int]:
    """The broker's first ``finish_many`` raises ``error``; the others report.
    Returns the sizes of the failed calls (one, once it has happened)."""
    finish_many, failed = broker.finish_many, list[int]()

    def first_fails(outcomes: Any) -> list[bool]:
        if not failed:
            failed.append(len(outcomes))
            raise error
        return finish_many(outcomes)

    monkeypatch.setattr(broker, "finish_many", first_fails)
    return failed


def test_a_stop_ends_an_idle_nodes_blocking_wait_at_once(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle node blocks on the wake list (BLPOP, until the next delayed
    task is due: up to a second). ``stop()`` must end that wait, not sit it
    out: every stop cost up to a second. The wait is stretched to 60 s here,
    so a stop that waited for it would miss the join's deadline; afterwards
    no stop token is left in Redis."""
    monkeypatch.setattr(Node, "_idle_wait", lambda self: 60.0)
    node = Node(broker, 1, lease=30.0, start_method="fork")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            node.run()
        except BaseException as e:
            errors.append(e)

    runner = threading.Thread(target=run, name="node-run", daemon=True)
    runner.start()
    r = broker.r

    def blocked() -> bool:
        return any(c.get("cmd") == "blpop" for c in r.client_list())

    _wait_for("the idle node's BLPOP", blocked)
    node.stop()
    runner.join(timeout=20)
    assert not runner.is_alive(), "stop() waited for the idle node's BLPOP to time out"
    assert not errors, errors
    assert not r.exists(broker.keys.stop_node(node.owner))
