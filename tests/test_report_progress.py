"""``procqueue.report_progress``: a task's own progress reaches its status."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from _tasks import Gate, report_then_fail, report_then_gate

import procqueue
from procqueue import OptionTypeError, ProcQueue, RetryPolicy, TaskQueue, TaskStatus, task_id


def test_progress_reaches_status_and_listeners(gate: Gate) -> None:
    seen: list[TaskStatus] = []
    first = threading.Event()

    def listen(st: TaskStatus) -> None:
        if st.progress is not None:
            seen.append(st)
            first.set()

    with ProcQueue(1) as pool:
        pool.subscribe(listen)
        fut = pool.submit(report_then_gate, gate.paths, 2000)
        gate.wait_started()
        assert first.wait(30)
        mid = pool.get_task_status(task_id(fut))
        assert mid.state == "running"
        assert mid.progress == procqueue.TaskProgress(1.0, 2000, "first")
        assert mid.progress.fraction == pytest.approx(1 / 2000)
        gate.release()
        sent = fut.result(timeout=30)
        final = pool.get_task_status(task_id(fut))
    # Throttled to ~10 Hz: 2,000 calls in a tight loop send a handful, and the
    # final report (done == total) always goes, ahead of the result.
    assert 2 <= sent < 100
    assert final.progress == procqueue.TaskProgress(2000.0, 2000, "")
    assert final.progress.fraction == 1.0
    assert [s.progress.done for s in seen if s.progress] == sorted(
        s.progress.done for s in seen if s.progress
    )


def test_a_retry_starts_its_progress_afresh(counter: str) -> None:
    states: list[tuple[str, object]] = []

    async def main() -> TaskStatus:
        retry = RetryPolicy(max_retries=1, backoff_base=0.01, jitter=0)
        async with TaskQueue(num_workers=1, retry=retry) as q:
            q.subscribe(lambda st: states.append((st.state.value, st.progress)))
            tid = await q.submit(report_then_fail, counter)
            assert await q.result(tid) == "done"
            return q.get_task_status(tid)

    status = asyncio.run(main())
    assert ("retrying", None) in states
    assert status.progress == procqueue.TaskProgress(5.0, 10, "halfway")
    assert status.attempts == 2


def test_outside_a_worker_it_does_nothing() -> None:
    assert procqueue.report_progress(1, 2) is False
    assert procqueue.report_progress(3) is False  # an unknown total is fine


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("1", 2), {}), ((1, "2"), {}), ((True, 2), {}), ((1, 2), {"message": 3})],
)
def test_bad_reports_raise_typed_errors(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    with pytest.raises(OptionTypeError):
        procqueue.report_progress(*args, **kwargs)  # type: ignore[arg-type]


def test_a_map_bar_shows_its_tasks_own_progress(
    gate: Gate, capsys: pytest.CaptureFixture[str]
) -> None:
    from tqdm import std as tqdm_std

    with ProcQueue(1) as pool:
        results = pool.map(report_then_gate, [gate.paths], [3], progress="tqdm")
        gate.wait_started()
        deadline = time.monotonic() + 30
        bar = None
        while bar is None or "first" not in str(bar.postfix):  # the note is published
            assert time.monotonic() < deadline, "no per-task note on the bar"
            bar = next(iter(tqdm_std.tqdm._instances), None)
            time.sleep(0.005)  # polling the bar's state, with a deadline
        assert "1/3 first" in str(bar.postfix)
        gate.release()
        # Reports sent: 1/3, 2/3 unless it came within 0.1 s of it, and 3/3 (final).
        (sent,) = list(results)
        assert sent in (2, 3)
        engine = pool._engine
        assert not engine._progress_listeners and not engine.core.progress_watched
    assert "first" in capsys.readouterr().err
