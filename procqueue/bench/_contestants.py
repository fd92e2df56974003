"""The contestants: every row of every table, and how to open its pool.

A :class:`Contestant` names one library on one start method; :func:`contestant_table`
lists them in report order. The adapters it opens are in :mod:`._stdlib_pools`,
:mod:`._procqueue_pools` and :mod:`._peer_pools` (the interface in :mod:`._pool`).
Optional peers (loky, joblib, pebble, mpire) are imported when their pool is
opened, so this module needs nothing outside the standard library and procqueue.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ._peer_pools import JoblibPool, LokyPool, MpirePool, PebblePool
from ._pool import Pool
from ._procqueue_pools import ProcQueuePool, TaskQueuePool
from ._stdlib_pools import AsyncioPool, FuturesPool, MpPool, SequentialPool, StaticSplitPool

__all__ = [
    "CONTESTANTS",
    "Contestant",
    "contestant_table",
]


@dataclass(frozen=True)
class Contestant:
    """One row of every table. ``key`` names it on the command line."""

    key: str
    label: str
    #: The library family: ``ppe`` rows are the baselines for ratios.
    family: str
    #: The start method asked for (``None``: the library offers no choice).
    start_method: str | None
    #: Optional library the pool needs (``None``: stdlib or procqueue).
    requires: str | None
    opener: Callable[[int, str, dict[str, Any]], Pool]
    #: Workloads this contestant is entered in (``None``: all it supports).
    only: frozenset[str] | None = None

    @property
    def is_procqueue(self) -> bool:
        return self.family in ("ProcQueue", "TaskQueue")

    @property
    def is_peer(self) -> bool:
        """A process pool other than procqueue (what "ahead of every peer" means)."""
        return self.family in ("ppe", "mp.Pool", "loky", "joblib", "pebble", "mpire")

    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def open(self, workers: int, pq_options: dict[str, Any]) -> Pool:
        pool = self.opener(workers, self.start_method or "", pq_options)
        pool.contestant = self.key
        return pool


def _ppe(workers: int, method: str, _: dict[str, Any]) -> Pool:
    ctx = multiprocessing.get_context(method)
    return FuturesPool(ProcessPoolExecutor(max_workers=workers, mp_context=ctx), method)


def _threads(workers: int, _method: str, _: dict[str, Any]) -> Pool:
    return FuturesPool(
        ThreadPoolExecutor(max_workers=workers), f"n/a (threads, {workers})", in_process=True
    )


#: Threads and asyncio at the concurrency they are chosen for (I/O only).
IO_CONCURRENCY = 64


def contestant_table(
    main_method: str, extra_methods: Sequence[str], workers: int | None = None
) -> list[Contestant]:
    """Every contestant, in report order. Process pools that let you choose run
    on ``main_method``; ProcessPoolExecutor, multiprocessing.Pool and both
    procqueue front doors run again on each of ``extra_methods`` (rows keyed
    ``ppe/forkserver`` and so on), so that each target of issue #11 is judged on
    every start method the run measures."""
    m = main_method
    w_label = "N" if workers is None else str(workers)
    table = [
        Contestant("sequential", "sequential (loop)", "sequential", None, None,
                   lambda w, _m, o: SequentialPool()),
        Contestant("threads", "ThreadPoolExecutor", "threads", None, None, _threads),
        Contestant(f"threads-{IO_CONCURRENCY}", f"ThreadPoolExecutor ({IO_CONCURRENCY} threads)",
                   "threads", None, None,
                   lambda w, _m, o: _threads(IO_CONCURRENCY, _m, o), frozenset({"io"})),
        Contestant("asyncio", "asyncio", "asyncio", None, None,
                   lambda w, _m, o: AsyncioPool(w), frozenset({"io"})),
        Contestant(f"asyncio-{IO_CONCURRENCY}", f"asyncio ({IO_CONCURRENCY} at a time)",
                   "asyncio", None, None,
                   lambda w, _m, o: AsyncioPool(IO_CONCURRENCY), frozenset({"io"})),
        Contestant("ceiling", f"{w_label} bare processes, one slice each [{m}]", "ceiling", m,
                   None, lambda w, sm, o: StaticSplitPool(w, sm), frozenset({"cpu"})),
        Contestant("ppe", f"ProcessPoolExecutor [{m}]", "ppe", m, None, _ppe),
        Contestant("mp.Pool", f"multiprocessing.Pool [{m}]", "mp.Pool", m, None,
                   lambda w, sm, o: MpPool(w, sm)),
        Contestant("ProcQueue", f"procqueue ProcQueue [{m}]", "ProcQueue", m, None,
                   ProcQueuePool),
        Contestant("TaskQueue", f"procqueue TaskQueue [{m}]", "TaskQueue", m, None,
                   TaskQueuePool),
        Contestant("loky", f"loky [{m}]", "loky", m, "loky", lambda w, sm, o: LokyPool(w, sm)),
        Contestant("joblib", "joblib [loky]", "joblib", None, "joblib",
                   lambda w, sm, o: JoblibPool(w, sm)),
        Contestant("pebble", f"pebble [{m}]", "pebble", m, "pebble",
                   lambda w, sm, o: PebblePool(w, sm)),
        Contestant("mpire", f"mpire [{m}]", "mpire", m, "mpire",
                   lambda w, sm, o: MpirePool(w, sm)),
    ]  # fmt: skip
    for extra in extra_methods:
        if extra == m:
            continue
        table += [
            Contestant(f"ppe/{extra}", f"ProcessPoolExecutor [{extra}]", "ppe", extra, None, _ppe),
            Contestant(f"mp.Pool/{extra}", f"multiprocessing.Pool [{extra}]", "mp.Pool", extra,
                       None, lambda w, sm, o: MpPool(w, sm)),
            Contestant(f"ProcQueue/{extra}", f"procqueue ProcQueue [{extra}]", "ProcQueue",
                       extra, None, ProcQueuePool),
            Contestant(f"TaskQueue/{extra}", f"procqueue TaskQueue [{extra}]", "TaskQueue",
                       extra, None, TaskQueuePool),
        ]  # fmt: skip
    return table


#: Keys of the contestants with the default start methods, for ``--help``.
CONTESTANTS = tuple(c.key for c in contestant_table("fork", ("forkserver",)))
