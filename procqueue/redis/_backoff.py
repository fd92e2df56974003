"""How a node treats Redis trouble: what it retries (Redis away, or refusing
every write for a while: OOM under ``noeviction``, READONLY during a
failover, BUSY, LOADING) and how long it waits between tries. The node's
threads (claim, report, renew, heartbeat) share this policy, so a node
outlives a failover or a full server instead of dying with it.
"""

from __future__ import annotations

import logging
import threading
import time

_log = logging.getLogger("procqueue.node")


class Backoff:
    """Waits between retries while Redis is unreachable or refuses (see
    ``redis_errors``): 0.1 s doubling to 5 s."""

    def __init__(self) -> None:
        self.delay = 0.0

    def reset(self) -> None:
        if self.delay:
            _log.info("Redis is reachable again")
        self.delay = 0.0

    def failed(self, what: str, error: BaseException, stop: threading.Event | None) -> None:
        self.delay = min(5.0, max(0.1, self.delay * 2))
        _log.warning("%s: Redis failed (%r); retrying in %.1fs", what, error, self.delay)
        if stop is None:
            time.sleep(self.delay)  # a bounded wait for the server to come back
        else:
            stop.wait(self.delay)


#: Error replies that say Redis cannot take writes for now (memory full, a
#: replica during a failover, a script or a load running), not that this
#: command is wrong: a report is retried through them.
TRANSIENT_REPLIES = frozenset(
    ("OOM", "READONLY", "BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS",
     "MISCONF")
)  # fmt: skip


def transient(e: BaseException) -> bool:
    """Redis away, or refusing every write for a while; not an error reply
    about the command itself (which the same command would get again)."""
    import redis

    rx = redis.exceptions
    if not isinstance(e, rx.ResponseError):
        return True
    by_class = ("ReadOnlyError", "BusyLoadingError", "OutOfMemoryError", "TryAgainError")
    if any(isinstance(e, getattr(rx, name)) for name in by_class if hasattr(rx, name)):
        return True  # redis-py strips the code from these
    return str(e).split(" ", 1)[0].upper() in TRANSIENT_REPLIES


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a node retries with backoff: Redis away (connection, timeout) or
    refusing a command (an error reply: OOM under ``noeviction``, READONLY
    during a failover, BUSY, LOADING). A script Redis lost (NOSCRIPT) never
    gets here: ``_lanes`` loads it and runs it again."""
    import redis

    return (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.ResponseError,
    )
