"""Observers never stall the queue (#7, defect 3): a listener that blocks, and a
get_stats() whose psutil reading blocks, leave dispatch and submit running."""

from __future__ import annotations

import threading

from _tasks import add

from procqueue import ProcQueue, TaskStatus

BOUND = 30.0


def test_a_blocked_listener_does_not_stall_the_queue() -> None:
    release = threading.Event()
    calls = threading.Event()

    def listener(status: TaskStatus) -> None:
        calls.set()
        release.wait(BOUND)  # blocks until the round trips below are done

    with ProcQueue(max_workers=1) as pool:
        pool.subscribe(listener)
        try:
            # Inline listeners (the old engine called them in the coordinator
            # thread, under its lock) would stall every one of these.
            results = [pool.submit(add, i, 1).result(timeout=BOUND) for i in range(20)]
            assert calls.is_set()
        finally:
            release.set()
    assert results == [i + 1 for i in range(20)]


def test_a_slow_stats_reading_does_not_stall_the_queue() -> None:
    with ProcQueue(max_workers=1) as pool:
        assert pool.submit(add, 1).result(timeout=BOUND) == 1  # a worker is up
        engine = pool._engine
        reading = threading.Event()
        release = threading.Event()
        real = engine.transport.figures

        def slow_figures(slot: int, pid: int | None) -> tuple[int | None, float | None]:
            reading.set()
            release.wait(BOUND)  # psutil stuck on a busy /proc, say
            return real(slot, pid)

        engine.transport.figures = slow_figures  # type: ignore[method-assign]
        box: list[object] = []
        reader = threading.Thread(target=lambda: box.append(pool.get_stats()))
        reader.start()
        try:
            assert reading.wait(BOUND)
            # The reader is inside get_stats(), blocked in the figures: submits,
            # dispatch and results go on, and so do other readers of the counts.
            assert [pool.submit(add, i).result(timeout=BOUND) for i in range(10)] == list(range(10))
            assert pool.get_task_status(1).state == "completed"
        finally:
            release.set()
            reader.join(BOUND)
            engine.transport.figures = real  # type: ignore[method-assign]
        stats = box[0]
        assert isinstance(stats, type(pool.get_stats()))
