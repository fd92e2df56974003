"""The suite's command line, and the script it runs as.

``python -m procqueue.bench`` runs this module as ``__main__`` (see
``__main__.py`` for why not that one); so does ``python -m
procqueue.bench._cli``. The markdown report goes to stdout, progress to stderr,
and ``<stamp>.md``, ``<stamp>.json`` (raw numbers and context) and, with
matplotlib, PNG charts to ``--out``. Exit status: 0 when every answer was right,
1 when something FAILed (a wrong answer, an exception, a hang) or the suite
crashed; never anything for being slow.

As the script, this module is also where the ``__main__`` rows of the latency,
tiny and map workloads find their task, :func:`add_one`, defined at module level as a
user's script defines its own (see :mod:`._task_fns`).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import CONTESTANTS, WORKLOADS, BenchConfig, run_suite
from ._config import WORKLOAD_TITLES
from ._context import command_line
from ._measure import ABANDONED
from ._task_fns import FN_KINDS


# The tiny task as a script defines it, at module level in its own __main__
# (issue #11): cloudpickle sends it by value, pickle by reference to __main__,
# which a forkserver or spawn worker finds by running this module again as
# __mp_main__. Kept the same as _task_fns._SOURCE; no docstring, since that
# would travel by value too.
def add_one(x: int) -> int:
    return x + 1


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


#: The size options (their defaults depend on ``--quick``): flag, parser,
#: metavar and help (``None``: argparse's default).
_SIZE_OPTIONS: tuple[tuple[str, Callable[[str], object], str | None, str | None], ...] = (
    ("--tiny-tasks", int, None, "tiny one by one: the warm-up round's tasks (10000)"),
    ("--tiny-min-s", float, "S", "tiny one by one: fastest pool's run >= S s (0.5; 0: off)"),
    ("--map-tasks", int, None, None),
    ("--chunksizes", _ints, "N,N", "map chunk sizes (1,1000)"),
    ("--map-min-s", float, "S", "map, every chunk size: fastest pool's run >= S s (0.3; 0: off)"),
    ("--cpu-tasks-per-worker", int, None, None),
    ("--task-ms", float, None, "sequential ms of one CPU task (20)"),
    ("--io-tasks", int, None, None),
    ("--io-ms", float, None, "sleep of one I/O task (10)"),
    ("--payload-mb", float, None, "MB each way per payload task (4)"),
    ("--payload-tasks", int, None, None),
    ("--latency-trips", int, None, "round trips per round (1000)"),
    ("--latency-max-s", float, "S", "a pool whose trips took S s stops after 200 (3)"),
    ("--sweep-task-ms", _floats, "MS,MS", None),
    ("--scale-sizes", _ints, "N,N", "task counts (10000,100000,1000000)"),
    ("--scale-peer-max", int, None, "largest scale size for the stdlib pools (100000)"),
    ("--memory-tasks", int, None, "pending tasks in the memory probe"),
    ("--kill-tasks", int, None, None),
)


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    """The command line as a :class:`BenchConfig` (``--quick`` picks the base)."""
    p = _parser()
    return _config(p, p.parse_args(argv))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m procqueue.bench",
        description="procqueue next to the standard library and its peers, in one run.",
        epilog="workloads: " + "; ".join(f"{k}: {WORKLOAD_TITLES[k]}" for k in WORKLOADS),
    )
    _add_run_options(p)
    sizes = p.add_argument_group("sizes (defaults depend on --quick)")
    for flag, parse, metavar, help_text in _SIZE_OPTIONS:
        sizes.add_argument(flag, type=parse, metavar=metavar, help=help_text)
    return p


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Every option but the sizes: mode, pools, contestants, workloads, output."""
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, for a CI smoke run (under 2 minutes on 2 cores)",
    )
    p.add_argument("--workers", type=int, help="workers in every pool (default 2)")
    p.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        help="start method of every process pool that lets you choose (default fork)",
    )
    p.add_argument(
        "--extra-start-methods",
        type=_names,
        metavar="M,M",
        help="ProcessPoolExecutor and ProcQueue also run on these "
        "(default forkserver; '' for none)",
    )
    p.add_argument(
        "--task-fns",
        type=_names,
        metavar="K,K",
        help="the tiny task of the latency, tiny and map workloads: main (defined in __main__), "
        "importable (procqueue.bench._tasks.add_one); default both",
    )
    p.add_argument("--reps", type=int, help="timed rounds after the warm-up (>= 3; default 3)")
    p.add_argument(
        "--only",
        type=_names,
        metavar="KEY,KEY",
        help=f"contestants to run (default: all installed): {','.join(CONTESTANTS)}",
    )
    p.add_argument(
        "--skip", type=_names, metavar="KEY,KEY", default=(), help="contestants to leave out"
    )
    p.add_argument(
        "--workloads",
        type=_names,
        metavar="W,W",
        help=f"workloads to run (default all): {','.join(WORKLOADS)}",
    )
    p.add_argument("--out", type=Path, help="directory for .md/.json/.png (default bench-results)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG charts")
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds one run may take before it counts as hung (default 300)",
    )
    p.add_argument("--prefetch", type=int, help="procqueue prefetch (default: adaptive)")


def _config(p: argparse.ArgumentParser, a: argparse.Namespace) -> BenchConfig:
    """The base config of ``--quick`` or full, with every option given on top;
    a bad combination ends the program through ``p.error``."""
    cfg = BenchConfig.quick() if a.quick else BenchConfig.full()
    changes = {
        name: value
        for name, value in vars(a).items()
        if value is not None and name not in ("quick", "skip", "no_plots", "only")
    }
    if a.no_plots:
        changes["plots"] = False
    if a.only is not None or a.skip:
        only = a.only if a.only is not None else _all_keys(cfg, changes)
        changes["only"] = tuple(k for k in only if k not in a.skip)
    cfg = cfg.with_overrides(**changes)
    if cfg.reps < 3:
        p.error("--reps must be at least 3")
    if cfg.workers < 1:
        p.error("--workers must be at least 1")
    bad = set(cfg.workloads) - set(WORKLOADS)
    if bad:
        p.error(f"unknown workload(s): {', '.join(sorted(bad))}")
    bad = set(cfg.task_fns) - set(FN_KINDS)
    if bad or not cfg.task_fns:
        p.error(f"--task-fns takes {' and/or '.join(FN_KINDS)}")
    return cfg


def _all_keys(cfg: BenchConfig, changes: dict[str, object]) -> tuple[str, ...]:
    """Every contestant key for the start methods on the command line."""
    from ._contestants import contestant_table

    method = str(changes.get("start_method", cfg.start_method))
    extra = changes.get("extra_start_methods", cfg.extra_start_methods)
    assert isinstance(extra, tuple)
    return tuple(c.key for c in contestant_table(method, extra))


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    # The command as typed (``python -m procqueue.bench``, ``python
    # benchmarks/bench_core.py``); called from code, the equivalent one.
    command = command_line() if argv is None else [sys.executable, "-m", "procqueue.bench", *argv]
    result = run_suite(cfg, command)
    print(result.markdown(), flush=True)
    for path in result.write():
        logging.getLogger("procqueue.bench").info("wrote %s", path)
    return 1 if result.failed else 0


def cli() -> NoReturn:
    """Run :func:`main` on ``sys.argv`` and exit with its status."""
    status = main()
    if ABANDONED:
        # A pool whose shutdown hung was abandoned: its threads could keep the
        # interpreter from exiting, so leave without waiting for them.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    cli()
