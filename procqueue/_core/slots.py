"""Worker slots as the scheduler sees them: states, why a worker was stopped,
and what each slot holds.

A *slot* is a place for one worker. For the local transport it is one OS
process; for a remote transport it can be a process on another machine. The
scheduler never sees a process: only a slot index, an opaque ``pid`` for
display, and the events the transport reports.
"""

from __future__ import annotations

import enum
from collections import deque

from .records import _TaskRecord

__all__ = ["KillReason", "WorkerState", "describe_exit"]


class WorkerState(str, enum.Enum):
    """Life of the worker in one slot."""

    STOPPED = "stopped"
    """No worker: never started, exited and not replaced yet, or idle-exited."""
    STARTING = "starting"
    """Started; waiting for its hello (its initializer may still be running)."""
    READY = "ready"
    """Serving: takes tasks up to ``1 + prefetch`` at a time."""
    STOPPING = "stopping"
    """Told to exit, or being killed; takes no task. Its exit is awaited."""

    def __str__(self) -> str:
        return self.value


_WORKER_MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STOPPED: frozenset({WorkerState.STARTING}),
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.STOPPING, WorkerState.STOPPED}),
    WorkerState.READY: frozenset({WorkerState.STOPPING, WorkerState.STOPPED}),
    WorkerState.STOPPING: frozenset({WorkerState.STOPPED}),
}


class KillReason(str, enum.Enum):
    """Why the scheduler stopped a worker; read when its exit is reported to
    settle what it held."""

    TIMEOUT = "timeout"
    """Its head task overran its timeout; that task gets ``TaskTimeoutError``."""
    MEMORY = "memory"
    """Over the hard memory limit; the head task gets ``MemoryLimitExceeded``."""
    CANCEL = "cancel"
    """A task it held was cancelled while running; that task ends cancelled."""
    STOP = "stop"
    """The stop deadline passed: everything it held ends cancelled."""
    RECYCLE = "recycle"
    """Ran its quota of tasks, or grew past the soft memory limit; replaced."""
    IDLE = "idle"
    """Idle past ``idle_timeout``; its slot stays empty until work arrives."""
    BROKEN = "broken"
    """The pool broke; what it held was already failed."""
    SHUTDOWN = "shutdown"
    """The queue has stopped; every worker leaves."""

    def __str__(self) -> str:
        return self.value


class Slot:
    """One worker slot: the scheduler's whole view of the worker in it.

    Invariants: ``inflight`` is empty unless the state is ``READY`` or
    ``STOPPING``; its first record is the one executing (workers run their
    tasks in order); each record in it has ``rec.slot == index`` and is
    ``RUNNING``; ``deadline`` is set only while that head has a timeout.
    """

    __slots__ = (
        "index",
        "state",
        "pid",
        "inflight",
        "deadline",
        "kill",
        "kill_target",
        "kill_error",
        "tasks_done",
        "dispatched",
        "retiring",
        "idle_since",
        "restarts",
        "recycled",
        "init_error",
        "respawn_at",
        "cancelled",
        "cancel_all",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = WorkerState.STOPPED
        self.pid: int | None = None
        self.inflight: deque[_TaskRecord] = deque()
        self.deadline: float | None = None
        self.kill: KillReason | None = None
        # For TIMEOUT/MEMORY/CANCEL: the task the kill was aimed at, and its error.
        self.kill_target: _TaskRecord | None = None
        self.kill_error: BaseException | None = None
        self.tasks_done = 0
        # Tasks handed to the current worker in its life (max_tasks_per_child).
        self.dispatched = 0
        # Takes no more tasks; replaced once those it holds are done.
        self.retiring = False
        self.idle_since = 0.0
        # Replacements after a crash, a kill or a failed start / planned ones.
        self.restarts = 0
        self.recycled = 0
        self.init_error: str | None = None
        # Waiting out a restart backoff: start again at this time.
        self.respawn_at: float | None = None
        # Kills add up: tasks cancelled while it is dying end cancelled whatever
        # the first reason was; after a STOP/SHUTDOWN kill, everything it holds does.
        self.cancelled: set[int] = set()
        self.cancel_all = False

    def move(self, new: WorkerState) -> None:
        if new not in _WORKER_MOVES[self.state]:
            raise RuntimeError(f"worker slot {self.index}: {self.state.value} -> {new.value}")
        self.state = new

    def begin(self, pid: int | None, now: float) -> None:
        """A new worker was started in this slot."""
        self.move(WorkerState.STARTING)
        self.pid = pid
        self.deadline = None
        self.kill = None
        self.kill_target = None
        self.kill_error = None
        self.tasks_done = 0
        self.dispatched = 0
        self.retiring = False
        self.idle_since = now
        self.init_error = None
        self.respawn_at = None
        self.cancelled = set()
        self.cancel_all = False

    @property
    def serving(self) -> bool:
        """Takes new tasks now."""
        return self.state is WorkerState.READY and not self.retiring


def describe_exit(exitcode: int | None) -> str:
    """Readable exit status: ``"exit code 3"``, ``"killed by signal 9 (SIGKILL)"``."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        return _signal_text(-exitcode)
    return f"exit code {exitcode}"


def _signal_text(signum: int) -> str:
    names = {
        1: "SIGHUP",
        2: "SIGINT",
        4: "SIGILL",
        6: "SIGABRT",
        7: "SIGBUS",
        8: "SIGFPE",
        9: "SIGKILL",
        11: "SIGSEGV",
        13: "SIGPIPE",
        15: "SIGTERM",
    }
    name = names.get(signum, "unknown signal")
    hint = ""
    if signum == 11:
        hint = " - a segmentation fault in the task"
    elif signum == 9:
        hint = " - killed from outside, or by the kernel's OOM killer"
    return f"killed by signal {signum} ({name}){hint}"
