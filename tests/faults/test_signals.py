"""Ctrl-C and SIGTERM on a script that uses either front door: a prompt, clean
exit, no traceback from any worker, and no worker left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

_PRELUDE = """
import asyncio, sys, threading
sys.path.insert(0, {tests!r})
from pathlib import Path
from procqueue import ProcQueue, TaskQueue
from _tasks import Gate, gated

TMP = {tmp!r}

def ready(pids):
    print(" ".join(map(str, pids)), flush=True)
"""

_SYNC_WITH = """
if __name__ == "__main__":
    gate = Gate(Path(TMP))
    with ProcQueue(max_workers=2) as pool:
        futs = [pool.submit(gated, gate.paths) for _ in range(6)]
        ready([gate.wait_started(), gate.wait_started()])
        for f in futs:
            f.result()
"""

_SYNC_BARE = """
if __name__ == "__main__":
    gate = Gate(Path(TMP))
    pool = ProcQueue(max_workers=2)
    futs = [pool.submit(gated, gate.paths) for _ in range(6)]
    ready([gate.wait_started(), gate.wait_started()])
    futs[0].result()
"""

_ASYNC = """
async def main():
    gate = Gate(Path(TMP))
    async with TaskQueue(num_workers=2) as q:
        ids = [await q.submit(gated, gate.paths) for _ in range(6)]
        loop = asyncio.get_running_loop()
        pids = [await loop.run_in_executor(None, gate.wait_started) for _ in range(2)]
        ready(pids)
        await q.join()

if __name__ == "__main__":
    asyncio.run(main())
"""


def _run(tmp_path: Path, body: str, sig: int) -> tuple[int, str, list[int]]:
    script = tmp_path / "script.py"
    tests = str(Path(__file__).parent.parent)
    script.write_text(textwrap.dedent(_PRELUDE.format(tests=tests, tmp=str(tmp_path))) + body)
    env = {**os.environ, "PYTHONPATH": str(Path(tests).parent)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stderr is not None
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2, proc.stderr.read().decode()
    handles = []
    for p in workers:
        try:
            handles.append(psutil.Process(p))
        except psutil.NoSuchProcess:
            pass
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the script did not stop after the signal")
    _, alive = psutil.wait_procs(handles, timeout=5)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert not alive, f"workers left behind: {alive}"
    return proc.returncode, err.decode(), workers


@pytest.mark.parametrize("body", [_SYNC_WITH, _SYNC_BARE, _ASYNC], ids=["with", "bare", "asyncio"])
def test_ctrl_c(tmp_path: Path, body: str) -> None:
    code, err, _ = _run(tmp_path, body, signal.SIGINT)
    # As any Python script interrupted by Ctrl-C: killed by SIGINT (130 in a shell).
    assert code in (-signal.SIGINT, 1, 130), err
    assert "KeyboardInterrupt" in err
    # The main program's traceback only (asyncio.run chains CancelledError to
    # it, as for any asyncio script); nothing from a worker or the coordinator.
    assert "procqueue-worker" not in err, err
    assert "_worker.py" not in err and "_coordinator.py" not in err, err


@pytest.mark.parametrize("body", [_SYNC_WITH, _ASYNC], ids=["sync", "asyncio"])
def test_sigterm(tmp_path: Path, body: str) -> None:
    code, err, _ = _run(tmp_path, body, signal.SIGTERM)
    assert code == -signal.SIGTERM, err
    assert "Traceback" not in err, err
