"""The seam between the runtime loop and wherever workers live.

A :class:`Transport` owns the workers of a queue, one per *slot*: it starts
them, hands them tasks, kills or retires them, measures them, and reports what
happens as :mod:`procqueue._core.events` values. The scheduler decides; the
transport only carries out and reports.

``local.LocalTransport`` is the first implementation: one OS process per slot,
two pipes, a sentinel, a lifeline (``local.py``). A remote transport (worker
nodes over Redis) implements the same methods with a slot meaning a worker
process on another machine: ``send`` pushes to a node's lease, ``kill`` posts a
cancellation the node's supervisor carries out, and its network reader feeds
events back through the :class:`Poller` (a wake-up fd or a socket).

Threading: every method runs in the coordinator thread, outside the engine
lock, except :meth:`Transport.figures`, which any thread may call (stats).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

from .._core.events import Event
from .._core.records import _TaskRecord

#: Called by the loop when a watched fd is ready; returns the events it read.
OnReady = Callable[[], list[Event]]


class Poller(abc.ABC):
    """What the runtime loop offers a transport: one combined wait."""

    @abc.abstractmethod
    def watch(self, fd: int, on_readable: OnReady) -> None:
        """Call ``on_readable`` whenever ``fd`` is readable (until :meth:`unwatch`)."""

    @abc.abstractmethod
    def watch_writable(self, fd: int, on_writable: OnReady) -> None:
        """Call ``on_writable`` once ``fd`` is writable (until :meth:`unwatch`)."""

    @abc.abstractmethod
    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (no error if it is not watched)."""

    @abc.abstractmethod
    def own_fds(self) -> tuple[int, ...]:
        """The loop's own fds (a forked worker closes them)."""


class Transport(abc.ABC):
    """Workers in slots ``0 .. num_workers - 1``, as the scheduler's actions ask."""

    @abc.abstractmethod
    def open(self, poller: Poller) -> None:
        """Get ready to start workers; the loop is running."""

    @abc.abstractmethod
    def start_worker(self, slot: int) -> list[Event]:
        """Start a worker in ``slot``: ``[Started]``, or ``[StartFailed]``.
        ``Ready``/``InitFailed``/``Exited`` follow through the poller."""

    @abc.abstractmethod
    def send(self, slot: int, tasks: Sequence[_TaskRecord]) -> None:
        """Hand ``tasks`` (in order) to the worker in ``slot``; one ``Done``
        each follows, in the same order, unless the worker dies first."""

    @abc.abstractmethod
    def kill(self, slot: int) -> None:
        """Kill the worker in ``slot`` and everything it started; ``Exited`` follows."""

    @abc.abstractmethod
    def retire(self, slot: int) -> None:
        """Ask the idle worker in ``slot`` to exit cleanly; ``Exited`` follows."""

    @abc.abstractmethod
    def read_memory(self, slot: int) -> Event:
        """A ``Memory`` reading of the worker in ``slot`` (may be slow)."""

    @abc.abstractmethod
    def figures(self, slot: int, pid: int | None) -> tuple[int | None, float | None]:
        """``(rss bytes, cpu %)`` of that worker for stats: cached, any thread."""

    @abc.abstractmethod
    def wait_all(self, grace: float) -> list[Event]:
        """Block until every worker has exited; kill those still alive after
        ``grace`` seconds. Returns the events read meanwhile (``Exited`` for each)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release everything (the loop is over; no worker is left)."""
