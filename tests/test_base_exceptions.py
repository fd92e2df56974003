"""A task's ``SystemExit``, ``KeyboardInterrupt`` or ``asyncio.CancelledError``
must not stop the caller's event loop.

asyncio re-raises ``SystemExit``/``KeyboardInterrupt`` from any Task out of
``run_forever``, and a ``CancelledError`` reads as the awaiting task being
cancelled, so ``TaskQueue`` hands them over as ``TaskAbortedError`` (original
as ``__cause__``). ``ProcQueue`` keeps the standard library's behaviour and
re-raises the original.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from _tasks import add, raise_keyboard_interrupt, sys_exit

from procqueue import ProcQueue, RemoteTraceback, TaskAbortedError, TaskQueue, TaskState


def raise_cancelled() -> None:
    raise asyncio.CancelledError("from the task")


# (callable, args, original class, its qualified name)
CASES = [
    pytest.param(sys_exit, (3,), SystemExit, "builtins.SystemExit", id="sys-exit"),
    pytest.param(
        raise_keyboard_interrupt,
        (),
        KeyboardInterrupt,
        "builtins.KeyboardInterrupt",
        id="keyboard-interrupt",
    ),
    pytest.param(
        raise_cancelled,
        (),
        asyncio.CancelledError,
        "asyncio.exceptions.CancelledError",
        id="cancelled-error",
    ),
]

Case = Callable[..., Any]


def run(coro: Any) -> Any:
    """``asyncio.run``, but a BaseException escaping the loop fails the test
    instead of stopping pytest itself (a KeyboardInterrupt would)."""
    try:
        return asyncio.run(coro)
    except (SystemExit, KeyboardInterrupt, asyncio.CancelledError) as e:
        pytest.fail(f"{type(e).__name__} escaped the event loop: {e!r}")


def check_aborted(err: TaskAbortedError, original: type[BaseException], name: str) -> None:
    assert err.exc_type == name
    assert type(err.__cause__) is original
    assert isinstance(err.__cause__.__cause__, RemoteTraceback)  # worker traceback kept
    if original is SystemExit:
        assert err.__cause__.code == 3  # type: ignore[attr-defined]


def check_status(queue: TaskQueue, tid: int, name: str) -> None:
    status = queue.get_task_status(tid)
    assert status.state is TaskState.FAILED
    assert status.error is not None
    assert status.error.exc_type == name


@pytest.mark.parametrize(("fn", "args", "original", "name"), CASES)
def test_wait_for_result_raises_task_aborted(
    fn: Case, args: tuple[Any, ...], original: type[BaseException], name: str
) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as queue:
            tid = await queue.submit(fn, *args)
            with pytest.raises(TaskAbortedError) as info:
                await asyncio.wait_for(queue.result(tid), 5)
            check_aborted(info.value, original, name)
            check_status(queue, tid, name)
            # The loop and the queue go on.
            nxt = await queue.submit(add, 1, 2)
            assert await asyncio.wait_for(queue.result(nxt), 5) == 3

    run(main())


@pytest.mark.parametrize(("fn", "args", "original", "name"), CASES)
def test_background_task_awaiting_result_keeps_loop_alive(
    fn: Case, args: tuple[Any, ...], original: type[BaseException], name: str
) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as queue:
            tid = await queue.submit(fn, *args)
            waiter = asyncio.ensure_future(queue.result(tid))
            # Let the background task finish before anyone awaits it: this is
            # where asyncio would re-raise out of run_forever.
            await asyncio.wait({waiter})
            nxt = await queue.submit(add, 2, 2)
            assert await queue.result(nxt) == 4
            assert not waiter.cancelled()
            with pytest.raises(TaskAbortedError) as info:
                await waiter
            check_aborted(info.value, original, name)
            check_status(queue, tid, name)

    run(main())


@pytest.mark.parametrize(("fn", "args", "original", "name"), CASES)
def test_wait_and_as_completed_report_the_task(
    fn: Case, args: tuple[Any, ...], original: type[BaseException], name: str
) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=1) as queue:
            bad = await queue.submit(fn, *args)
            good = await queue.submit(add, 1, 1)
            done, not_done = await queue.wait([bad, good], timeout=30)
            assert done == {bad, good}
            assert not not_done
            seen = [tid async for tid in queue.as_completed([bad, good], timeout=30)]
            assert sorted(seen) == sorted([bad, good])
            with pytest.raises(TaskAbortedError) as info:
                await queue.result(bad)
            check_aborted(info.value, original, name)
            assert await queue.result(good) == 2
            check_status(queue, bad, name)

    run(main())


def test_procqueue_future_reraises_the_original() -> None:
    # Stdlib behaviour: ProcessPoolExecutor futures re-raise SystemExit as is.
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(sys_exit, 3)
        with pytest.raises(SystemExit) as info:
            fut.result(timeout=30)
        assert info.value.code == 3
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert pool.submit(add, 1, 2).result(timeout=30) == 3
