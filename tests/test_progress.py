"""Progress bars: ``ProcQueue.map(..., progress=...)`` and
``TaskQueue.as_completed(..., progress=...)`` (issue #10, "Progress").

Completion order is shown without sleeps: item 0 blocks on a gate (a FIFO the
test writes to) while the others finish; the test waits for the callable to
have seen them, then opens the gate.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _tasks import Gate, gated, ident, raise_value_error
from tqdm import std as tqdm_std

from procqueue import InvalidArgumentError, MissingExtraError, OptionTypeError, ProcQueue, TaskQueue
from procqueue._progress import Tracker, progress_factory, progress_map

BOUND = 30.0


class Recorder:
    """A ``progress=`` callable: keeps every ``(done, total)`` and lets the
    test wait for a condition on them."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.threads: set[int] = set()
        self._cond = threading.Condition()

    def __call__(self, done: int, total: int | None) -> None:
        with self._cond:
            self.calls.append((done, total))
            self.threads.add(threading.get_ident())
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[tuple[int, int | None]]], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: pred(self.calls), BOUND), self.calls

    def assert_monotone_to(self, n: int) -> None:
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones), self.calls
        assert self.calls[-1] == (n, n), self.calls
        assert all(t in (None, n) for _, t in self.calls), self.calls


def no_bars_open() -> bool:
    return len(tqdm_std.tqdm._instances) == 0


@pytest.fixture(autouse=True)
def _tqdm_clean() -> Iterator[None]:
    yield
    assert no_bars_open(), "a tqdm bar was left open"


def test_map_callable_advances_in_completion_order(gate: Gate) -> None:
    paths = gate.paths

    def work(x: int) -> object:  # nested: cloudpickle sends it by value
        return gated(paths, x) if x == 0 else x

    rec = Recorder()
    with ProcQueue(max_workers=2, prefetch=0) as pool:
        it = pool.map(work, range(6), progress=rec)
        gate.wait_started()
        # Item 0 is stuck; the five others finish and are counted before it.
        rec.wait_for(lambda calls: bool(calls) and calls[-1][0] == 5)
        assert rec.calls[-1] == (5, 6)
        gate.release()
        assert list(it) == list(range(6))
    rec.assert_monotone_to(6)


def test_map_callable_chunks_count_items_and_streaming_learns_its_total() -> None:
    chunked, streamed = Recorder(), Recorder()
    with ProcQueue(max_workers=2) as pool:
        assert list(pool.map(abs, range(-10, 0), chunksize=3, progress=chunked)) == list(
            range(10, 0, -1)
        )
        assert list(pool.map(ident, range(9), buffersize=2, progress=streamed)) == list(range(9))
    chunked.assert_monotone_to(10)
    streamed.assert_monotone_to(9)
    assert streamed.calls[0][1] is None  # not known until the input ran out


def test_map_with_no_items_reports_zero_of_zero() -> None:
    rec = Recorder()
    with ProcQueue(max_workers=1) as pool:
        assert list(pool.map(abs, [], progress=rec)) == []
    assert rec.calls == [(0, 0)]


def test_tqdm_bar_shows_rate_and_closes(capsys: pytest.CaptureFixture[str]) -> None:
    with ProcQueue(max_workers=2) as pool:
        assert list(pool.map(abs, range(-5, 0), progress="tqdm")) == [5, 4, 3, 2, 1]
    err = capsys.readouterr().err
    assert "abs: 100%" in err and "5/5" in err and "task/s" in err


def test_rich_bar_shows_rate_and_closes(capsys: pytest.CaptureFixture[str]) -> None:
    with ProcQueue(max_workers=2) as pool:
        assert list(pool.map(abs, range(-5, 0), progress="rich")) == [5, 4, 3, 2, 1]
    err = capsys.readouterr().err  # rich draws the final bar when it stops
    assert "abs" in err and "5/5" in err and "tasks/s" in err


def test_bar_closes_when_a_task_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with ProcQueue(max_workers=1) as pool:
        it = pool.map(raise_value_error, ["boom"], progress=True)
        with pytest.raises(ValueError, match="boom"):
            list(it)
        assert no_bars_open()
    assert "1 failed" in capsys.readouterr().err


def test_bar_closes_when_the_iterator_is_abandoned(gate: Gate) -> None:
    with ProcQueue(max_workers=1) as pool:
        it = pool.map(gated, [gate.paths] * 3, ["a", "b", "c"], progress="tqdm")
        assert not no_bars_open()
        gate.wait_started()
        gate.release()
        assert next(it) == "a"
        it.close()  # the rest is cancelled, the bar closed
        assert no_bars_open()
        gate.release(2)  # in case one was already handed to the worker


def test_bar_closes_when_the_iterator_is_dropped_unstarted() -> None:
    with ProcQueue(max_workers=1) as pool:
        it = pool.map(abs, [1, 2], progress="tqdm")
        assert not no_bars_open()
        del it
        assert no_bars_open()


def block_imports(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Make ``import package`` (and its submodules) fail, as if not installed."""
    for name in list(sys.modules):
        if name.partition(".")[0] in packages:
            monkeypatch.setitem(sys.modules, name, None)
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_extras_raise_at_the_call_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    block_imports(monkeypatch, "tqdm", "rich")
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(MissingExtraError, match=r'pip install "procqueue\[progress\]"'):
            pool.map(abs, [1, 2], progress=True)
        with pytest.raises(MissingExtraError, match="tqdm"):
            pool.map(abs, [1, 2], progress="tqdm")
        with pytest.raises(MissingExtraError, match="rich"):
            pool.map(abs, [1, 2], progress="rich")
        assert pool.get_stats().submitted == 0  # refused before anything was queued
        # The callable form needs neither.
        rec = Recorder()
        assert list(pool.map(abs, [-1], progress=rec)) == [1]
        assert rec.calls[-1] == (1, 1)

    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            tid = await q.submit(abs, -1)
            with pytest.raises(MissingExtraError, match=r"procqueue\[progress\]"):
                q.as_completed([tid], progress=True)  # at the call, not the first anext
            assert [t async for t in q.as_completed([tid])] == [tid]

    asyncio.run(main())


def test_true_falls_back_to_rich(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    block_imports(monkeypatch, "tqdm")
    with ProcQueue(max_workers=1) as pool:
        assert list(pool.map(abs, [-1, -2], progress=True)) == [1, 2]
    assert "tasks/s" in capsys.readouterr().err  # rich's rate column


def test_bad_progress_values_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="tqdm"):
        progress_factory("bars")
    with pytest.raises(OptionTypeError):
        progress_factory(3)  # type: ignore[arg-type]
    assert progress_factory(None) is None and progress_factory(False) is None


def test_as_completed_callable_runs_on_the_loop_and_ends_at_total() -> None:
    rec = Recorder()

    async def main() -> None:
        loop_thread = threading.get_ident()
        async with TaskQueue(num_workers=2) as q:
            ids = [await q.submit(abs, -i) for i in range(8)]
            seen = [t async for t in q.as_completed(ids, progress=rec)]
            assert sorted(seen) == ids
            assert rec.threads == {loop_thread}

    asyncio.run(main())
    rec.assert_monotone_to(8)


def test_as_completed_bar_closes_on_aclose(gate: Gate) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2, prefetch=0) as q:
            slow = await q.submit(gated, gate.paths, "slow")
            fast = await q.submit(abs, -1)
            agen = q.as_completed([slow, fast], progress="tqdm")
            assert await agen.__anext__() == fast
            assert not no_bars_open()
            await agen.aclose()  # type: ignore[attr-defined]
            assert no_bars_open()
            gate.release()

    asyncio.run(main())


def test_a_raising_callable_is_dropped_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    def broken(done: int, total: int | None) -> None:
        raise RuntimeError("display broke")

    with ProcQueue(max_workers=1) as pool:
        assert list(pool.map(abs, [-1, -2, -3], progress=broken)) == [1, 2, 3]
    assert "progress: the bar raised" in caplog.text


def test_progress_map_serves_any_executor() -> None:
    """The helper a submit-only front door (the broker client) can use."""
    from concurrent.futures import ThreadPoolExecutor

    rec = Recorder()
    with ThreadPoolExecutor(2) as ex:
        assert list(progress_map(ex, abs, ([-1, -2, -3],), None, rec)) == [1, 2, 3]
        assert list(progress_map(ex, abs, ([-4],), None, None)) == [4]
    rec.assert_monotone_to(3)


def test_tracker_ignores_completions_after_close() -> None:
    from concurrent.futures import Future

    rec = Recorder()
    factory = progress_factory(rec)
    assert factory is not None
    tracker = Tracker(factory, "t")
    a: Future[int] = Future()
    b: Future[int] = Future()
    tracker.watch(a)
    tracker.watch(b)
    tracker.input_done()
    tracker.open()
    a.set_result(1)
    tracker.close()
    b.set_result(2)
    assert rec.calls == [(0, 2), (1, 2)]


def test_rich_bar_shows_a_task_message_as_plain_text(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message like "[/tmp] step" is no rich markup: it used to raise
    MarkupError in rich's refresh thread, and the bar stopped."""
    from _tasks import report_bracketed

    raised: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    with ProcQueue(max_workers=1) as pool:
        assert list(pool.map(report_bracketed, range(3), progress="rich")) == [0, 1, 2]
    assert not raised
    assert "[/tmp] step" in capsys.readouterr().err


def test_a_map_that_fails_to_queue_leaves_no_progress_watcher() -> None:
    with ProcQueue(max_workers=1) as pool:
        engine = pool._engine
        for _ in range(2):
            with pytest.raises(Exception, match="pickle"):
                pool.map(ident, [threading.Lock()], progress=lambda done, total: None)
        assert engine._progress_listeners == [] and not engine.core.progress_watched


def test_as_completed_counts_a_task_settled_after_the_wake_up_before_yielding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``asyncio.wait`` hands back every future done when the iteration
    resumes, including one settled after the wake-up was queued, whose
    done-callbacks (the bar's) have not run yet. Such a task must be counted
    before it is yielded: otherwise the iteration could end (and close the
    bar) with the count short of the total. Driven step by step with futures
    settled on the loop in that order."""
    import procqueue.taskqueue as tq

    rec = Recorder()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        afs: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(2)]
        handed = iter(afs)
        real = tq.to_asyncio
        async with TaskQueue(num_workers=1) as q:
            ids = [await q.submit(abs, -i) for i in range(2)]
            await q.join()
            # as_completed's two futures are these, settled by the test
            monkeypatch.setattr(tq, "to_asyncio", lambda cf: next(handed, None) or real(cf))

            async def consume() -> list[int]:
                return [t async for t in q.as_completed(ids, progress=rec)]

            task = asyncio.ensure_future(consume())
            for _ in range(3):  # let it reach asyncio.wait (loop steps, not time)
                await asyncio.sleep(0)
            assert not task.done()
            afs[0].set_result(None)  # queues the bar's callback, then wait's
            # After wait's callback (which queues the consumer's wake-up): the
            # second future settles, its bar callback queued after that wake-up.
            loop.call_soon(afs[1].set_result, None)
            assert sorted(await asyncio.wait_for(task, BOUND)) == ids

    asyncio.run(main())
    rec.assert_monotone_to(2)


@pytest.mark.parametrize(
    ("take", "options"),
    [("all", {}), ("exactly_n", {}), ("all", {"buffersize": 1}), ("all", {"buffersize": 2})],
)
def test_map_closes_its_bar_at_the_total_when_the_last_callback_comes_late(
    monkeypatch: pytest.MonkeyPatch, take: str, options: dict[str, int]
) -> None:
    """A result is readable once its future turns finished, before the
    thread that settled it runs the done-callbacks (the bar's). The caller
    can take the last result and end the map first: the bar must still
    close at the total. Driven by holding the last callback until the map
    has ended."""
    from procqueue._progress import Tracker

    n = 4
    rec = Recorder()
    consumed = threading.Event()
    calls: list[int] = []
    real = Tracker.settled

    def held(self: Tracker, fut: Any, weight: int = 1) -> None:
        calls.append(weight)
        if sum(calls) == n:  # the last item's callback waits for the map's end
            consumed.wait(BOUND)
        real(self, fut, weight)

    monkeypatch.setattr(Tracker, "settled", held)
    with ProcQueue(1) as pool:
        # buffersize: streaming, where the input is known to be done only
        # after the last result came
        results = pool.map(ident, range(n), progress=rec, **options)
        if take == "all":
            assert list(results) == list(range(n))
        else:  # zip stops pulling after n: the generator never runs past its end
            assert [v for _, v in zip(range(n), results)] == list(range(n))
        consumed.set()
    rec.assert_monotone_to(n)
