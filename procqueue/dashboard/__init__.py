"""The live web dashboard and Prometheus metrics of a procqueue queue.

Start one with ``TaskQueue(..., dashboard=8765)`` / ``ProcQueue(...,
dashboard=8765)`` or ``queue.serve_dashboard(port=...)``; it serves the
pages, a JSON API under ``/api/`` and ``/metrics``, from the standard library
alone (``/metrics`` needs the ``metrics`` extra, ``prometheus-client``).
:func:`serve_cluster` (``procqueue dashboard --broker ...``) serves the same
for a queue on a Redis broker.

Names are imported lazily, so ``import procqueue`` never loads this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import Dashboard
    from ._local import LocalSource
    from ._options import DashboardOptions
    from ._redis_serve import serve_cluster
    from ._source import DashboardSource, DeadLetterFilter, TaskQuery

__all__ = [
    "Dashboard",
    "DashboardOptions",
    "DashboardSource",
    "DeadLetterFilter",
    "LocalSource",
    "TaskQuery",
    "metrics_registry",
    "serve_cluster",
]

_WHERE = {
    "Dashboard": "._app",
    "DashboardOptions": "._options",
    "DashboardSource": "._source",
    "DeadLetterFilter": "._source",
    "LocalSource": "._local",
    "TaskQuery": "._source",
    "serve_cluster": "._redis_serve",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'procqueue.dashboard' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def metrics_registry(queue: Any) -> Any:
    """A ``prometheus_client.CollectorRegistry`` of ``queue``'s own (a
    ``ProcQueue`` or ``TaskQueue``), for an exporter you run yourself::

        from prometheus_client import start_http_server
        start_http_server(9100, registry=metrics_registry(pool))

    Raises :class:`~procqueue.MissingExtraError` without prometheus-client.
    """
    from ._metrics import make_registry

    engine = getattr(queue, "_engine", queue)
    return make_registry(engine)
