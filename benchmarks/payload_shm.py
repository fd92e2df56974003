"""Large payloads: 4 MB arguments, 4 MB results, and both, against the stdlib.

Every contestant runs in this one process, interleaved round by round (the
order rotates each round), so a noisy neighbour hits them alike; each figure is
the median of ``--reps`` timed rounds (at least 3) after a warm-up round
(BENCHMARKS.md). The task functions live in this script's ``__main__``
(pickled by value by procqueue, as a user's script would have them). The
results-only task returns a payload each worker built once, before the timing
(``procqueue.bench._tasks.built_once``), so that what is timed is the result's
trip, not its making. Every answer is checked: a wrong one, an exception or a
hang is FAIL for that contestant and workload, which then sits out the rest of
the rounds and shows no figure. Exit status 1 only for a FAIL, never for speed.

    python benchmarks/payload_shm.py                   # 24 x 4 MB, 2 workers, 5 reps
    python benchmarks/payload_shm.py --numpy --reps 7  # numpy arrays too
    python benchmarks/payload_shm.py --only ProcQueue/fork,ProcQueue-pipe/fork,ppe/fork
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from procqueue._runtime import _shm, engine
from procqueue.bench import _tasks
from procqueue.bench._context import footer
from procqueue.bench._measure import (
    ABANDONED,
    CLEANUP_TIMEOUT_S,
    WARM_ROUNDS,
    WARM_SLEEP_S,
    close_within,
)
from procqueue.bench._pool import Pool
from procqueue.bench._procqueue_pools import ProcQueuePool
from procqueue.bench._stdlib_pools import FuturesPool, MpPool

_log = logging.getLogger("payload_shm")
_HAVE_MEMFD = _shm._HAVE_MEMFD
KINDS = ("ProcQueue", "ProcQueue-pipe", "ppe", "mp.Pool")
#: The index the results-only payload is made with (not 0: that one is all
#: zero bytes, as a zero-filled buffer handed back by mistake would be).
RESULT_INDEX = 1


def echo(data: Any) -> Any:
    """Both ways: the payload in, the same payload out (pickled afresh)."""
    return data


def digest(data: Any) -> tuple[int, bytes]:
    """Arguments only: a large payload in, a few bytes out."""
    raw = memoryview(data).cast("B")
    return raw.nbytes, bytes(raw[:8]) + bytes(raw[-8:])


def make(index: int, size: int) -> bytes:
    """``size`` bytes tagged with ``index`` (as ``procqueue.bench._tasks.make_payload``)."""
    tag = index.to_bytes(8, "little")
    return b"".join((tag, bytes([index % 251]) * (size - 16), tag))


def make_array(index: int, size: int) -> Any:
    import numpy as np

    a = np.full(size // 8, index, dtype=np.int64)
    a[-1] = -index
    return a


def result(index: int, size: int, kind: str) -> tuple[int, Any, bool]:
    """Results only: ``(index, the payload, whether this call built it)``. The
    payload (``make`` or ``make_array`` of :data:`RESULT_INDEX`) is built once
    per worker process, by :func:`prime` before the timing, then returned every
    time: a timed call that had to build it is a FAIL (the timing would hold
    its making)."""
    build = make_array if kind == "array" else make
    data, built = _tasks.built_once(("payload_shm", kind, size), build, RESULT_INDEX, size)
    return index, data, built


def prime(size: int, kind: str, delay: float) -> int:
    """Build :func:`result`'s payload in this worker, sleep ``delay`` s (so that
    the other workers take the next calls) and return the pid."""
    result(-1, size, kind)
    time.sleep(delay)
    return os.getpid()


def numpy_ready(delay: float) -> int:
    """Import numpy in this worker (a forkserver or spawn worker has not: its
    first array would pay for the import inside the timing), sleep ``delay`` s
    and return the pid."""
    import numpy  # noqa: F401

    time.sleep(delay)
    return os.getpid()


# --- contestants -------------------------------------------------------------------


@contextmanager
def _side_files(kind: str) -> Iterator[None]:
    """``ProcQueue-pipe``: procqueue with its side files switched off, every
    byte through the pipes (the A/B for the shared-memory path)."""
    _shm._HAVE_MEMFD = _HAVE_MEMFD and kind != "ProcQueue-pipe"
    try:
        yield
    finally:
        _shm._HAVE_MEMFD = _HAVE_MEMFD


def open_pool(kind: str, method: str, workers: int) -> Pool:
    """The suite's adapter for ``kind`` (``run_all``, ``close(broken=)``)."""
    if kind.startswith("ProcQueue"):
        return ProcQueuePool(workers, method, {})
    if kind == "ppe":
        ctx = multiprocessing.get_context(method)
        executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)
        return FuturesPool(executor, method)
    if kind == "mp.Pool":
        return MpPool(workers, method)
    raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")


def warm(pool: Pool, workers: int, timeout: float, fn: Callable[..., int], *args: Any) -> None:
    """Until every worker has answered once: ``fn(*args, WARM_SLEEP_S)``, a
    short sleep that returns the pid (and builds the results-only payload there,
    or imports numpy, first)."""
    seen: set[int] = set()
    for _ in range(WARM_ROUNDS):
        seen.update(pool.run_all(fn, [(*args, WARM_SLEEP_S)] * (2 * workers), timeout))
        if len(seen) >= workers:
            return
    raise RuntimeError(f"only {len(seen)} of {workers} workers answered the warm-up")


# --- workloads -----------------------------------------------------------------------


@dataclass
class Workload:
    fn: Callable[..., Any]
    calls: list[tuple[Any, ...]]
    want: list[Any]
    #: Payload bytes moved by one run (in + out).
    moved: int
    #: Results only: ``(size, kind)`` of the payload each worker builds first.
    payload: tuple[int, str] | None = None


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, tuple):
        return (
            isinstance(got, tuple)
            and len(got) == len(want)
            and all(_same(g, w) for g, w in zip(got, want))
        )
    if type(want).__module__ == "numpy":
        return bool(type(got) is type(want) and got.shape == want.shape and (got == want).all())
    return bool(got == want)


def verify(w: Workload, got: list[Any]) -> str | None:
    """Why ``got`` is not the answer (``None``: it is)."""
    if len(got) != len(w.want):
        return f"{len(got)} results for {len(w.want)} tasks"
    if w.payload is not None and any(isinstance(g, tuple) and g[-1] for g in got):
        return "a worker built the payload inside the timed run (the prime step missed it)"
    for i, (g, want) in enumerate(zip(got, w.want)):
        if not _same(g, want):
            return f"result {i} is wrong"
    return None


def workloads(args: argparse.Namespace) -> dict[str, Workload]:
    """Every workload asked for, by name."""
    size, n = int(args.mb * 1_000_000), args.tasks
    payloads = [make(i, size) for i in range(n)]
    back = make(RESULT_INDEX, size)
    out = {
        "args": Workload(digest, [(p,) for p in payloads], [digest(p) for p in payloads], size * n),
        "results": Workload(
            result,
            [(i, size, "bytes") for i in range(n)],
            [(i, back, False) for i in range(n)],
            size * n,
            (size, "bytes"),
        ),
        "echo": Workload(echo, [(p,) for p in payloads], payloads, 2 * size * n),
    }
    if args.numpy:
        arrays = [make_array(i, size) for i in range(n)]
        back_array = make_array(RESULT_INDEX, size)
        out["np-args"] = Workload(
            digest, [(a,) for a in arrays], [digest(a) for a in arrays], size * n
        )
        out["np-results"] = Workload(
            result,
            [(i, size, "array") for i in range(n)],
            [(i, back_array, False) for i in range(n)],
            size * n,
            (size, "array"),
        )
        out["np-echo"] = Workload(echo, [(a,) for a in arrays], arrays, 2 * size * n)
    if args.workloads:
        wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
        out = {k: v for k, v in out.items() if k in wanted}
    return out


# --- the rounds ----------------------------------------------------------------------


@dataclass
class Results:
    """MB/s per (contestant, workload) over the timed rounds, and the FAILs."""

    mbs: dict[tuple[str, str], list[float]]
    failed: dict[tuple[str, str], str]


def _fail(res: Results, cell: tuple[str, str], why: str) -> None:
    res.failed[cell] = why.replace("\n", " ").replace("|", "/")[:300]
    _log.error("FAIL %s %s: %s", *cell, res.failed[cell])


def _session(
    args: argparse.Namespace,
    name: str,
    loads: dict[str, Workload],
    res: Results,
    rnd: int,
) -> None:
    """One contestant's round: a fresh pool, every workload it has not FAILed."""
    kind, method = name.split("/", 1)
    todo = [w for w in loads if (name, w) not in res.failed]
    pool: Pool | None = None
    with _side_files(kind):
        for w in todo:
            wl = loads[w]
            try:
                if pool is None:  # first, or after a failure closed the last one
                    pool = open_pool(kind, method, args.workers)
                    ready = numpy_ready if args.numpy else _tasks.worker_pid
                    warm(pool, args.workers, args.timeout, ready)
                if wl.payload is not None:
                    warm(pool, args.workers, args.timeout, prime, *wl.payload)
                t0 = time.perf_counter()
                got = pool.run_all(wl.fn, wl.calls, args.timeout)
                wall = time.perf_counter() - t0
                why = verify(wl, got)
                del got  # freed here, not inside the next timing
            except Exception as e:  # an error or a hang: FAIL, and a fresh pool for the rest
                why = f"{type(e).__name__}: {e}"
                if pool is not None and not close_within(pool, CLEANUP_TIMEOUT_S, broken=True):
                    _log.error("%s: cleanup hung; abandoned", name)
                pool = None
            if why is not None:
                _fail(res, (name, w), f"round {rnd}: {why}")
                continue
            mbs = wl.moved / wall / 1e6
            _log.info("round %d%s %-26s %-10s %8.0f MB/s", rnd, " (warm-up)" * (rnd == 0),
                      name, w, mbs)  # fmt: skip
            if rnd:  # round 0 is the warm-up
                res.mbs.setdefault((name, w), []).append(mbs)
        if pool is not None and not close_within(pool, CLEANUP_TIMEOUT_S):
            _log.error("%s: shutdown hung; abandoned", name)


def measure(args: argparse.Namespace, names: Sequence[str], loads: dict[str, Workload]) -> Results:
    res = Results({}, {})
    for rnd in range(args.reps + 1):
        k = rnd % len(names)
        for name in [*names[k:], *names[:k]]:
            _session(args, name, loads, res, rnd)
    return res


def cell_text(res: Results, name: str, w: str) -> str:
    """``median (min-max)`` MB/s and the ratio to PPE on the same start method;
    ``FAIL`` for a contestant that FAILed this workload in any round."""
    if (name, w) in res.failed:
        return "FAIL"
    mbs = res.mbs.get((name, w))
    if not mbs:
        return "—"
    med = statistics.median(mbs)
    ratio = ""
    ppe_name = f"ppe/{name.split('/', 1)[1]}"
    ppe = res.mbs.get((ppe_name, w))
    if ppe and not name.startswith("ppe/") and (ppe_name, w) not in res.failed:
        ratio = f" **{med / statistics.median(ppe):.2f}x**"
    return f"{med:,.0f} ({min(mbs):,.0f}-{max(mbs):,.0f}){ratio}"


def report(
    args: argparse.Namespace, names: Sequence[str], loads: dict[str, Workload], res: Results
) -> None:
    print(
        f"\n{args.tasks} x {args.mb:g} MB per workload, {args.workers} workers; MB/s, median of "
        f"{args.reps} (min-max); ratio = MB/s / ProcessPoolExecutor's on the same start "
        "method. Results only: each worker builds the payload once, before the timing.\n"
    )
    print("| contestant | " + " | ".join(loads) + " |")
    print("|---|" + "---:|" * len(loads))
    for name in names:
        print(f"| {name} | " + " | ".join(cell_text(res, name, w) for w in loads) + " |")
    if res.failed:
        print("\nFAIL (no figure is shown for these):\n")
        for (name, w), why in res.failed.items():
            print(f"- {name} {w}: {why}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=4.0, help="MB per payload (4)")
    ap.add_argument("--tasks", type=int, default=24, help="payloads per workload (24)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="timed rounds after a warm-up (5, >= 3)")
    ap.add_argument("--numpy", action="store_true", help="also numpy int64 arrays")
    ap.add_argument(
        "--only",
        default="ProcQueue/fork,ProcQueue/forkserver,ppe/fork,ppe/forkserver,mp.Pool/fork",
        help="contestants, kind/start-method, comma-separated; kinds: ProcQueue, "
        "ProcQueue-pipe (side files off), ppe, mp.Pool",
    )
    ap.add_argument("--workloads", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take (600)")
    ap.add_argument(
        "--no-direct-dispatch",
        action="store_true",
        help="procqueue: always wake the coordinator (engine.DIRECT_DISPATCH = False); "
        "large frames queued on a full pipe race with direct dispatch as of 9bb9064",
    )
    args = ap.parse_args(argv)
    if args.reps < 3:
        ap.error("--reps must be at least 3 (BENCHMARKS.md rule 2)")
    if args.tasks < 1 or args.workers < 1 or args.mb * 1_000_000 < 16:
        ap.error("need --tasks >= 1, --workers >= 1 and --mb of at least 16 bytes")
    names = [c.strip() for c in args.only.split(",") if c.strip()]
    methods = multiprocessing.get_all_start_methods()
    bad = [c for c in names if c.count("/") != 1 or c.split("/")[0] not in KINDS
           or c.split("/")[1] not in methods]  # fmt: skip
    if bad or not names:
        ap.error(f"--only: kind/start-method, kinds {', '.join(KINDS)}; bad: {', '.join(bad)}")
    if args.numpy:
        try:
            import numpy  # noqa: F401
        except ImportError:
            ap.error("--numpy needs numpy installed")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.no_direct_dispatch:
        engine.DIRECT_DISPATCH = False
    started = datetime.now(timezone.utc)
    loads = workloads(args)
    if not loads:
        ap.error(f"--workloads: none of {args.workloads!r} is a workload here")
    res = measure(args, names, loads)
    report(args, names, loads, res)
    print(footer(started, ("numpy",) if args.numpy else ()))
    return 1 if res.failed else 0


if __name__ == "__main__":
    status = main()
    if ABANDONED:  # a pool whose shutdown hung: its threads would keep us from exiting
        sys.stdout.flush()
        os._exit(status)
    sys.exit(status)
