"""Chaos and soak, bounded in time: random SIGKILLs, start/stop cycles, and the
coordinator's own death."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import psutil
from _tasks import add, square_slowly

from procqueue import ProcQueue, RetryPolicy


def test_chaos_random_sigkills_lose_nothing() -> None:
    n = 2000
    delivered: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    kills: list[float] = []

    def record(i: int, fut: Future[int]) -> None:
        with lock:
            delivered[i] += 1

    retry = RetryPolicy(max_retries=20, backoff_base=0)
    with ProcQueue(max_workers=2, retry=retry, start_method="fork") as pool:

        def killer() -> None:
            rng = random.Random(1234)
            while not stop.wait(0.05):  # load generator: one kill every ~50 ms
                pids = [w.pid for w in pool.get_stats().workers if w.pid and w.state == "ready"]
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills.append(time.monotonic())
                    except ProcessLookupError:
                        pass

        futs = []
        for i in range(n):
            fut = pool.submit(square_slowly, i)
            fut.add_done_callback(lambda f, i=i: record(i, f))
            futs.append(fut)
        chaos = threading.Thread(target=killer, name="chaos-killer")
        chaos.start()
        try:
            results = [f.result(timeout=120) for f in futs]
        finally:
            stop.set()
            chaos.join()
        stats = pool.get_stats()
    assert results == [i * i for i in range(n)]
    assert all(delivered[i] == 1 for i in range(n)), "a result was delivered twice or never"
    assert len(kills) >= 5, "the chaos thread did not get to kill anything"
    assert stats.completed == n and stats.failed == 0
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled
    assert sum(w.restarts for w in stats.workers) >= 1
    print(f"chaos: {len(kills)} SIGKILLs, {stats.retried} retried attempts, all {n} results right")


def _wait_dead(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (a zombie awaiting its reaper counts
    as exited: it runs no code). Processes that are not our children cannot be
    waited on, so this asks psutil, as psutil.wait_procs itself does."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        still = []
        for p in alive:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
            except psutil.NoSuchProcess:
                pass
        alive = still
        if alive:
            time.sleep(0.005)
    return alive


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_start_stop_cycles_leak_nothing() -> None:
    with ProcQueue(max_workers=2) as pool:  # warm-up: lazy imports, forkserver
        pool.submit(add, 1).result()
    fds = _fd_count()
    threads = threading.active_count()
    children = len(psutil.Process().children(recursive=True))
    for _ in range(100):
        with ProcQueue(max_workers=2) as pool:
            assert pool.submit(add, 1, 1).result() == 2
    assert _fd_count() <= fds
    assert threading.active_count() <= threads
    assert len(psutil.Process().children(recursive=True)) <= children


_OWNER = textwrap.dedent(
    """
    import sys, threading
    sys.path.insert(0, {tests!r})
    from procqueue import ProcQueue
    from _tasks import spawn_tree_and_hang, Gate
    from pathlib import Path

    if __name__ == "__main__":
        gate = Gate(Path({tmp!r}))
        pool = ProcQueue(max_workers=2)
        pool.submit(spawn_tree_and_hang, gate.paths)
        pool.submit(spawn_tree_and_hang, gate.paths)
        pids = [gate.wait_started() for _ in range(4)]
        workers = [w.pid for w in pool.get_stats().workers]
        print(" ".join(map(str, pids + workers)), flush=True)
        threading.Event().wait()
    """
)


def test_coordinator_sigkill_takes_workers_and_their_children(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(_OWNER.format(tests=str(Path(__file__).parent.parent), tmp=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent.parent)}
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env)
    assert owner.stdout is not None
    pids = [int(p) for p in owner.stdout.readline().split()]
    assert len(pids) == 6  # 2 children + 2 grandchildren + 2 workers
    procs = [psutil.Process(p) for p in pids]
    owner.kill()
    owner.wait()
    start = time.monotonic()
    alive = _wait_dead(procs, timeout=5)
    elapsed = time.monotonic() - start
    for p in alive:
        p.kill()
    owner.stdout.close()
    assert not alive, f"outlived the coordinator: {alive}"
    # Reported, not asserted tightly (slow machines): typically well under 1 s.
    print(f"tree gone {elapsed * 1000:.0f} ms after the coordinator's SIGKILL")
