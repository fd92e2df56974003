"""What every contestant's adapter speaks: the :class:`Pool` interface.

Every adapter is a :class:`Pool`. The hot paths (:meth:`Pool.run_all`,
:meth:`Pool.map`, :meth:`Pool.round_trip`) call the library directly, with no
wrapper object per task, so a contestant's figure is its own overhead and not
ours. The handle-level methods (:meth:`Pool.submit_many`, :meth:`Pool.wait`)
serve the workloads that must act between submission and collection (the
memory probe, the worker kill).

A method a library has no counterpart for raises :class:`Unsupported`; the
report shows ``n/a`` there.

The adapters live by where the library comes from: :mod:`._stdlib_pools` (the
in-process references and the standard library's pools), :mod:`._procqueue_pools`
(procqueue's two front doors) and :mod:`._peer_pools` (the optional peers);
:mod:`._contestants` names them as table rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

Call = tuple[Any, ...]
TaskFn = Callable[..., Any]

__all__ = ["Call", "Pool", "TaskFn", "Unsupported", "deadline_after", "time_left"]


class Unsupported(Exception):
    """The library has no API for this workload (reported as ``n/a``, not FAIL)."""


def time_left(deadline: float) -> float:
    """Seconds until ``deadline`` (a :func:`time.monotonic` time), never negative."""
    return max(0.0, deadline - time.monotonic())


def deadline_after(timeout: float) -> float:
    """The :func:`time.monotonic` time ``timeout`` seconds from now."""
    return time.monotonic() + timeout


class Pool:
    """One open pool of one contestant.

    ``start_method`` is what the pool really uses (read back from it where the
    library tells), not what was asked for.
    """

    start_method = "?"
    #: The key of the contestant this pool was opened for (``Contestant.open``
    #: sets it), for workloads whose size differs per contestant.
    contestant = ""
    #: Whether the pool runs tasks in other processes (warm-up waits for each).
    is_process_pool = True
    #: Whether ``run_all`` really submits one call at a time, a handle each.
    one_by_one = True
    #: Whether the library pickles a ``__main__`` function by value
    #: (cloudpickle), so that its workers need not find it in their own
    #: ``__main__`` (see :mod:`._task_fns`).
    pickles_main_by_value = False

    def run_all(self, fn: TaskFn, calls: Sequence[Call], timeout: float) -> list[Any]:
        """Submit every call one by one (a handle each), then collect in order."""
        handles = self.submit_many(fn, calls)
        deadline = deadline_after(timeout)
        return [self.wait(h, time_left(deadline)) for h in handles]

    def map(self, fn: TaskFn, items: Sequence[Any], chunksize: int, timeout: float) -> list[Any]:
        """The library's own ``map`` over one-argument calls, with ``chunksize``."""
        raise Unsupported("no map")

    def round_trip(self, fn: TaskFn, args: Call, timeout: float) -> Any:
        """Submit one call and wait for its result."""
        return self.wait(self.submit_many(fn, [args])[0], timeout)

    def round_trips(
        self, fn: TaskFn, calls: Sequence[Call], timeout: float
    ) -> list[tuple[Any, float]]:
        """Each call's round trip in turn: its result and its seconds from
        submit to result, as the caller's code sees them. ``timeout`` bounds
        the whole run (a hang guard, outside the timed calls)."""
        deadline = deadline_after(timeout)
        trips = []
        for args in calls:
            left = time_left(deadline)
            t0 = time.perf_counter()
            value = self.round_trip(fn, args, left)
            trips.append((value, time.perf_counter() - t0))
        return trips

    def submit_many(self, fn: TaskFn, calls: Sequence[Call]) -> list[Any]:
        """Submit every call; return the library's raw handles (futures, ids)."""
        raise Unsupported("no per-task handle")

    def wait(self, handle: Any, timeout: float) -> Any:
        """The result behind one handle from :meth:`submit_many`."""
        raise Unsupported("no per-task handle")

    def attempts(self, handle: Any) -> int | None:
        """Attempts the task behind ``handle`` took (procqueue only)."""
        return None

    def restarts(self) -> int | None:
        """Worker replacements so far (procqueue only: ``get_stats().workers``)."""
        return None

    def cancel_pending(self) -> None:
        """Drop queued work and stop (the memory probe ends this way)."""
        self.close(broken=True)

    def close(self, *, broken: bool = False) -> None:
        """Shut the pool down, waiting for its workers. ``broken``: work may be
        lost or the pool may be wedged, so terminate instead of draining."""
