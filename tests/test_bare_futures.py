"""The coordinator's futures make their Condition only when a thread waits;
until then one module-wide lock guards their moves (``_runtime/futures.py``)."""

from __future__ import annotations

import concurrent.futures as cf
import threading

from procqueue._core.events import CANCEL, ERROR, OK
from procqueue._runtime.futures import _TaskFuture, deliver


def test_a_result_gathered_after_it_arrived_never_makes_a_condition() -> None:
    fut = _TaskFuture()
    assert fut.set_running_or_notify_cancel()
    deliver(fut, OK, 42)
    assert fut.result() == 42
    assert fut._lazy_condition is None
    failed = _TaskFuture()
    failed.set_running_or_notify_cancel()
    deliver(failed, ERROR, ValueError("boom"))
    try:
        failed.result()
    except ValueError as e:
        assert str(e) == "boom"
    else:  # pragma: no cover
        raise AssertionError("no error raised")


def test_a_waiter_is_woken() -> None:
    fut = _TaskFuture()
    fut.set_running_or_notify_cancel()
    got: list[object] = []
    waiting = threading.Event()

    def wait() -> None:
        waiting.set()
        got.append(fut.result(timeout=30))

    t = threading.Thread(target=wait)
    t.start()
    waiting.wait()
    deliver(fut, OK, "v")
    t.join(30)
    assert got == ["v"]


def test_wait_and_as_completed_see_bare_futures_settle() -> None:
    futs = [_TaskFuture() for _ in range(20)]
    for f in futs:
        f.set_running_or_notify_cancel()
    done_callbacks: list[int] = []
    futs[0].add_done_callback(lambda f: done_callbacks.append(1))

    def settle_all() -> None:
        for i, f in enumerate(futs):
            deliver(f, OK, i)

    t = threading.Thread(target=settle_all)
    t.start()
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=30)) == list(range(20))
    t.join(30)
    done, not_done = cf.wait(futs, timeout=30)
    assert len(done) == 20 and not not_done
    assert done_callbacks == [1]


def test_cancel_races_dispatch_and_exactly_one_wins() -> None:
    for _ in range(500):
        fut = _TaskFuture()
        barrier = threading.Barrier(2)
        outcome: dict[str, bool] = {}

        def cancel(
            f: _TaskFuture = fut, b: threading.Barrier = barrier, out: dict[str, bool] = outcome
        ) -> None:
            b.wait()
            out["cancelled"] = f.cancel()

        t = threading.Thread(target=cancel)
        t.start()
        barrier.wait()
        running = fut.set_running_or_notify_cancel()
        t.join(30)
        assert running != outcome["cancelled"]
        if running:
            deliver(fut, OK, 1)
            assert fut.result() == 1
        else:
            assert fut.cancelled()
            deliver(fut, CANCEL, None)  # what the coordinator then does: harmless


def test_state_queries_and_a_pending_settle_make_no_condition() -> None:
    """``TaskQueue.result`` makes a task's future after the task was
    dispatched (still pending), asks ``done()`` and adds a callback; the
    coordinator then settles it. None of that needs the Condition: the
    stdlib's path took it five times, and making it cost a fifth of the
    coordinator's work on an idle round trip."""
    fut = _TaskFuture()
    assert not fut.done() and not fut.running() and not fut.cancelled()
    seen: list[object] = []
    fut.add_done_callback(lambda f: seen.append(f.result()))
    deliver(fut, OK, 7)
    assert seen == [7]
    assert fut.done() and not fut.running() and not fut.cancelled()
    assert fut._lazy_condition is None
    cancelled = _TaskFuture()
    assert cancelled.cancel()
    assert cancelled.cancelled() and cancelled.done() and not cancelled.running()
    deliver(cancelled, OK, 1)  # too late: it stays cancelled
    assert cancelled.cancelled()


def test_a_future_cancelled_as_its_result_arrives_is_seen_by_wait() -> None:
    """``cancel()`` won against the task's result (the engine could no longer
    cancel the task): the result is dropped, and ``wait``/``as_completed``
    must still learn of the cancellation. They count a cancelled future only
    once notified, which only the delivery of a cancellation did: they
    waited out their whole timeout (found by a review's stress run)."""
    for kind, value in ((OK, 1), (ERROR, ValueError("late"))):
        fut = _TaskFuture()
        fut.bind(lambda: lambda task_id: False, 1)  # the engine: too late to cancel
        assert fut.cancel()
        deliver(fut, kind, value)
        done, not_done = cf.wait([fut], timeout=10)
        assert done == {fut} and not not_done
        assert list(cf.as_completed([fut], timeout=10)) == [fut]
        assert fut.cancelled()
