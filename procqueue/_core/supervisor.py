"""Worker slots: starting, hello, exit, kills, retirement, memory limits, and
breaking the pool when workers cannot start (see ``supervision.py`` for the
start-up policy)."""

from __future__ import annotations

import logging

from ..errors import MemoryLimitExceeded, PoolBrokenError, WorkerCrashedError, WorkerStartupError
from .dependencies import Dependencies
from .events import ERROR, KillWorker, RetireWorker, StartWorker
from .records import TaskState, _TaskRecord
from .slots import KillReason, Slot, WorkerState, describe_exit

_log = logging.getLogger("procqueue.coordinator")

_PENDING, _FAILED = TaskState.PENDING, TaskState.FAILED
_STARTING, _READY, _STOPPING = WorkerState.STARTING, WorkerState.READY, WorkerState.STOPPING
_STOPPED = WorkerState.STOPPED


class Supervision(Dependencies):
    """What happens to worker slots, and to the tasks a lost worker held."""

    def _on_ready(self, slot: Slot, error: str | None, now: float) -> None:
        if slot.state is not _STARTING:
            return
        if error is not None:
            slot.init_error = error
            self._kill(slot, KillReason.BROKEN)
            self._start_failure(slot, error, now)
            return
        slot.move(_READY)
        slot.idle_since = now
        self.guard.worker_ready()
        _log.debug("worker %s (slot %d) ready", slot.pid, slot.index)

    def _on_memory(self, slot: Slot, rss: int | None) -> None:
        limits = self.config.limits
        if rss is None or slot.state is not _READY:
            return
        if limits.memory_hard is not None and rss > limits.memory_hard and slot.inflight:
            rec = slot.inflight[0]
            _log.warning(
                "worker %s uses %d MB, over the hard limit of %d MB, running task %d; killing it",
                slot.pid,
                rss >> 20,
                limits.memory_hard >> 20,
                rec.task_id,
            )
            err = MemoryLimitExceeded(
                f"task {rec.task_id} ({rec.name}): worker {slot.pid} reached {rss >> 20} MB, "
                f"over the hard limit of {limits.memory_hard >> 20} MB",
                rss=rss,
                limit=limits.memory_hard,
            )
            self._kill(slot, KillReason.MEMORY, rec, err)
        elif limits.memory_soft is not None and rss > limits.memory_soft and not slot.retiring:
            slot.retiring = True
            _log.info(
                "worker %s uses %d MB, over the soft limit of %d MB; recycling it",
                slot.pid,
                rss >> 20,
                limits.memory_soft >> 20,
            )
            self._check_recycle(slot)

    def _on_exit(
        self, index: int, exitcode: int | None, now: float, unsent: frozenset[int] = frozenset()
    ) -> None:
        """A worker is gone: settle what it held, then refill its slot (or not).
        ``unsent``: held tasks whose batch never reached it (see ``Exited``)."""
        slot = self.slots[index]
        if slot.state is _STOPPED:
            return
        was_starting = slot.state is _STARTING
        held = list(slot.inflight)
        slot.inflight.clear()
        why = slot.kill
        pid = slot.pid
        slot.move(_STOPPED)
        slot.deadline = None
        for rec in held:
            rec.slot = -1
        if slot.cancel_all:
            for rec in held:
                self._cancel_running(rec, now)
        elif held:
            self._settle_held(slot, held, pid, exitcode, now, unsent)
        elif why is None and not self.stopping and not was_starting:
            _log.warning("idle worker %s died (%s)", pid, describe_exit(exitcode))
        if was_starting and why is None and not self._startup_death(slot, exitcode, now):
            return
        if why in (KillReason.IDLE, KillReason.SHUTDOWN, KillReason.BROKEN) or slot.respawn_at:
            return  # IDLE: started again when work arrives; backoff: by tick
        if self.broken is None and self._needs_workers():
            if why is KillReason.RECYCLE:
                slot.recycled += 1
            else:
                slot.restarts += 1
            self._start(slot, now)

    def _settle_held(
        self,
        slot: Slot,
        held: list[_TaskRecord],
        pid: int | None,
        code: int | None,
        now: float,
        unsent: frozenset[int] = frozenset(),
    ) -> None:
        """The head was executing; the rest never started. A kill aimed at a task
        that finished meanwhile (its result came first) blames nobody, nor does
        a death that came before the head's batch could reach the worker (an
        idle worker killed just as it was handed work: ``unsent``)."""
        why = slot.kill
        head = held[0]
        target = slot.kill_target if why is not None else head
        if why is None and head.task_id in unsent:
            target = None
        for rec in held:
            if rec.task_id in slot.cancelled:
                self._cancel_running(rec, now)
            elif rec is not target:
                self._requeue(rec, now)
            elif why is None:
                how = describe_exit(code)
                _log.warning("worker %s died (%s) while running task %d", pid, how, rec.task_id)
                err = WorkerCrashedError(
                    f"worker {pid} died ({how}) while running task {rec.task_id} ({rec.name})",
                    pid=pid,
                    exitcode=code,
                    task_id=rec.task_id,
                )
                self._attempt_failed(rec, err, pid, code, "", now)
            elif rec is head and slot.kill_error is not None:
                self._attempt_failed(rec, slot.kill_error, pid, code, "", now)
            else:
                self._requeue(rec, now)

    def _startup_death(self, slot: Slot, exitcode: int | None, now: float) -> bool:
        """A worker died before its hello, not by our hand. False if the pool broke."""
        if exitcode is not None and exitcode < 0 and slot.init_error is None:
            backoff = self.guard.killed(now)
            how = describe_exit(exitcode)
            if backoff is None:
                self._break(
                    WorkerStartupError(
                        f"{self.guard.budget + 1} workers were killed while starting "
                        f"within {self.guard.policy.period:g}s, none came up; the last: {how}"
                    ),
                    now,
                )
                return False
            _log.warning(
                "worker %s was killed while starting (%s); restarting it %s",
                slot.pid,
                how,
                f"in {backoff:.2f}s" if backoff else "at once",
            )
            if backoff > 0 and self.broken is None and self._needs_workers():
                slot.restarts += 1
                slot.respawn_at = now + backoff
            return True
        detail = slot.init_error or describe_exit(exitcode)
        return self._start_failure(slot, detail, now)

    def _start_failure(self, slot: Slot, detail: str, now: float) -> bool:
        """A deterministic start-up failure. False if the pool broke."""
        _log.error("worker %s failed to start: %s", slot.pid, detail)
        if self.guard.failed():
            self._break(
                WorkerStartupError(
                    f"{self.guard.failures} workers in a row died before they could take "
                    f"a task; the last cause: {detail}"
                ),
                now,
            )
            return False
        return True

    def _on_start_failed(self, slot: Slot, detail: str, now: float) -> None:
        # Cannot even start a process (no ``if __name__ == "__main__":`` guard under
        # spawn/forkserver, fd or process limits): a start-up failure.
        slot.move(_STOPPED)
        _log.error("could not start a worker: %s", detail)
        if self.guard.failed():
            self._break(
                WorkerStartupError(
                    f"could not start a worker process ({self.guard.failures} tries): {detail}"
                ),
                now,
            )
        elif self._needs_workers():
            # Often transient (EAGAIN, out of fds): try again after a short
            # backoff rather than three times within one step.
            p = self.guard.policy
            slot.respawn_at = now + p.backoff_base * 2.0 ** (self.guard.failures - 1)

    def _start(self, slot: Slot, now: float) -> None:
        slot.begin(None, now)
        self.actions.append(StartWorker(slot.index))

    def _kill(
        self,
        slot: Slot,
        reason: KillReason,
        target: _TaskRecord | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Kill a worker's process tree on purpose; ``reason`` decides, once it
        has exited, what happens to the tasks it held."""
        if slot.state is _STOPPED:
            return
        if reason is KillReason.CANCEL and target is not None:
            slot.cancelled.add(target.task_id)
        elif reason is KillReason.STOP or reason is KillReason.SHUTDOWN:
            slot.cancel_all = True
        if slot.kill is None:
            slot.kill, slot.kill_target, slot.kill_error = reason, target, error
        if slot.state is not _STOPPING:
            slot.move(_STOPPING)
        self.actions.append(KillWorker(slot.index, reason))

    def _retire(self, slot: Slot, reason: KillReason) -> None:
        """Ask an idle worker to exit cleanly (``RECYCLE``: replaced at once;
        ``IDLE``: its slot stays empty until work arrives)."""
        slot.kill = reason
        slot.move(_STOPPING)
        slot.deadline = None
        self.actions.append(RetireWorker(slot.index))

    def _check_recycle(self, slot: Slot) -> None:
        """After a result: retire the worker if it ran its quota of tasks or is
        marked retiring (it finishes what it holds first)."""
        quota = self.config.limits.max_tasks_per_child
        if not slot.retiring and quota is not None and slot.dispatched >= quota:
            slot.retiring = True
            _log.debug("worker %s ran %d tasks; recycling it", slot.pid, slot.dispatched)
        if slot.retiring and not slot.inflight and slot.state is _READY:
            self._retire(slot, KillReason.RECYCLE)

    def _break(self, error: PoolBrokenError, now: float) -> None:
        """The pool cannot go on: fail everything not final, refuse new work."""
        if self.broken is not None:
            return
        _log.error("procqueue pool broken: %s", error)
        self.broken = error
        for rec in self._take_queued():
            if not rec.state.is_final:
                self._end(rec, _FAILED, error, now, ERROR)
        for slot in self.slots:
            for rec in list(slot.inflight):
                rec.attempts -= 1
                rec.slot = -1
                self._move(rec, _PENDING)
                self._end(rec, _FAILED, error, now, ERROR)
            slot.inflight.clear()
            slot.respawn_at = None
            slot.deadline = None
            self._kill(slot, KillReason.BROKEN)
        if not self.stopping:
            self.stopping = self.cancel_pending = True
