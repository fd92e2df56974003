"""Serving the dashboard of a Redis cluster: :func:`serve_cluster`, its
Prometheus gauges (:func:`make_cluster_registry`) and the CLI entry point
(``procqueue dashboard --broker redis://...``, :func:`main`). What is read,
and what each page costs in round trips, is ``_redis.py``'s
:class:`~._redis.ClusterSource`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import InsecureDashboardError, InvalidArgumentError, OptionTypeError
from ._redis import ClusterSource

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ._app import Dashboard
    from ._options import DashboardOptions

__all__ = ["main", "make_cluster_registry", "redact", "serve_cluster"]

_log = logging.getLogger("procqueue.dashboard")


def make_cluster_registry(source: ClusterSource) -> CollectorRegistry:
    """A private registry with the cluster's gauges, read at scrape time."""
    from ._metrics import require_prometheus

    require_prometheus()
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ClusterCollector(source))
    return registry


class _ClusterCollector:
    """One ``get_stats`` (1 RT) per scrape, and this dashboard's own counts."""

    def __init__(self, source: ClusterSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from ._metrics import MAX_KEYS

        stats = self._source._remote.get_stats()
        tasks = GaugeMetricFamily(
            "procqueue_tasks", "Tasks in Redis by state (pending includes parked).",
            labels=["state"],
        )  # fmt: skip
        for state in ("pending", "scheduled", "running", "waiting"):
            tasks.add_metric([state], getattr(stats, state))
        yield tasks
        yield GaugeMetricFamily(
            "procqueue_dead_letters", "Dead letters held now.", value=stats.dead_letters
        )
        yield GaugeMetricFamily(
            "procqueue_nodes", "Nodes with a heartbeat.", value=len(stats.nodes)
        )
        workers = GaugeMetricFamily(
            "procqueue_workers", "Worker processes of every node, by state.", labels=["state"]
        )
        counts: dict[str, int] = {s: 0 for s in ("stopped", "starting", "ready", "stopping")}
        for node in stats.nodes:
            for proc in node.processes:
                counts[proc.state] = counts.get(proc.state, 0) + 1
        for worker_state, n in counts.items():
            workers.add_metric([worker_state], n)
        yield workers
        ended = self._source.done.counts()
        yield CounterMetricFamily(
            "procqueue_tasks_completed",
            "Tasks completed since this dashboard started (from the done channel).",
            value=ended["completed"],
        )
        yield CounterMetricFamily(
            "procqueue_tasks_failed",
            "Tasks failed for good since this dashboard started (from the done channel).",
            value=ended["failed"],
        )
        running = GaugeMetricFamily(
            "procqueue_limit_running", "Per busy limit key: its tasks leased now.", labels=["key"]
        )
        waiting = GaugeMetricFamily(
            "procqueue_limit_waiting",
            "Per busy limit key: its tasks held back by the limit.",
            labels=["key"],
        )
        busiest = sorted(stats.limits.items(), key=lambda kv: -kv[1].waiting)[:MAX_KEYS]
        for key, lim in busiest:
            running.add_metric([key], lim.running)
            waiting.add_metric([key], lim.waiting)
        yield running
        yield waiting


# --------------------------------------------------------------------------- serving


def redact(url: str) -> str:
    """``url`` without its password (the header shows it)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def serve_cluster(
    broker: str,
    *,
    queue: str = "default",
    options: DashboardOptions | None = None,
    secret: str | bytes | None = None,
    secret_file: str | None = None,
    insecure: bool = False,
) -> Dashboard:
    """Serve the dashboard of ``queue`` on the Redis at ``broker`` (the
    secret from ``secret``, ``secret_file`` or ``$PROCQUEUE_SECRET``, as for
    a broker client); ``dash.close()`` stops it and closes the connection."""
    from ..redis._remote import _RemoteCore
    from ._app import Dashboard
    from ._options import DashboardOptions

    options = options or DashboardOptions()
    options.check_bind()  # before anything connects
    remote = _RemoteCore(
        "dashboard", None, broker=broker, queue=queue, secret=secret,
        secret_file=secret_file, insecure=insecure,
    )  # fmt: skip
    remote.open()
    try:
        source = ClusterSource(remote, options, label=redact(broker))
        try:
            registry: CollectorRegistry | None = make_cluster_registry(source)
        except ImportError:
            registry = None
            _log.info("prometheus-client is not installed: /metrics is off")
        dash = Dashboard(source, options, registry=registry)
    except BaseException:
        remote.close()
        raise
    dash.on_closed.append(source.close)
    return dash


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="procqueue dashboard",
        description="Serve the live dashboard of a queue on a Redis broker.",
    )
    p.add_argument("--broker", required=True, help="redis://host:port/db or rediss://...")
    p.add_argument("--queue", default="default")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (others need a token)")
    p.add_argument(
        "--token",
        default=os.environ.get("PROCQUEUE_DASHBOARD_TOKEN"),
        help="require this token on every request (default: $PROCQUEUE_DASHBOARD_TOKEN)",
    )
    p.add_argument("--read-only", action="store_true", help="hide retry, purge, pause...")
    p.add_argument("--hide-args", action="store_true", help="do not show arguments or results")
    p.add_argument("--secret-file", default=None, help="the queue's secret (or $PROCQUEUE_SECRET)")
    p.add_argument("--insecure", action="store_true", help="the public key: experiments only")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str]) -> int:
    """Serve until Ctrl-C or SIGTERM; prints the URL (with its token) first."""
    from ..redis._cli import log_to_stderr
    from ._options import DashboardOptions

    args = parser().parse_args(argv)
    log_to_stderr(args.log_level)
    try:
        options = DashboardOptions(
            port=args.port,
            host=args.host,
            token=args.token or None,
            read_only=args.read_only,
            show_args=not args.hide_args,
        )
        dash = serve_cluster(
            args.broker, queue=args.queue, options=options,
            secret_file=args.secret_file, insecure=args.insecure,
        )  # fmt: skip
    except (InsecureDashboardError, InvalidArgumentError, OptionTypeError) as e:
        print(f"procqueue dashboard: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # Redis unreachable, a bad URL, the port taken
        print(f"procqueue dashboard: cannot start: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"procqueue dashboard: {dash.url}  queue {args.queue!r}  (Ctrl-C to stop)", flush=True)
    try:
        stop.wait()
    finally:
        dash.close()
    return 0
