"""procqueue: run Python callables in parallel on supervised OS processes.

Two front doors over one engine:

* :class:`TaskQueue` for asyncio code;
* :class:`ProcQueue`, a ``concurrent.futures.Executor`` drop-in for scripts.
"""

from __future__ import annotations

from ._core.deadletters import DeadLetter
from ._core.limits import Concurrency, RateLimit
from ._core.records import AttemptError, TaskProgress, TaskState, TaskStatus
from ._frontdoor import DeadLetterQueue, result_of
from ._policy import RetryPolicy, WorkerLimits
from ._runtime._calls import refresh_function
from ._runtime.worker import report_progress
from ._schedules import Schedule
from .errors import (
    InsecureDashboardError,
    InvalidArgumentError,
    InvalidCallableError,
    MemoryLimitExceeded,
    MissingExtraError,
    OptionTypeError,
    PoolBrokenError,
    ProcQueueError,
    QueueClosedError,
    QueueFullError,
    QueueNotStartedError,
    RemoteTraceback,
    ResultSerializationError,
    SerializationError,
    SignatureError,
    TaskAbortedError,
    TaskCancelledError,
    TaskNotFoundError,
    TaskTimeoutError,
    Throttle,
    UnpicklableTaskError,
    UpstreamFailedError,
    WorkerCrashedError,
    WorkerStartupError,
)
from .executor import ProcQueue, task_id
from .stats import LatencySummary, QueueStats, WorkerStats
from .taskqueue import TaskQueue

__version__ = "0.1.0"

__all__ = [
    # front doors
    "ProcQueue",
    "TaskQueue",
    # values and snapshots
    "AttemptError",
    "Concurrency",
    "DeadLetter",
    "DeadLetterQueue",
    "LatencySummary",
    "QueueStats",
    "RateLimit",
    "RetryPolicy",
    "Schedule",
    "TaskProgress",
    "TaskState",
    "TaskStatus",
    "WorkerLimits",
    "WorkerStats",
    # functions
    "refresh_function",
    "report_progress",
    "result_of",
    "task_id",
    # errors
    "InsecureDashboardError",
    "InvalidArgumentError",
    "InvalidCallableError",
    "MemoryLimitExceeded",
    "MissingExtraError",
    "OptionTypeError",
    "PoolBrokenError",
    "ProcQueueError",
    "QueueClosedError",
    "QueueFullError",
    "QueueNotStartedError",
    "RemoteTraceback",
    "ResultSerializationError",
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
