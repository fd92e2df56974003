"""The procqueue error tree.

Every error procqueue raises on its own account derives from :class:`ProcQueueError`.
Where a standard-library class already means the same thing, the procqueue class
also derives from it, so ``except`` clauses written for
``concurrent.futures.ProcessPoolExecutor`` keep working:

* a crashed worker  -> ``concurrent.futures.process.BrokenProcessPool``
* a task timeout    -> ``TimeoutError``
* a cancelled task  -> ``concurrent.futures.CancelledError``
* bad arguments     -> ``TypeError`` / ``ValueError``
* unpicklable data  -> ``pickle.PicklingError``
* unknown task id   -> ``KeyError``

Errors raised by a task's own code are re-raised as they are, with the worker's
traceback attached as ``__cause__`` (a :class:`RemoteTraceback`), exactly as the
standard library does.
"""

from __future__ import annotations

import math
import pickle
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "InsecureDashboardError",
    "InvalidArgumentError",
    "InvalidCallableError",
    "MemoryLimitExceeded",
    "MissingExtraError",
    "PoolBrokenError",
    "ProcQueueError",
    "QueueClosedError",
    "QueueFullError",
    "QueueNotStartedError",
    "RemoteTraceback",
    "ResultSerializationError",
    "OptionTypeError",
    "SerializationError",
    "SignatureError",
    "TaskAbortedError",
    "TaskCancelledError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "Throttle",
    "UnpicklableTaskError",
    "UpstreamFailedError",
    "WorkerCrashedError",
    "WorkerStartupError",
]


class ProcQueueError(Exception):
    """Root of every error procqueue raises on its own account."""


# --- misuse of the API: raised at the call that caused it -------------------------


class InvalidArgumentError(ProcQueueError, ValueError):
    """An argument has the right type but a value procqueue cannot accept.

    Raised at the call itself (``num_workers=0``, ``max_retries=-1``, a negative
    timeout). Nothing was queued; fix the argument and call again.
    """


class InvalidCallableError(ProcQueueError, TypeError):
    """``submit`` (or ``map``, or an ``initializer``) got something that is not
    callable. Nothing was queued."""


class OptionTypeError(ProcQueueError, TypeError):
    """An option or argument has the wrong type (``num_workers=2.5``,
    ``priority="high"``, ``retry=3``). Raised at the call itself; nothing was
    queued or started. Fix the type and call again."""


class MissingExtraError(ProcQueueError, ImportError):
    """A feature needs an optional package that is not installed (cron
    schedules need ``cronsim``). The message names the extra to install, e.g.
    ``pip install 'procqueue[cron]'``."""


class QueueNotStartedError(ProcQueueError, RuntimeError):
    """The asyncio queue was used before ``await queue.start()``."""


class QueueClosedError(ProcQueueError, RuntimeError):
    """The queue is stopping or stopped (closed by you); it takes no new work.

    Same meaning as the ``RuntimeError('cannot schedule new futures after
    shutdown')`` of the standard library, which it subclasses.
    """


class TaskNotFoundError(ProcQueueError, KeyError):
    """No task with this id: it never existed, or it finished long enough ago that
    the bounded retention (``retain_finished``) dropped its record."""


class SerializationError(ProcQueueError, pickle.PicklingError, TypeError):
    """The callable or its arguments cannot be pickled with cloudpickle.

    Raised by ``submit`` itself; the task was not queued. The message names what
    failed. Typical causes: open files, sockets, locks, generators. Also a
    ``TypeError``, as pickle's own "cannot pickle '_thread.lock' object" is
    (what ``ProcessPoolExecutor`` raises from ``result()``).
    """


# --- a task ended badly: set as that task's error -----------------------------------


class SignatureError(ProcQueueError):
    """A blob read from a Redis broker has a missing, malformed or wrong
    signature (tampered, unsigned, or signed with a key this process does not
    hold). It was not unpickled. A task that fails this check is dead-lettered
    with the reason; a result that fails it raises on the client."""


class ResultSerializationError(ProcQueueError, pickle.PicklingError, TypeError):
    """The task ran, but its return value could not be pickled in the worker (or
    unpickled in the coordinator). The task is failed; the pool goes on."""


class UnpicklableTaskError(ProcQueueError):
    """The task raised an exception that cannot cross the process boundary
    (unpicklable, or whose ``__init__`` cannot be re-run when unpickled).

    Carries what could be saved: :attr:`exc_type` (qualified name), the message
    and the remote traceback text (as ``__cause__``).
    """

    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message


class MemoryLimitExceeded(ProcQueueError, MemoryError):
    """The worker running this task (with its child processes) grew past the
    hard memory limit (``WorkerLimits.memory_hard``): it was killed and replaced.
    Retried if retries remain. ``rss`` is the size measured, in bytes."""

    def __init__(self, message: str, *, rss: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.rss = rss
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_memory, (str(self), self.rss, self.limit))


def _rebuild_memory(message: str, rss: int | None, limit: int | None) -> MemoryLimitExceeded:
    return MemoryLimitExceeded(message, rss=rss, limit=limit)


class QueueFullError(ProcQueueError, TimeoutError):
    """``submit`` waited ``timeout`` seconds for room under ``max_pending`` and
    found none. Nothing was queued."""


class TaskTimeoutError(ProcQueueError, TimeoutError):
    """The attempt ran longer than its ``timeout``: its worker (and the worker's
    child processes) were killed and replaced. Retried if retries remain."""


class TaskAbortedError(ProcQueueError):
    """The task raised ``KeyboardInterrupt``, ``SystemExit`` (``sys.exit()``),
    ``asyncio.CancelledError`` or another ``BaseException`` that is not an
    ``Exception``. Raised by the asyncio front door (``TaskQueue``) in place of
    the original, which is its ``__cause__``: asyncio re-raises those classes
    out of the event loop, so letting them through would stop the caller's
    program because of one task. The task's status keeps the original type
    name (``builtins.SystemExit``). ``ProcQueue`` futures re-raise the original,
    as ``ProcessPoolExecutor`` does.
    """

    def __init__(self, message: str, exc_type: str = "") -> None:
        super().__init__(message)
        self.exc_type = exc_type

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.exc_type))


class Throttle(ProcQueueError):
    """Raise it in a task to say "not now" (an HTTP 429, say): the task goes
    back to wait ``retry_after`` seconds without using an attempt and without
    counting as a failure, at most ``max_throttles`` times (20 by default,
    per task). After that, a ``Throttle`` is an ordinary failed attempt: it is
    retried by the task's retry policy, and the task fails with it once that
    policy gives up.

    >>> raise procqueue.Throttle(retry_after=2.5)   # doctest: +SKIP
    """

    def __init__(self, retry_after: float = 1.0, message: str = "") -> None:
        seconds = float(retry_after)
        if not 0 <= seconds < math.inf:  # NaN fails too; inf would stall the queue's timers
            raise InvalidArgumentError(
                f"Throttle(retry_after=...) must be a finite number of seconds >= 0, "
                f"got {retry_after!r}"
            )
        super().__init__(message or f"throttled: retry after {retry_after}s")
        self.retry_after = seconds

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.retry_after, str(self)))


class UpstreamFailedError(ProcQueueError):
    """A task this one depends on (``after=``, ``result_of``) failed for good,
    so this one never ran (trigger ``all_success``, the default). Names the
    upstream task (``upstream_id``); its error is ``__cause__``. Failure
    propagates: the dependents of this task end the same way."""

    def __init__(self, message: str, upstream_id: int = -1) -> None:
        super().__init__(message)
        self.upstream_id = upstream_id

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.upstream_id))


class TaskCancelledError(ProcQueueError, CancelledError):
    """The task was cancelled (by ``cancel``, or by stopping with
    ``cancel_pending=True``) before it could finish."""


class PoolBrokenError(ProcQueueError, BrokenProcessPool):
    """The pool as a whole cannot go on (closed by something outside your tasks).

    Every task still queued is failed with this error and the queue refuses new
    work. The usual cause is :class:`WorkerStartupError`.
    """


class WorkerCrashedError(PoolBrokenError):
    """The worker process running this task died: segmentation fault,
    ``os._exit``, SIGKILL from outside, the kernel's OOM killer.

    Only the task the worker was running gets this error (retried if retries
    remain); a replacement worker is started and the pool goes on. It subclasses
    ``BrokenProcessPool`` so ``except`` clauses written for the standard library
    still catch it, but unlike there, the pool is *not* broken.
    """

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        exitcode: int | None = None,
        task_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.task_id = task_id

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crash, (str(self), self.pid, self.exitcode, self.task_id))


def _rebuild_crash(
    message: str, pid: int | None, exitcode: int | None, task_id: int | None
) -> WorkerCrashedError:
    return WorkerCrashedError(message, pid=pid, exitcode=exitcode, task_id=task_id)


class WorkerStartupError(PoolBrokenError):
    """Workers keep dying before they can take a task (the ``initializer``
    raised, a module is missing, the interpreter cannot start).

    Rather than respawn forever, the queue gives up: pending tasks fail with this
    error and new submissions are refused. The message carries the first
    failure's traceback or exit code.
    """


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker.

    Attached as ``__cause__`` of the re-raised exception, so that printing it shows
    where in the worker it happened (the stdlib does the same).
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class InsecureDashboardError(ProcQueueError, ValueError):
    """The dashboard was asked to listen on an address other than loopback
    (``127.0.0.1``, ``::1``, ``localhost``) without a ``token``: anyone who can
    reach that address could read task arguments and retry or purge tasks.
    Nothing was bound. Pass ``token=...`` (``secrets.token_urlsafe()``), or
    bind ``127.0.0.1`` and reach it through an SSH tunnel or a proxy."""


def _safe_str(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when a task's exception class makes that
    raise: the coordinator must never run user code that can take it down."""
    try:
        return str(exc)
    except BaseException as e:  # its __str__ is user code
        return f"<{type(exc).__name__}: str() raised {type(e).__name__}>"
