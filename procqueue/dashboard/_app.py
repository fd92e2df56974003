"""A running dashboard: its source, sampler, HTTP server and threads, and the
handle users hold (``queue.serve_dashboard(...)``, ``dashboard=`` option).

Threads, all daemons, all joined by :meth:`Dashboard.close`:
``procqueue-dashboard`` accepts connections; ``procqueue-dashboard-request``
serves one request each; ``procqueue-dashboard-monitor`` samples the
overview (4 Hz while a page is live, 1 Hz otherwise) and, once the dashboard
is closing, tears the server down. The queue's stop closes its dashboards.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._local import LocalSource
from ._metrics import MetricsObserver, make_registry
from ._monitor import Monitor
from ._options import DashboardOptions, new_secret
from ._server import DashboardServer
from ._source import DashboardSource

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .._runtime.engine import Engine

__all__ = ["Dashboard", "close_for", "serve_local"]

_log = logging.getLogger("procqueue.dashboard")
_by_engine: weakref.WeakKeyDictionary[Any, list[Dashboard]] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


class Dashboard:
    """A live dashboard, as ``queue.serve_dashboard()`` returns it.

    ``url`` is where to open it (with ``?token=...`` when it has a token:
    the first visit stores it in a cookie); :meth:`close` stops it (the
    queue's stop does too). Also a context manager.

    >>> with pool.serve_dashboard(port=0) as dash:         # doctest: +SKIP
    ...     print(dash.url)
    http://127.0.0.1:40123/
    """

    def __init__(
        self,
        source: DashboardSource,
        options: DashboardOptions,
        *,
        observer: MetricsObserver | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        options.check_bind()
        self.options = options
        self.source = source
        self.observer = observer
        self.registry = registry
        self.csrf = new_secret()
        self.closing = False
        #: Called (in the monitor thread) once the server is down.
        self.on_closed: list[Callable[[], None]] = []
        on_tick = None
        if observer is not None:

            def on_tick() -> None:
                if observer.active:
                    observer.drain()

        self.monitor = Monitor(source, on_tick=on_tick)
        self._server = DashboardServer((options.host, options.port), self)
        host, port = self._server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.cookie_name = f"procqueue_token_{self.port}"
        self._serve_thread = threading.Thread(
            target=self._server.serve, name="procqueue-dashboard", daemon=True
        )
        self._monitor_thread = threading.Thread(
            target=self._run_monitor, name="procqueue-dashboard-monitor", daemon=True
        )
        self._serve_thread.start()
        self._monitor_thread.start()
        _log.info("dashboard at %s", self.base_url)

    @property
    def base_url(self) -> str:
        """The dashboard's address, without its token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        return f"http://{host}:{self.port}/"

    @property
    def url(self) -> str:
        """The address to open: :attr:`base_url`, with ``?token=`` if needed."""
        token = self.options.token
        return self.base_url if token is None else f"{self.base_url}?token={token}"

    def _run_monitor(self) -> None:
        try:
            self.monitor.run(lambda: self.closing)
        finally:
            self._teardown()

    def _teardown(self) -> None:
        self.monitor.close()
        self._server.stop()
        self._serve_thread.join()
        self._server.finish_stop()
        for callback in self.on_closed:
            callback()
        _log.debug("dashboard at %s closed", self.base_url)

    def request_close(self) -> None:
        """Begin closing without waiting (safe from any thread, the
        coordinator's included)."""
        self.closing = True
        self.monitor.wake()

    def close(self) -> None:
        """Stop serving; returns once every dashboard thread has ended."""
        self.request_close()
        if threading.current_thread() is not self._monitor_thread:
            self._monitor_thread.join()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closing else "open"
        return f"<procqueue Dashboard {self.base_url} {state}>"


def serve_local(engine: Engine, options: DashboardOptions) -> Dashboard:
    """Start a dashboard over a queue of this process; it closes with the queue."""
    options.check_bind()
    try:
        observer: MetricsObserver | None = MetricsObserver(engine)
        registry = make_registry(engine, observer)
    except ImportError:
        observer, registry = None, None
        _log.info("prometheus-client is not installed: /metrics is off")
    dash = Dashboard(LocalSource(engine, options), options, observer=observer, registry=registry)
    with _registry_lock:
        _by_engine.setdefault(engine, []).append(dash)

    def forget() -> None:
        with _registry_lock:
            dashes = _by_engine.get(engine)
            if dashes is not None and dash in dashes:
                dashes.remove(dash)

    dash.on_closed.append(forget)
    engine.stopped_future.add_done_callback(lambda _f: dash.request_close())
    return dash


def close_for(engine: object) -> None:
    """Close every dashboard of ``engine`` and wait for their threads."""
    with _registry_lock:
        dashes = _by_engine.pop(engine, [])
    for dash in dashes:
        dash.close()
