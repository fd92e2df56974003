"""A client's side of outcomes on a broker: what ``result()`` gives when a
stored outcome cannot become a value here.

Real Redis at 127.0.0.1:6379, a queue name per test (its keys deleted after);
skipped without one unless ``PROCQUEUE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import pickle
import time

import pytest

from procqueue import ProcQueue, SerializationError
from procqueue.redis._protocol import Broker

SECRET = b"r" * 32


class _Thing:
    """Pickled by reference to its module, renamed below to one the client has not got."""


@pytest.mark.parametrize("padding", [0, 4096], ids=["in the done message", "read back"])
def test_a_value_that_does_not_unpickle_here_fails_its_future(broker: Broker, padding: int) -> None:
    """A node returned an object of a class only the nodes can import: the
    future fails with SerializationError; it used to wait for ever (the
    waiter was taken off the list before the unpickling raised)."""
    from conftest import REDIS_URL

    # The same bytes a node would send, naming a module of the same length
    # that this process cannot import.
    missing = "z" * len(__name__)
    value = pickle.dumps((_Thing(), b"x" * padding), protocol=5)
    value = value.replace(__name__.encode(), missing.encode())
    with ProcQueue(broker=REDIS_URL, queue=broker.queue, secret=SECRET) as pool:
        fut = pool.submit(abs, -1)
        other = pool.submit(abs, -2)
        claimed = {c.task_id: c for c in broker.claim(2, 30, "node-a")}
        (a, ca), (b, cb) = sorted(claimed.items())
        broker.finish_many(
            [(a, ca.token, "completed", value, ""), (b, cb.token, "completed", pickle.dumps(2), "")]
        )
        with pytest.raises(SerializationError, match=missing):
            fut.result(timeout=30)
        assert other.result(timeout=30) == 2  # the rest of the burst is not lost


def test_a_malformed_done_message_is_ignored_not_a_reason_to_resubscribe(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone allowed to publish on the channel can send garbage: the
    listener logs it and reads on (it used to drop its burst and resubscribe,
    leaving results to the 1 s poll)."""
    from conftest import REDIS_URL

    with (
        caplog.at_level("WARNING", logger="procqueue.redis"),
        ProcQueue(broker=REDIS_URL, queue=broker.queue, secret=SECRET) as pool,
    ):
        fut = pool.submit(abs, -3)
        # Published until the listener (subscribed by now, or soon) gets one.
        deadline = time.monotonic() + 30
        while broker.r.publish(broker.keys.done, b"~x:y:z") == 0:
            assert time.monotonic() < deadline, "the client never subscribed"
        (c,) = broker.claim(1, 30, "node-a")
        broker.finish_many([(c.task_id, c.token, "completed", pickle.dumps(3), "")])
        assert fut.result(timeout=30) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("malformed message on the done channel" in m for m in messages)
    assert not any("resubscribing" in m for m in messages)


def test_a_broker_schedule_refuses_limit_key_and_a_priority_must_be_an_int(
    broker: Broker,
) -> None:
    """A broker's schedule runs take no ``limit_key`` yet: it used to be passed
    on to the callable, failing every run. A non-int priority is the same
    ``OptionTypeError`` (a ``TypeError``) as on a local queue."""
    from conftest import REDIS_URL

    from procqueue import InvalidArgumentError, OptionTypeError

    with ProcQueue(broker=REDIS_URL, queue=broker.queue, secret=SECRET) as pool:
        with pytest.raises(InvalidArgumentError, match="limit_key"):
            pool.schedule(abs, -1, every=60, name="limited", limit_key="api")
        assert pool.schedules() == []
        with pytest.raises(OptionTypeError, match="priority"):
            pool.submit_task(abs, -1, priority="high")
