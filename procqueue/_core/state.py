"""The scheduler's state, and the two moves everything else builds on.

``Scheduler`` (``scheduler.py``) is built in layers, one concern a module:
``CoreState`` (this: records, heaps, slots, outboxes) <- ``Outcomes``
(``outcomes.py``: retry, fail, cancel, retention) <- ``Supervision``
(``supervisor.py``: worker slots: start, ready, exit, kill, limits, breaking)
<- ``Scheduler`` (admission, commands, events, timers, dispatch).
Pure: no OS calls and no clock; ``now`` is always handed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import PoolBrokenError
from .config import QueueConfig
from .deadletters import _DeadLetterStore
from .events import Action
from .heaps import _DelayedHeap, _ReadyHeap
from .limits import KeyLimits, Limiter
from .records import _ALLOWED, TaskState, TaskStatus, _TaskRecord
from .schedules import ScheduleEntry
from .slots import Slot
from .supervision import StartupGuard
from .tally import Tally

_RETRYING, _RUNNING = TaskState.RETRYING, TaskState.RUNNING


class CoreState:
    """Everything the scheduler knows. Invariants: a record is in ``heap`` iff
    it is ``PENDING`` (stale heap entries aside, skipped on pop); in
    ``delayed`` iff ``RETRYING`` or ``SCHEDULED``; in exactly one slot's ``inflight`` iff
    ``RUNNING``; ``tally`` counts every record of ``tasks`` (and evicted
    finals) by state."""

    def __init__(
        self,
        config: QueueConfig,
        *,
        now: float,
        rand: Callable[[], float],
        wall_offset: float = 0.0,
        bind_inputs: Callable[[Any, dict[int, Any]], Any] | None = None,
    ) -> None:
        self.config = config
        self.rand = rand
        #: ``(payload, inputs) -> payload``: a released dependent's payload with
        #: its upstream results in it, ``inputs`` being ``{id: (outcome, sent)}``
        #: (``sent``: see ``Done``). The codec is the shell's: the core never pickles.
        self.bind_inputs = bind_inputs
        #: Added to ``now`` to stamp records with wall-clock times.
        self.wall_offset = wall_offset
        self.tasks: dict[int, _TaskRecord] = {}
        self.heap = _ReadyHeap(self.tasks)
        self.delayed = _DelayedHeap()
        self.slots = [Slot(i) for i in range(config.num_workers)]
        self.tally = Tally(now)
        self.dlq = _DeadLetterStore(config.dead_letters)
        self.guard = StartupGuard(config.restart, config.num_workers)
        self.keys = KeyLimits(config.key_limits)
        # Limiters with parked tasks, and how many tasks are parked in all.
        self._blocked: set[Limiter] = set()
        self.parked = 0
        #: Recurring schedules by name (``schedules.py``).
        self.schedules: dict[str, ScheduleEntry] = {}
        #: Set once the pool cannot go on; every later submit raises it.
        self.broken: PoolBrokenError | None = None
        self.stopping = False
        self.cancel_pending = False
        self.stop_deadline: float | None = None
        #: Publish a status on every transition (someone subscribed).
        self.observed = False
        #: Publish each progress report (a progress bar watches), and the outbox.
        self.progress_watched = False
        self.progress_reports: list[tuple[int, Any]] = []
        # --- outboxes, emptied by the shell
        self.actions: list[Action] = []
        self.settlements: list[tuple[Any, int, Any]] = []
        self.statuses: list[TaskStatus] = []
        #: Records whose outcome the shell drops once their futures are settled.
        self.released: list[_TaskRecord] = []
        #: A task became final and ``max_pending`` is set: wake blocked submitters.
        self.space_freed = False
        # Dependencies: upstream records that ended, with their outcome, whose
        # dependents are still to be told (a worklist: chains are not recursion).
        self._finals: list[tuple[_TaskRecord, Any, Any]] = []
        self._cascading = False
        # Retention of claimed records; run-time means per callable (prefetch).
        self._finished: deque[int] = deque()
        self._mean_run: dict[bytes, float] = {}
        self._next_memory_check = now

    def _move(self, rec: _TaskRecord, new: TaskState) -> None:
        """The one place a task changes state; the counts follow."""
        old = rec.state
        if new.ordinal not in _ALLOWED[old.ordinal]:
            rec.move(new)  # raises, naming the task
        rec.state = new
        self.tally.move(old, new)
        if old is _RUNNING and rec.limit_key is not None:
            lim = self.keys.limiters[rec.limit_key]
            lim.running -= 1
            if lim.parked:
                self._blocked.add(lim)

    def _emit(self, rec: _TaskRecord) -> None:
        if self.observed:
            self.statuses.append(rec.snapshot())

    def make_evictable(self, task_id: int) -> None:
        """Retention: a finished record whose result was claimed joins the
        bounded FIFO of ``retain_finished`` records; unclaimed ones are kept
        (``keep_unclaimed``) so submit-all-then-gather never loses a result."""
        finished = self._finished
        finished.append(task_id)
        if len(finished) > self.config.retain_finished:  # one in, at most one out
            self.tasks.pop(finished.popleft(), None)

    def claim(self, task_id: int) -> None:
        """A caller took ``task_id``'s outcome: under ``keep_unclaimed``, its
        record joins retention's FIFO now (once; a wait or a timed-out
        ``result`` is no claim). A schedule's run, and every record without
        ``keep_unclaimed``, joined it when it ended."""
        rec = self.tasks.get(task_id)
        if rec is None or rec.claimed or not rec.state.is_final:
            return
        rec.claimed = True
        if self.config.keep_unclaimed and rec.fired_by is None:
            self.make_evictable(task_id)

    def _needs_workers(self) -> bool:
        """Whether a lost worker is replaced now. While stopping, only for
        tasks waiting in the heap; a retry that comes due later, or a task
        requeued from another worker, starts one on demand (``_dispatch``)."""
        return not self.stopping or bool(self.heap.live)

    def is_idle(self) -> bool:
        """Every task submitted so far is final."""
        return self.tally.unfinished == 0

    def take_actions(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions
