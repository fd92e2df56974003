"""The dashboard's sampler and broadcaster: one thread that reads the
overview at most 4 times a second while a page is live (once a second
otherwise, to keep the throughput history), and hands the newest snapshot to
every Server-Sent Events client.

Coalescing (issue #10: "at most ~4 updates a second"): there is one latest
snapshot, not a queue per client. A client that falls behind skips straight
to the newest version, so a slow or stalled browser costs no memory here,
and the number of events per second is the sampling rate, whatever the rate
of state changes in the engine (Dask's dashboard and Flower's websocket both
throttle updates in the same spirit, on a timer rather than per event).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._source import JSON, DashboardSource, unreachable

__all__ = ["Monitor"]

_log = logging.getLogger("procqueue.dashboard")

#: Seconds between samples with a live client / with none.
LIVE_INTERVAL = 0.25
IDLE_INTERVAL = 1.0
#: Points of throughput history (one a second): ten minutes.
HISTORY = 600
#: A snapshot is sent at least this often, even if nothing changed.
REFRESH_EVERY = 2.0


def _signature(overview: JSON) -> object:
    """What makes a snapshot news: counts and workers' tasks (figures that
    drift, such as uptime, CPU and percentiles, ride along with those, or with
    the refresh every ``REFRESH_EVERY`` seconds)."""
    stats = overview.get("stats", {})
    workers = tuple(
        (w.get("state"), w.get("current_task"), w.get("tasks_done"), w.get("restarts"))
        for w in stats.get("workers", ())
    )
    # A cluster's nodes and their processes (``ClusterStats``), in place of workers.
    nodes = tuple(
        (n.get("node"), n.get("held"), [(p.get("state"), p.get("tasks_done")) for p in procs])
        for n in stats.get("nodes", ())
        for procs in [n.get("processes", ())]
    )
    counts = tuple(v for v in stats.values() if isinstance(v, int))
    return counts, workers, nodes, overview.get("totals"), overview.get("state")


def dumps(value: Any) -> bytes:
    """Compact JSON (enum members as their values, tuples as lists)."""
    return json.dumps(value, separators=(",", ":"), default=str).encode()


class Monitor:
    """Samples ``source``; :meth:`wait` hands out the newest snapshot."""

    def __init__(
        self,
        source: DashboardSource,
        *,
        on_tick: Callable[[], None] | None = None,
        live_interval: float = LIVE_INTERVAL,
        idle_interval: float = IDLE_INTERVAL,
    ) -> None:
        self._source = source
        self._on_tick = on_tick
        self._live = live_interval
        self._idle = idle_interval
        self._cond = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._closed = False
        self.clients = 0
        self.version = 0
        self._payload = b"{}"
        self._signature: object = None
        self._sent_at = float("-inf")
        #: ``(unix time, completed, failed)`` once a second, newest last.
        self.history: deque[tuple[float, int, int]] = deque(maxlen=HISTORY)

    # ------------------------------------------------------------------ sampling

    def run(self, stop: Callable[[], bool]) -> None:
        """The sampling loop (in the dashboard's monitor thread) until ``stop()``."""
        next_point = 0.0
        while not stop():
            started = time.monotonic()
            try:
                if started >= next_point:
                    completed, failed = self._source.totals()
                    self.history.append((time.time(), completed, failed))
                    next_point = started + 1.0
                if self.clients:
                    self._publish()
                if self._on_tick is not None:
                    self._on_tick()
            except Exception as e:
                if not unreachable(self._source, e):
                    _log.exception("dashboard sampling failed; retrying")
            interval = self._live if self.clients else self._idle
            self._wake.wait(max(0.0, interval - (time.monotonic() - started)))
            self._wake.clear()

    def _publish(self) -> None:
        overview = self._source.overview()
        signature = _signature(overview)
        now = time.monotonic()
        if signature == self._signature and now - self._sent_at < REFRESH_EVERY:
            return
        point = self.history[-1] if self.history else None
        payload = dumps({"overview": overview, "point": point})
        with self._cond:
            self.version += 1
            overview_version = self.version
            self._payload = payload
            self._signature = signature
            self._sent_at = now
            self._cond.notify_all()
        _log.debug("dashboard snapshot %d (%d bytes)", overview_version, len(payload))

    def snapshot(self) -> JSON:
        """The overview now, with the whole throughput history."""
        out = self._source.overview()
        out["history"] = list(self.history)
        return out

    def wake(self) -> None:
        """Sample now (a client connected, or closing)."""
        self._wake.set()

    # ------------------------------------------------------------------ clients

    def attach(self) -> None:
        with self._cond:
            self.clients += 1
            self._signature = None  # the newcomer needs a snapshot at once
        self.wake()

    def detach(self) -> None:
        with self._cond:
            self.clients -= 1

    def wait(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The newest snapshot if its version is above ``after`` (waiting up
        to ``timeout`` for one); ``None`` on timeout or once closed."""
        with self._cond:
            if not self._closed and self.version <= after:
                self._cond.wait(timeout)
            if self._closed or self.version <= after:
                return None
            return self.version, self._payload

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release every waiting client."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._wake.set()
