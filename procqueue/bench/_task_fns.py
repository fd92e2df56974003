"""The tiny task as a script keeps it (in ``__main__``) and as a library keeps it.

A script defines its task functions in its own ``__main__``, and they travel
differently from an importable function (issue #11, ``BENCHMARKS.md`` rule 5):

* cloudpickle (procqueue, loky, joblib) sends a ``__main__`` function **by
  value**, its code with it, on every submit;
* pickle (ProcessPoolExecutor, multiprocessing.Pool, pebble, mpire) sends it
  **by reference**, as ``__main__.add_one``, and the worker looks it up in its
  own ``__main__``: inherited as it was under fork, re-imported from the main
  module (as ``__mp_main__``) under forkserver and spawn.

Run as ``python -m procqueue.bench``, the suite's script :mod:`._cli` is that
``__main__`` (``__main__.py`` hands over to it): it defines ``add_one`` at
module level, as a script does, and a forkserver or spawn worker runs it again
as ``__mp_main__`` and finds it there. Run from code
(``run_suite`` under pytest, say), ``__main__`` is another program's module, so
the function is compiled into it: its ``__module__`` is ``"__main__"`` and
its globals are that module's, which a forked worker inherits. A forkserver or
spawn worker re-imports the real main module and does not see it; there the
pools that pickle by reference sit the ``__main__`` rows out (``n/a``, with the
reason) rather than FAIL. Nothing is faked: where a row runs, every contestant
runs this same function object, pickled the way its library pickles it.

The importable case is :func:`procqueue.bench._tasks.add_one`: a small
by-reference pickle for every library and every start method.
"""

from __future__ import annotations
import __future__

import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import _tasks
from ._pool import Pool, Unsupported

__all__ = ["FN_KINDS", "TaskFns", "task_fns"]

#: The module that defines the tiny task as a script would, when it runs as ``__main__``.
BENCH_MAIN = "procqueue.bench._cli"
#: The same function for a ``__main__`` that is not :data:`BENCH_MAIN`; kept
#: identical to the one in ``procqueue/bench/_cli.py`` (annotations as
#: strings, as there; no docstring, which would travel by value too).
_SOURCE = "def {name}(x: int) -> int:\n    return x + 1\n"
#: Names tried in a foreign ``__main__``, so that one of its own is never replaced.
_NAMES = ("add_one", "procqueue_bench_add_one")

#: ``--task-fns`` values: the ``__main__`` function, the importable one.
FN_KINDS = ("main", "importable")


@dataclass(frozen=True)
class TaskFns:
    """The tiny task one row of the latency, tiny and map tables runs, for every contestant."""

    #: ``main`` or ``importable``: the suffix of the workload key (``tiny:main``).
    kind: str
    #: How the report names it.
    label: str
    add_one: Callable[[int], int]
    #: Where it is defined, in words, for the table's title.
    where: str
    #: Whether a worker that re-imports the main module (forkserver, spawn)
    #: finds it by name; always true of an importable function.
    reimportable: bool

    def check_runs_on(self, pool: Pool) -> None:
        """Raise :class:`Unsupported` where ``pool`` could not resolve the function:
        a pickle by reference to an injected ``__main__`` function, in a worker
        that was not forked from this process."""
        if self.reimportable or not pool.is_process_pool or pool.pickles_main_by_value:
            return
        if pool.start_method == "fork":
            return
        raise Unsupported(
            f"the __main__ function was defined at run time (the suite was not started as "
            f"python -m procqueue.bench), and a {pool.start_method} worker re-imports the main "
            "module, which does not define it"
        )


def _importable_fns() -> TaskFns:
    # Read at call time, so that a test can patch _tasks.add_one.
    return TaskFns(
        "importable",
        "importable fn",
        _tasks.add_one,
        "procqueue.bench._tasks.add_one: pickled by reference by every library",
        True,
    )


#: Functions compiled into a foreign ``__main__``, by name (reused run after run).
_defined: dict[str, Callable[[int], int]] = {}


def _main_fns() -> TaskFns:
    main = sys.modules["__main__"]
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name == BENCH_MAIN:
        fn: Callable[[int], int] = main.add_one
        where = "defined in procqueue/bench/_cli.py, run as the script"
        reimportable = True
    else:
        fn = _define_in(main)
        where = f"compiled into this run's __main__ ({getattr(main, '__file__', '?')})"
        reimportable = False
    assert fn.__module__ == "__main__", fn.__module__
    return TaskFns(
        "main",
        "`__main__` fn",
        fn,
        f"__main__.{fn.__name__}, {where}: cloudpickle sends it by value, pickle by "
        "reference to __main__",
        reimportable,
    )


def _define_in(main: ModuleType) -> Callable[[int], int]:
    """``add_one`` compiled with ``main``'s globals, under the first free name."""
    for name in _NAMES:
        have = getattr(main, name, None)
        if have is not None and have is _defined.get(name):
            return _defined[name]
        if have is None:
            code = compile(
                _SOURCE.format(name=name),
                "<procqueue.bench: the tiny task, defined in __main__>",
                "exec",
                flags=__future__.annotations.compiler_flag,
                dont_inherit=True,
            )
            namespace: dict[str, Any] = main.__dict__
            exec(code, namespace)  # our own constant source, compiled as __main__ code
            fn: Callable[[int], int] = namespace[name]
            _defined[name] = fn
            return fn
    raise RuntimeError(f"__main__ already defines {' and '.join(_NAMES)}")


def task_fns(kinds: tuple[str, ...]) -> list[TaskFns]:
    """The tiny task in each of ``kinds`` (``main``, ``importable``), in that order."""
    out = []
    for kind in kinds:
        if kind == "main":
            out.append(_main_fns())
        elif kind == "importable":
            out.append(_importable_fns())
        else:
            raise ValueError(f"unknown task function kind {kind!r}; known: {', '.join(FN_KINDS)}")
    return out
