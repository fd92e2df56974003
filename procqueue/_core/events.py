"""What goes into the scheduler (events) and what comes out (actions).

Events are reported by a transport (``procqueue._runtime.transport``) about a
worker *slot*; actions are what the runtime shell carries out for the
scheduler. Both are small immutable values; nothing here touches the OS.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .slots import KillReason

# --- events: transport -> scheduler -----------------------------------------------


class Started(NamedTuple):
    """A worker process now exists in ``slot`` (``pid`` is for display and
    for the error messages; the scheduler never signals it)."""

    slot: int
    pid: int


class Ready(NamedTuple):
    """The worker in ``slot`` said hello: it takes tasks now. ``error`` is set
    when the hello was wrong (another wire protocol version): a deterministic
    start-up failure."""

    slot: int
    error: str | None = None


class InitFailed(NamedTuple):
    """The worker's initializer raised (deterministic: it will again)."""

    slot: int
    detail: str


class Done(NamedTuple):
    """The head task of ``slot`` ended: ``ok`` with ``value``, or with the
    exception ``value`` (remote traceback text ``tb``). Times are the worker's
    wall clock. ``sent``: the value as its worker pickled it (opaque here),
    handed to dependents that take it so the shell can pass it on unopened;
    ``None`` where the shell has only ``value`` to pass."""

    slot: int
    task_id: int
    ok: bool
    value: Any
    tb: str
    started: float
    finished: float
    sent: Any = None


class Exited(NamedTuple):
    """The worker in ``slot`` is gone (reaped). ``exitcode`` as in
    ``multiprocessing``: negative means killed by that signal. ``unsent``:
    tasks handed to it whose batch never reached it (its pipe was already
    broken when the batch was written): they never started."""

    slot: int
    exitcode: int | None
    unsent: frozenset[int] = frozenset()


class StartFailed(NamedTuple):
    """No worker could be started in ``slot`` at all."""

    slot: int
    detail: str


class Memory(NamedTuple):
    """Resident memory of the worker's process tree in ``slot``, in bytes."""

    slot: int
    rss: int | None


class Progressed(NamedTuple):
    """The task ``task_id`` in ``slot`` called ``report_progress``."""

    slot: int
    task_id: int
    done: float
    total: float | None
    message: str


Event = Started | Ready | InitFailed | Done | Exited | StartFailed | Memory | Progressed

# --- actions: scheduler -> shell --------------------------------------------------


class StartWorker(NamedTuple):
    """Start a worker in ``slot``; report ``Ready``/``Exited`` or ``StartFailed``."""

    slot: int


class SendTasks(NamedTuple):
    """Hand these ``RUNNING`` records to the worker in ``slot``, in order."""

    slot: int
    tasks: list[Any]


class KillWorker(NamedTuple):
    """Kill the worker in ``slot`` (and its whole process tree); report ``Exited``."""

    slot: int
    reason: KillReason


class RetireWorker(NamedTuple):
    """Ask the idle worker in ``slot`` to exit cleanly; report ``Exited``."""

    slot: int


class ReadMemory(NamedTuple):
    """Measure these slots' memory (outside the engine lock); report ``Memory``."""

    slots: tuple[int, ...]


Action = StartWorker | SendTasks | KillWorker | RetireWorker | ReadMemory

#: How a settlement resolves a future: a value, an error, or a cancellation.
OK, ERROR, CANCEL = 0, 1, 2
