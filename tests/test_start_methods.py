"""The same essentials on every start method: results, lambdas, crash recovery."""

from __future__ import annotations

import pytest
from _tasks import add, exit_now

from procqueue import ProcQueue, WorkerCrashedError


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_essentials_on_each_start_method(method: str) -> None:
    with ProcQueue(max_workers=2, start_method=method) as pool:
        assert list(pool.map(add, range(10), range(10))) == [2 * i for i in range(10)]
        offset = 7
        assert pool.submit(lambda x: x + offset, 1).result() == 8
        with pytest.raises(WorkerCrashedError):
            pool.submit(exit_now, 1).result()
        assert pool.submit(add, 3, 4).result() == 7
        assert pool.get_stats().completed == 12
