"""procqueue's comparative benchmark suite: ``python -m procqueue.bench``.

procqueue next to sequential code, threads, asyncio, ProcessPoolExecutor (fork
and forkserver), multiprocessing.Pool and, when installed (the ``bench``
extra), loky, joblib, pebble and mpire, in one run on one machine, with the
same worker count for all. The rules it follows are the project's
``BENCHMARKS.md``: ratios against ProcessPoolExecutor first, then absolute
numbers; a warm-up round, then at least three timed rounds with the contestants
rotated; every answer checked (a wrong one is FAIL, never a time); the context
(date, Python, nproc, load, start methods, versions, command, commit) recorded
with the numbers.

Workloads: idle round-trip latency, start-up and shutdown, tiny tasks one by
one and map with chunk sizes (these three each with a task function defined in
the script's ``__main__``, the default, and with an importable one), 4 MB payloads
(arguments only, results only, both ways), I/O-bound sleeps, ~20 ms CPU tasks,
throughput against task size, scale to 1M tasks, coordinator memory per pending
task, and a worker SIGKILLed mid-run. The report opens with procqueue against
its targets (issues #11 and #4), on every start method the run measures.

From code::

    from procqueue.bench import BenchConfig, run_suite

    cfg = BenchConfig.quick().with_overrides(workloads=("tiny",), only=("ppe", "ProcQueue"))
    result = run_suite(cfg)
    result.failed          # [] when every answer was right
    result.markdown()      # the report
    result.write()         # .md, .json (and .png with matplotlib) into cfg.out

``import procqueue`` does not import this package; this package imports nothing
outside the standard library and procqueue until an optional peer's pool is
opened.
"""

from __future__ import annotations

from ._config import WORKLOADS, BenchConfig
from ._contestants import CONTESTANTS
from ._suite import SuiteResult, run_suite
from ._targets import Target

__all__ = [
    "CONTESTANTS",
    "WORKLOADS",
    "BenchConfig",
    "SuiteResult",
    "Target",
    "run_suite",
]
