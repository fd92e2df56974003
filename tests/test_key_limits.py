"""Rate and concurrency limits end to end, on real processes."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path

import pytest
from _tasks import add

from procqueue import (
    Concurrency,
    InvalidArgumentError,
    ProcQueue,
    RateLimit,
    TaskQueue,
    TaskState,
    Throttle,
    task_id,
)

BOUND = 30.0


def busy_span(ms: float) -> tuple[float, float]:
    """Runs ``ms`` of CPU; returns its (start, end) on the system-wide monotonic clock."""
    start = time.monotonic()
    while time.monotonic() - start < ms / 1000:
        pass
    return start, time.monotonic()


def throttled_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).touch()
        raise Throttle(retry_after=0.05)
    return "ok"


def test_a_concurrency_limit_of_one_never_runs_two_at_once() -> None:
    with ProcQueue(max_workers=2, prefetch=2, key_limits={"db": Concurrency(1)}) as pool:
        spans = [pool.submit_task(busy_span, 15, limit_key="db") for _ in range(6)]
        free = [pool.submit(add, i) for i in range(20)]  # other work is not held up
        assert [f.result(timeout=BOUND) for f in free] == list(range(20))
        intervals = sorted(f.result(timeout=BOUND) for f in spans)
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert start >= end, "two tasks of the key ran at once"


def test_a_rate_limit_spaces_task_starts() -> None:
    async def main() -> list[tuple[float, float]]:
        async with TaskQueue(num_workers=1, key_limits={"api": RateLimit("20/s")}) as q:
            # The worker is up and has imported this module: the first start
            # then lags its dispatch by a pipe round trip, not an import.
            await q.result(await q.submit(busy_span, 0))
            ids = [await q.submit(busy_span, 0, limit_key="api") for _ in range(8)]
            return [await q.result(t, timeout=BOUND) for t in ids]

    starts = sorted(s for s, _ in asyncio.run(main()))
    # 8 starts at 20/s span at least 7 x 50 ms (less what the first may lag).
    assert starts[-1] - starts[0] >= 7 * 0.05 - 0.03


def test_throttle_retries_without_using_an_attempt(tmp_path: Path) -> None:
    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit_task(throttled_once, str(tmp_path / "m"))
        assert fut.result(timeout=BOUND) == "ok"
        st = pool.get_task_status(task_id(fut))
        assert st.state is TaskState.COMPLETED and st.attempts == 1
        assert [e.exc_type for e in st.errors] == ["procqueue.errors.Throttle"]
        assert len(pool.dlq) == 0


def test_unknown_limit_key_is_refused_at_submit() -> None:
    with ProcQueue(max_workers=1, key_limits={"tenant:*": RateLimit("2/s")}) as pool:
        with pytest.raises(InvalidArgumentError, match="no limit"):
            pool.submit_task(add, 1, limit_key="tenant")
        assert pool.submit_task(add, 2, limit_key="tenant:42").result(timeout=BOUND) == 2
