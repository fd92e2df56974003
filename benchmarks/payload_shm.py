"""Large payloads: 4 MB arguments, 4 MB results, and both, against the stdlib.

Every contestant runs in this one process, interleaved round by round (the
order rotates each round), so a noisy neighbour hits them alike; each figure is
the median of ``--reps`` timed rounds after a warm-up round (BENCHMARKS.md).
The task functions live in this script's ``__main__`` (pickled by value, as a
user's script would have them). Every answer is checked. Exit status 1 only for
a wrong answer or an error, never for speed.

    python benchmarks/payload_shm.py                   # 24 x 4 MB, 2 workers, 5 reps
    python benchmarks/payload_shm.py --numpy --reps 7  # numpy arrays too
    python benchmarks/payload_shm.py --only ProcQueue/fork,ProcQueue-pipe/fork,ppe/fork
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from procqueue import ProcQueue
from procqueue._runtime import _shm, engine

_HAVE_MEMFD = _shm._HAVE_MEMFD


def echo(data: Any) -> Any:
    """Both ways: the payload in, the same payload out (pickled afresh)."""
    return data


def digest(data: Any) -> tuple[int, bytes]:
    """Arguments only: a large payload in, a few bytes out."""
    raw = memoryview(data).cast("B")
    return raw.nbytes, bytes(raw[:8]) + bytes(raw[-8:])


def make(index: int, size: int) -> bytes:
    """Results only: built in the worker (as ``procqueue.bench._tasks.make_payload``)."""
    tag = index.to_bytes(8, "little")
    return b"".join((tag, bytes([index % 251]) * (size - 16), tag))


def make_array(index: int, size: int) -> Any:
    import numpy as np

    a = np.full(size // 8, index, dtype=np.int64)
    a[-1] = -index
    return a


# --- contestants: each a context manager of a pool with ``run(fn, calls)`` ---------


class _Pool:
    def __init__(self, kind: str, method: str, workers: int) -> None:
        self.kind, self.method = kind, method
        # ``ProcQueue-pipe``: procqueue with its side files switched off, every
        # byte through the pipes (the A/B for the shared-memory path).
        _shm._HAVE_MEMFD = _HAVE_MEMFD and kind != "ProcQueue-pipe"
        if kind.startswith("ProcQueue"):
            self.pool: Any = ProcQueue(workers, start_method=method)
        elif kind == "ppe":
            ctx = multiprocessing.get_context(method)
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)
        else:
            self.pool = multiprocessing.get_context(method).Pool(workers)

    def run(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
        if self.kind == "mp.Pool":
            handles = [self.pool.apply_async(fn, c) for c in calls]
            return [h.get(600) for h in handles]
        futures = [self.pool.submit(fn, *c) for c in calls]
        return [f.result(600) for f in futures]

    def close(self) -> None:
        if self.kind == "mp.Pool":
            self.pool.close()
            self.pool.join()
        else:
            self.pool.shutdown(wait=True)
        _shm._HAVE_MEMFD = _HAVE_MEMFD


def _same(got: Any, want: Any) -> bool:
    if type(want).__module__ == "numpy":
        return bool(type(got) is type(want) and (got == want).all())
    return bool(got == want)


Workload = tuple[Callable[..., Any], list[Any], list[Any], int]


def workloads(args: argparse.Namespace) -> dict[str, Workload]:
    """``name -> (fn, calls, expected results, bytes moved)``."""
    size, n = int(args.mb * 1_000_000), args.tasks
    payloads = [make(i, size) for i in range(n)]
    out: dict[str, Workload] = {
        "args": (digest, [(p,) for p in payloads], [digest(p) for p in payloads], size * n),
        "results": (make, [(i, size) for i in range(n)], payloads, size * n),
        "echo": (echo, [(p,) for p in payloads], payloads, 2 * size * n),
    }
    if args.numpy:
        arrays = [make_array(i, size) for i in range(n)]
        out["np-args"] = (digest, [(a,) for a in arrays], [digest(a) for a in arrays], size * n)
        out["np-results"] = (make_array, [(i, size) for i in range(n)], arrays, size * n)
        out["np-echo"] = (echo, [(a,) for a in arrays], arrays, 2 * size * n)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=4.0, help="MB per payload (4)")
    ap.add_argument("--tasks", type=int, default=24, help="payloads per workload (24)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="timed rounds, after one warm-up (5)")
    ap.add_argument("--numpy", action="store_true", help="also numpy int64 arrays")
    ap.add_argument(
        "--only",
        default="ProcQueue/fork,ProcQueue/forkserver,ppe/fork,ppe/forkserver,mp.Pool/fork",
        help="contestants, kind/start-method, comma-separated; kinds: ProcQueue, "
        "ProcQueue-pipe (side files off), ppe, mp.Pool",
    )
    ap.add_argument("--workloads", default="", help="comma-separated subset (default: all)")
    ap.add_argument(
        "--no-direct-dispatch",
        action="store_true",
        help="procqueue: always wake the coordinator (engine.DIRECT_DISPATCH = False); "
        "large frames queued on a full pipe race with direct dispatch as of 9bb9064",
    )
    args = ap.parse_args()
    if args.no_direct_dispatch:
        engine.DIRECT_DISPATCH = False
    loads = workloads(args)
    if args.workloads:
        loads = {k: v for k, v in loads.items() if k in args.workloads.split(",")}
    contestants = [tuple(c.split("/")) for c in args.only.split(",")]
    times: dict[tuple[str, str], list[float]] = {}
    failed = False
    for rnd in range(args.reps + 1):
        k = rnd % len(contestants)
        for kind, method in contestants[k:] + contestants[:k]:
            pool = _Pool(kind, method, args.workers)
            try:
                pool.run(echo, [(b"x",)] * (4 * args.workers))  # every worker up
                for name, (fn, calls, want, moved) in loads.items():
                    t0 = time.perf_counter()
                    got = pool.run(fn, calls)
                    wall = time.perf_counter() - t0
                    if not all(_same(g, w) for g, w in zip(got, want)) or len(got) != len(want):
                        print(f"FAIL {kind}/{method} {name}: wrong results", file=sys.stderr)
                        failed = True
                    if rnd:  # round 0 is the warm-up
                        times.setdefault((f"{kind}/{method}", name), []).append(moved / wall / 1e6)
                    del got  # freed here, not inside the next timing
            finally:
                pool.close()
    names = [f"{k}/{m}" for k, m in contestants]
    print(
        f"\n{args.tasks} x {args.mb:g} MB per workload, {args.workers} workers; MB/s, median of "
        f"{args.reps} (min-max); ratio = MB/s / ProcessPoolExecutor's on the same start method\n"
    )
    print("| contestant | " + " | ".join(loads) + " |")
    print("|---|" + "---:|" * len(loads))
    for c in names:
        cells = []
        for w in loads:
            mbs = times[(c, w)]
            med = statistics.median(mbs)
            ppe = times.get((f"ppe/{c.split('/')[1]}", w))
            ratio = ""
            if ppe and not c.startswith("ppe"):
                ratio = f" **{med / statistics.median(ppe):.2f}x**"
            cells.append(f"{med:,.0f} ({min(mbs):,.0f}-{max(mbs):,.0f}){ratio}")
        print(f"| {c} | " + " | ".join(cells) + " |")
    print(
        f"\n{datetime.now(timezone.utc).isoformat(timespec='seconds')}, Python "
        f"{sys.version.split()[0]}, nproc {os.cpu_count()}, load {os.getloadavg()}, "
        f"command: {' '.join(sys.argv)}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
