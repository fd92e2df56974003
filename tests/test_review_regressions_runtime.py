"""Regressions for bugs an independent review found in the runtime and the
front doors: a task's own data taking the coordinator down, the pool's own
threads waiting on themselves, ``map``'s timeout, a frame cut off by a death."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from pathlib import Path

import pytest
from _tasks import (
    Gate,
    add,
    gated,
    log_unloadable_extra,
    raise_bad_str,
    raise_rebuilds_as_str,
)

from procqueue import ProcQueue, TaskState, UnpicklableTaskError, task_id
from procqueue._runtime import _shm, wire


def test_an_exception_whose_str_raises_fails_its_task_alone() -> None:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(raise_bad_str)
        assert type(fut.exception(timeout=30)).__name__ == "BadStrError"
        status = pool.get_task_status(task_id(fut))
        assert status.state is TaskState.FAILED and status.error is not None
        assert "str() raised RuntimeError" in status.error.message
        assert pool.submit(add, 20, 22).result(timeout=30) == 42


def test_an_exception_that_rebuilds_as_something_else_fails_its_task_alone() -> None:
    with ProcQueue(max_workers=1) as pool:
        exc = pool.submit(raise_rebuilds_as_str).exception(timeout=30)
        assert isinstance(exc, UnpicklableTaskError) and "RebuildsAsStrError" in str(exc)
        assert pool.submit(add, 20, 22).result(timeout=30) == 42


def test_a_log_record_that_does_not_unpickle_is_dropped_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level("WARNING", logger="procqueue.coordinator"),
        ProcQueue(max_workers=1) as pool,
    ):
        assert pool.submit(log_unloadable_extra).result(timeout=30) == "done"
        assert pool.submit(add, 20, 22).result(timeout=30) == 42
    assert any("does not unpickle here" in r.getMessage() for r in caplog.records)


def test_a_done_callback_may_submit_under_max_pending() -> None:
    """Follow-up work from a callback is admitted over the limit: it runs in
    the coordinator, where waiting for room would wait for itself."""
    with ProcQueue(max_workers=1, max_pending=2) as pool:
        follow_ups: list[Future[int]] = []
        chained = threading.Event()

        def chain(f: object) -> None:
            follow_ups.append(pool.submit(add, 10, 1))
            follow_ups.append(pool.submit(add, 20, 2))
            chained.set()

        first = pool.submit(add, 1)
        first.add_done_callback(chain)
        assert pool.submit(add, 2).result(timeout=30) == 2
        assert first.result(timeout=30) == 1
        assert chained.wait(30), "the callback's submits never returned"
        assert [f.result(timeout=30) for f in follow_ups] == [11, 22]


def test_shutdown_from_a_listener_does_not_wait_on_itself() -> None:
    pool = ProcQueue(max_workers=1)
    returned = threading.Event()

    def listener(status: object) -> None:
        if getattr(status, "state", None) is TaskState.FAILED:
            pool.shutdown(wait=True, cancel_futures=True)
            returned.set()

    pool.subscribe(listener)
    fut = pool.submit(raise_bad_str)
    fut.exception(timeout=30)
    assert returned.wait(30), "shutdown(wait=True) in a listener never returned"
    pool.shutdown(wait=True)  # from here it waits, and the pool stops


def test_shutdown_from_a_done_callback_does_not_wait_on_itself() -> None:
    pool = ProcQueue(max_workers=1)
    returned = threading.Event()

    def stop(f: object) -> None:
        pool.shutdown(wait=True)
        returned.set()

    pool.submit(add, 1).add_done_callback(stop)
    assert returned.wait(30), "shutdown(wait=True) in a done-callback never returned"
    pool.shutdown(wait=True)


def test_map_timeout_cancels_the_call_it_gave_up_on(gate: Gate) -> None:
    """As CPython's ``Executor.map``: on the timeout, the call waited on is
    cancelled with the rest, not run late."""
    with ProcQueue(max_workers=1, prefetch=0) as pool:
        blocker = pool.submit(gated, gate.paths, "free")
        gate.wait_started()
        results = pool.map(add, [10, 11, 12], timeout=0.05)
        with pytest.raises(FuturesTimeoutError):
            next(results)
        gate.release()
        assert blocker.result(timeout=30) == "free"
    stats = pool.get_stats()
    assert (stats.completed, stats.cancelled) == (1, 3)


def test_complete_frames_before_a_cut_off_large_one_are_kept() -> None:
    """A worker killed while writing a large frame: the Result it wrote
    completely before counts (it used to be lost with the cut-off frame)."""
    r, w = os.pipe()
    wire.enlarge_pipe(w)
    os.set_blocking(r, False)
    small = wire.encode(wire.Result(1, True, 0.0, 0.0), [b"small-result"])
    big = wire.encode(wire.Result(2, True, 0.0, 0.0), [b"x" * (2 << 20)])
    data = b"".join(bytes(b) for b in small) + b"".join(bytes(b) for b in big)[:600_000]
    writer = threading.Thread(target=lambda: (os.write(w, data[:65536]), os.write(w, data[65536:])))
    writer.start()
    writer.join()
    os.close(w)
    reader = wire._FrameReader(r)
    try:
        frames = reader.read_frames()
        assert frames is not None and len(frames) == 1
        msg, blob = wire.decode(frames[0])
        assert msg == wire.Result(1, True, 0.0, 0.0) and bytes(blob) == b"small-result"
        assert reader.read_frames() is None  # then the end of the file
    finally:
        os.close(r)


def test_buffersize_errors_match_python_3_14() -> None:
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(TypeError):
            pool.map(add, [1], buffersize=2.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            pool.map(add, [1], buffersize=0)


def test_a_done_callback_raising_systemexit_leaves_the_pool_serving(
    caplog: pytest.LogCaptureFixture, gate: Gate
) -> None:
    """SystemExit escapes a Future's callback loop; in the coordinator it
    used to end the thread and break the pool."""

    def leave(f: object) -> None:
        raise SystemExit(3)

    with (
        caplog.at_level("ERROR", logger="procqueue.coordinator"),
        ProcQueue(max_workers=1) as pool,
    ):
        first = pool.submit(gated, gate.paths, "free")
        first.add_done_callback(leave)  # before it ends: run by the coordinator
        gate.wait_started()
        gate.release()
        assert first.result(timeout=30) == "free"
        assert pool.submit(add, 20, 22).result(timeout=30) == 42
    assert any("done-callback raised SystemExit" in r.getMessage() for r in caplog.records)


def test_future_cancel_never_raises_for_a_record_already_let_go() -> None:
    from procqueue import TaskNotFoundError
    from procqueue._runtime.futures import _TaskFuture

    def gone(task_id: int) -> bool:
        raise TaskNotFoundError(task_id)

    fut = _TaskFuture()
    fut.bind(lambda: gone, 7)
    assert fut.cancel() and fut.cancelled()


def _memfds(pid: int) -> set[int]:
    """Inodes of the side files process ``pid`` holds."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:procqueue-"):
                found.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except OSError:
            continue  # closed meanwhile
    return found


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd") or not _shm._HAVE_MEMFD, reason="needs /proc and memfd"
)
def test_a_forked_worker_holds_no_other_pool_s_fds() -> None:
    """Fork copies every fd of the process: a second pool's worker used to
    keep the first pool's pipes and side files past its shutdown."""
    import multiprocessing

    from _tasks import pid

    fork = multiprocessing.get_context("fork")
    first = ProcQueue(max_workers=1, mp_context=fork)
    try:
        first_worker = first.submit(pid).result(timeout=30)
        firsts = _memfds(first_worker)
        assert firsts  # the side files (Linux memfd)
        with ProcQueue(max_workers=1, mp_context=fork) as second:
            second_worker = second.submit(pid).result(timeout=30)
            assert not _memfds(second_worker) & firsts
    finally:
        first.shutdown()


def test_a_dependent_of_a_task_whose_exception_str_raises_fails_alone() -> None:
    with ProcQueue(max_workers=1) as pool:
        up = pool.submit(raise_bad_str)
        dep = pool.submit(add, up, 1)
        assert type(dep.exception(timeout=30)).__name__ == "UpstreamFailedError"
        assert pool.submit(add, 20, 22).result(timeout=30) == 42


def test_map_takes_a_settled_result_without_making_a_condition() -> None:
    """``_TaskFuture`` makes its Condition only for a waiter; taking a
    settled result in ``map`` must not make one (it cost ~8 µs a result)."""
    from procqueue._runtime.futures import _TaskFuture
    from procqueue.executor import _result_or_cancel

    fut = _TaskFuture()
    assert fut.set_running_or_notify_cancel()
    assert fut.settle(5, True)
    assert _result_or_cancel(fut, None) == 5
    assert fut._lazy_condition is None


def test_a_procqueue_task_failed_unrun_names_its_error_after_its_future_took_it() -> None:
    """Its future takes the outcome; the record used to let go of it, and
    ``status.error`` of a task ended by its upstream's failure was None."""
    from _tasks import raise_value_error

    with ProcQueue(max_workers=1) as pool:
        up = pool.submit(raise_value_error, "boom")
        dep = pool.submit(add, up, 1)
        assert type(dep.exception(timeout=30)).__name__ == "UpstreamFailedError"
        assert pool.submit(add, 1).result(timeout=30) == 1  # a later publication: dep's is done
        status = pool.get_task_status(task_id(dep))
        assert status.error is not None
        assert status.error.exc_type == "procqueue.errors.UpstreamFailedError"
        again = pool.future(task_id(dep)).exception(timeout=0)
        assert type(again).__name__ == "UpstreamFailedError"


def test_map_s_timeout_holds_when_max_pending_leaves_no_room(tmp_path: Path) -> None:
    """With max_pending set, map() streams: its first submits and each refill
    waited for room with no regard to the timeout, so neither map() nor the
    first next() came back while other work held the queue."""
    gate = Gate(tmp_path)
    with ProcQueue(max_workers=1, max_pending=1) as pool:
        held = pool.submit(gated, gate.paths, "held")
        gate.wait_started()
        net = threading.Timer(10.0, gate.release)  # only the old code needs it
        net.start()
        try:
            results = pool.map(add, [1, 2], [10, 20], timeout=0.05)  # returns at once
            with pytest.raises(FuturesTimeoutError):
                next(results)
            assert pool.get_task_status(task_id(held)).state is TaskState.RUNNING
        finally:
            net.cancel()
            gate.release()
        assert held.result(timeout=30) == "held"
        assert list(pool.map(add, [1, 2], [10, 20], timeout=30)) == [11, 22]
    gate.close()
