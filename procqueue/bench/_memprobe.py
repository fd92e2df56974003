"""Coordinator memory per pending task, measured in a fresh interpreter.

Run as ``python -m procqueue.bench._memprobe --contestant KEY --tasks N
--result FILE ...`` by the memory workload, once per repetition. A fresh process
per measurement means no memory freed by an earlier workload is there to be
reused (which would hide growth), and nothing else runs in it.

In the child: open the pool and warm every worker; park every worker on a
blocker task (it announces its start on one FIFO and waits for a byte on
another, so no polling anywhere); build the ``N`` argument tuples; collect
garbage and hand free heap back to the OS (``malloc_trim``), then read RSS;
submit ``N`` tiny tasks, keeping every handle as a caller must; read RSS again.
The growth divided by ``N`` is the coordinator's memory per pending task,
handles included; the arguments were built before the first reading, so their
own size is not in it. Then release the blockers, check their answers, cancel
what is still queued and close the pool. The JSON result goes to ``--result``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import select
import sys
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from . import _tasks
from ._contestants import contestant_table
from ._measure import check, warm_workers

#: The pseudo-contestant that measures bare futures (a reference row).
BARE_FUTURE = "bare-future"


def _trim_heap() -> None:
    """Return free heap to the OS where glibc allows it (best effort)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class _Gate:
    """The coordinator's end of the started/release FIFO pair. ``O_RDWR`` on a
    FIFO never blocks and keeps both ends open for the blockers."""

    def __init__(self, directory: str) -> None:
        self.started = os.path.join(directory, "started.fifo")
        self.release = os.path.join(directory, "release.fifo")
        os.mkfifo(self.started)
        os.mkfifo(self.release)
        self._started_fd = os.open(self.started, os.O_RDWR)
        self._release_fd = os.open(self.release, os.O_RDWR)

    def wait_started(self, count: int, timeout: float) -> list[int]:
        buf = b""
        while buf.count(b"\n") < count:
            ready, _, _ = select.select([self._started_fd], [], [], timeout)
            if not ready:
                started = buf.count(b"\n")
                raise TimeoutError(f"only {started} of {count} blockers started: a worker is idle")
            buf += os.read(self._started_fd, 4096)
        return [int(line) for line in buf.split()]

    def open_all(self, count: int) -> None:
        os.write(self._release_fd, b"x" * count)

    def close(self) -> None:
        os.close(self._started_fd)
        os.close(self._release_fd)


def probe(
    key: str, tasks: int, workers: int, start_method: str, options: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Measure one contestant once; see the module docstring. ``BARE_FUTURE``
    measures ``tasks`` bare ``concurrent.futures.Future()`` objects instead: what
    the handle alone costs, for every pool whose ``submit`` returns one."""
    if key == BARE_FUTURE:
        return _bare_futures(tasks)
    table = {c.key: c for c in contestant_table(start_method, ())}
    contestant = table[key]
    pool = contestant.open(workers, options)
    with tempfile.TemporaryDirectory(prefix="pq-bench-") as tmp:
        gate = _Gate(tmp)
        try:
            warm_workers(pool, workers, timeout)
            blockers = pool.submit_many(
                _tasks.wait_for_release, [(gate.started, gate.release)] * workers
            )
            parked = gate.wait_started(workers, timeout)
            calls = [(i,) for i in range(tasks)]
            gc.collect()
            _trim_heap()
            before = _rss()
            handles = pool.submit_many(_tasks.add_one, calls)
            after = _rss()
            gate.open_all(workers)
            pids = [pool.wait(b, timeout) for b in blockers]
            check(sorted(pids) == sorted(parked), f"blockers answered {pids}, parked {parked}")
            pool.cancel_pending()
            done = 0
            for i, h in enumerate(handles):
                if isinstance(h, Future) and h.done() and not h.cancelled():
                    check(h.result() == i + 1, f"task {i} answered {h.result()!r}")
                    done += 1
        except BaseException:
            pool.close(broken=True)
            raise
        finally:
            gate.close()
    return {
        "contestant": key,
        "start_method": pool.start_method,
        "tasks": tasks,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_task": (after - before) / tasks,
        "completed_before_cancel": done,
    }


def _bare_futures(tasks: int) -> dict[str, Any]:
    calls = [(i,) for i in range(tasks)]
    gc.collect()
    _trim_heap()
    before = _rss()
    handles = [Future() for _ in calls]  # type: ignore[var-annotated]
    after = _rss()
    check(len(handles) == tasks, "lost a future")
    return {
        "contestant": BARE_FUTURE,
        "start_method": "n/a (no pool)",
        "tasks": tasks,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_task": (after - before) / tasks,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--contestant", required=True)
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--start-method", default="fork")
    p.add_argument("--prefetch", type=int, default=None)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--result", type=Path, required=True)
    args = p.parse_args(argv)
    options = {} if args.prefetch is None else {"prefetch": args.prefetch}
    out = probe(args.contestant, args.tasks, args.workers, args.start_method, options, args.timeout)
    args.result.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
