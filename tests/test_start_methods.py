"""The same essentials on every start method: results, lambdas, crash recovery."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


_FORKSERVER_POOLS = """
import sys
sys.path.insert(0, {tests!r})
from _tasks import add
from procqueue import ProcQueue

if __name__ == "__main__":
    for i in range(3):
        with ProcQueue(max_workers=1, start_method="forkserver") as pool:
            assert pool.submit(add, i, 1).result(timeout=60) == i + 1
"""


def test_forkserver_workers_do_not_import_procqueue_each(tmp_path: Path) -> None:
    """The forkserver imports the worker's module once, before it forks:
    each worker that imported procqueue itself took ~150 ms to start (spawn's
    cost) instead of ~10 ms. Counted with ``-X importtime`` (which the server
    and its children inherit) in a process of its own, whose forkserver is
    fresh: procqueue is imported by the script (and the server), not by each
    of the three workers."""
    script = tmp_path / "pools.py"
    script.write_text(_FORKSERVER_POOLS.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imports = [line for line in done.stderr.splitlines() if line.endswith("| procqueue")]
    # The script's own import, and the server's where its output shows.
    assert len(imports) <= 2, f"procqueue imported {len(imports)} times: by each worker"
