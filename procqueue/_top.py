"""``procqueue top``: a live terminal view of a queue (issue #10, "Progress").

::

    procqueue top [--url http://127.0.0.1:8765 [--token T]
                   | --broker redis://... [--queue NAME] [--secret-file F]]
                  [--interval S] [--once]

One loop, three parts:

* a **source** (``_top_sources.py``) fetches a snapshot, ``{"kind": "local"
  | "cluster", "stats": {...}}``: :class:`HttpSource` reads a dashboard's
  ``GET /api/stats`` (the ``dataclasses.asdict`` of a ``QueueStats`` or
  ``ClusterStats``); :class:`BrokerSource` asks Redis through a broker
  client's ``get_stats()``;
* :func:`render` turns a snapshot into a rich renderable: pure (no I/O, no
  clock), so the screen is unit-tested from a dict;
* :func:`run` shows it with ``rich.live.Live`` on the alternate screen,
  refreshing every ``--interval`` seconds, and waits for keys in between with
  ``select`` on the terminal in cbreak mode: ``q`` quits. The terminal's modes
  are restored on every way out (``q``, Ctrl-C, SIGTERM, an error).

A failed fetch does not end the view: the last snapshot stays on screen,
marked stale, with the error, and the next refresh tries again. ``--once``
(or a stdout that is not a terminal) prints one snapshot; a failed fetch
there goes to stderr with exit status 1.

What must not leak (a broker URL's password, the dashboard token) is the
sources' concern; the errors this module logs go through the same redaction.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._top_sources import TOKEN_ENV, BrokerSource, HttpSource, SnapshotError, Source, _hide_password
from .errors import MissingExtraError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["BrokerSource", "HttpSource", "main", "render", "run"]

_log = logging.getLogger("procqueue.top")

#: Throughput samples kept for the sparkline (one per refresh).
HISTORY = 60
_SPARKS = "▁▂▃▄▅▆▇█"
_INSTALL_HINT = 'pip install "procqueue[top]"'
DEFAULT_URL = "http://127.0.0.1:8765"
#: ``--interval`` bounds: below, a refresh loop would hammer the dashboard or
#: Redis; above (and ``inf``, ``nan``), ``select`` cannot wait that long.
MIN_INTERVAL = 0.05
MAX_INTERVAL = 86400.0
#: Busy limit keys listed in the cluster view (the most held back first).
MAX_LIMIT_ROWS = 10


# --------------------------------------------------------------------------- render


def fmt_seconds(value: float | None) -> str:
    """A latency or age for a narrow column: ``850µs``, ``12.3ms``, ``1.25s``, ``2m05s``."""
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}µs"
    if value < 1.0:
        return f"{value * 1e3:.1f}ms"
    if value < 60.0:
        return f"{value:.2f}s"
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def sparkline(values: Sequence[float], width: int = 30) -> str:
    """The last ``width`` values as block characters, scaled to their maximum."""
    tail = list(values)[-width:]
    top = max(tail, default=0.0)
    if top <= 0:
        return _SPARKS[0] * len(tail)
    last = len(_SPARKS) - 1
    return "".join(_SPARKS[round(v / top * last)] for v in tail)


def render(
    snapshot: Mapping[str, Any] | None,
    *,
    source: str,
    error: str | None = None,
    history: Sequence[float] = (),
    interval: float | None = None,
    quit_hint: str | None = "q quits",
) -> RenderableType:
    """The whole screen for ``snapshot`` (``None`` before the first one).
    ``error``: the last fetch failed (the snapshot shown is stale);
    ``history``: recent throughputs, oldest first, for the sparkline;
    ``quit_hint``: how to leave, in the header (``None``: printed once)."""
    from rich.console import Group
    from rich.text import Text

    kind = None if snapshot is None else snapshot.get("kind")
    header = Text.assemble(
        ("procqueue top", "bold"),
        "  ",
        (source, "cyan"),
        f"  ({kind})" if kind else "",
        f"  every {interval:g}s" if interval else "",
        f"   {quit_hint}" if quit_hint else "",
    )
    parts: list[RenderableType] = [header]
    if error is not None:
        stale = "  (showing the last snapshot)" if snapshot is not None else ""
        parts.append(Text(f"! {error}{stale}", "bold red"))
    if snapshot is None:
        if error is None:
            parts.append(Text("waiting for the first snapshot..."))
        return Group(*parts)
    stats = snapshot.get("stats") or {}
    if kind == "cluster":
        parts += render_cluster(stats)
    else:
        parts += render_local(stats, history)
    return Group(*parts)


def _counts(pairs: Sequence[tuple[str, Any, str]]) -> RenderableType:
    """Labels over values, one column each; a style only for non-zero values."""
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    for _ in pairs:
        grid.add_column(justify="right")
    grid.add_row(*(Text(label, "dim") for label, _, _ in pairs))
    grid.add_row(*(Text(str(value), style if value else "") for _, value, style in pairs))
    return grid


def render_local(stats: Mapping[str, Any], history: Sequence[float] = ()) -> list[RenderableType]:
    """A local queue: ``dataclasses.asdict(QueueStats)``."""
    from rich.text import Text

    g = stats.get
    rate = g("success_rate")
    throughput = float(g("throughput") or 0.0)
    spark = sparkline([*history][-30:]) if history else ""
    return [
        _counts(
            [
                ("submitted", g("submitted", 0), "bold"),
                ("waiting", g("waiting", 0), ""),
                ("scheduled", g("scheduled", 0), ""),
                ("pending", g("pending", 0), "yellow"),
                ("throttled", g("throttled", 0), "yellow"),
                ("running", g("running", 0), "cyan"),
                ("retrying", g("retrying", 0), "magenta"),
            ]
        ),
        _counts(
            [
                ("completed", g("completed", 0), "green"),
                ("failed", g("failed", 0), "red"),
                ("cancelled", g("cancelled", 0), ""),
                ("retried", g("retried", 0), "magenta"),
                ("dead letters", g("dead_letters", 0), "red"),
            ]
        ),
        Text.assemble(
            ("throughput ", "dim"),
            (f"{throughput:.1f} tasks/s ", "bold"),
            (spark, "green"),
            ("   success ", "dim"),
            "-" if rate is None else f"{rate:.1%}",
            ("   uptime ", "dim"),
            fmt_seconds(g("uptime")),
        ),
        _latencies(g("queue_wait") or {}, g("run_time") or {}),
        _workers(g("workers") or ()),
    ]


def render_cluster(stats: Mapping[str, Any]) -> list[RenderableType]:
    """A Redis cluster: ``dataclasses.asdict(ClusterStats)``: counts in the
    local view's order, the nodes, their workers and the busy limit keys."""
    from rich.table import Table

    g = stats.get
    nodes: Sequence[Mapping[str, Any]] = g("nodes") or ()
    table = Table(title="nodes", title_justify="left", expand=False)
    for name in ("node", "host", "pid", "workers", "held", "heartbeat"):
        table.add_column(name, justify="left" if name in ("node", "host") else "right")
    for n in nodes:
        age = n.get("heartbeat_age")
        # Beats come every lease/3 (10 s by default); three leases: gone.
        style = "" if age is None or age < 20 else "yellow" if age < 90 else "red"
        table.add_row(
            str(n.get("node", "")),
            str(n.get("host", "")),
            str(n.get("pid", "")),
            str(n.get("workers", "")),
            str(n.get("held", "")),
            fmt_seconds(age) + " ago",
            style=style,
        )
    processes = [
        (f"{n.get('host', '')}:{n.get('pid', '')}", w)
        for n in nodes
        for w in (n.get("processes") or ())
    ]
    limits: Mapping[str, Mapping[str, Any]] = g("limits") or {}
    return [
        _counts(
            [
                ("waiting", g("waiting", 0), ""),
                ("scheduled", g("scheduled", 0), ""),
                ("pending", g("pending", 0), "yellow"),
                ("running", g("running", 0), "cyan"),
                ("dead letters", g("dead_letters", 0), "red"),
                ("nodes", len(nodes), "bold"),
                ("workers", sum(int(n.get("workers") or 0) for n in nodes), "bold"),
                ("limit keys", len(limits), "yellow"),
            ]
        ),
        table,
        _workers([w for _, w in processes], [node for node, _ in processes]),
        *([_limits(limits)] if limits else []),
    ]


def _limits(limits: Mapping[str, Mapping[str, Any]]) -> RenderableType:
    """The busy limit keys (``LimitStats`` as dicts), the most held back first."""
    from rich.table import Table
    from rich.text import Text

    busiest = sorted(limits.items(), key=lambda kv: (-int(kv[1].get("waiting") or 0), kv[0]))
    shown = busiest[:MAX_LIMIT_ROWS]
    more = len(busiest) - len(shown)
    table = Table(
        title=f"busy limit keys ({len(limits)})",
        title_justify="left",
        caption=f"and {more} more" if more else None,
        caption_justify="left",
        expand=False,
    )
    table.add_column("key")
    for name in ("cap", "rate", "running", "waiting"):
        table.add_column(name, justify="right")
    for key, lim in shown:
        cap, rate = lim.get("cap"), lim.get("rate")
        waiting = int(lim.get("waiting") or 0)
        table.add_row(
            Text(key),  # a user's string: not rich markup
            "-" if cap is None else str(cap),
            "-" if rate is None else str(rate),
            str(lim.get("running", 0)),
            str(waiting),
            style="yellow" if waiting else "",
        )
    return table


def _latencies(wait: Mapping[str, Any], run: Mapping[str, Any]) -> RenderableType:
    from rich.table import Table

    table = Table(title="latency", title_justify="left", expand=False)
    table.add_column("")
    for name in ("p50", "p95", "p99", "samples"):
        table.add_column(name, justify="right")
    for label, summary in (("queue wait", wait), ("run time", run)):
        table.add_row(
            label,
            fmt_seconds(summary.get("p50")),
            fmt_seconds(summary.get("p95")),
            fmt_seconds(summary.get("p99")),
            str(summary.get("samples", 0)),
        )
    return table


_STATE_STYLE = {"starting": "yellow", "stopping": "yellow", "stopped": "dim"}


def _workers(
    workers: Sequence[Mapping[str, Any]], nodes: Sequence[str] | None = None
) -> RenderableType:
    """The workers table (``WorkerStats`` as dicts); ``nodes``: each one's node."""
    from rich.table import Table

    table = Table(title=f"workers ({len(workers)})", title_justify="left", expand=False)
    if nodes is not None:
        table.add_column("node")
    for name in ("slot", "pid", "state", "task", "done", "restarts", "recycled", "rss", "cpu"):
        table.add_column(name, justify="left" if name == "state" else "right")
    for i, w in enumerate(workers):
        cpu = w.get("cpu_percent")
        task = w.get("current_task")
        state = str(w.get("state", ""))
        row = [
            str(w.get("slot", "")),
            str(w.get("pid") or "-"),
            state,
            "-" if task is None else str(task),
            str(w.get("tasks_done", 0)),
            str(w.get("restarts", 0)),
            str(w.get("recycled", 0)),
            fmt_bytes(w.get("rss")),
            "-" if cpu is None else f"{cpu:.0f}%",
        ]
        if nodes is not None:
            row.insert(0, nodes[i])
        busy = "cyan" if task is not None else ""
        table.add_row(*row, style=_STATE_STYLE.get(state, busy))
    return table


# --------------------------------------------------------------------------- the loop


@contextmanager
def cbreak(fd: int | None) -> Iterator[int | None]:
    """The terminal at ``fd`` in cbreak mode (keys arrive one by one, unechoed;
    Ctrl-C still interrupts), restored on the way out; ``None`` (and no change)
    when ``fd`` is not a terminal."""
    if fd is None or not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_quit(fd: int | None, seconds: float) -> bool:
    """Wait ``seconds`` for a ``q`` on ``fd``; other keys are ignored."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if fd is None:
            time.sleep(remaining)  # paces the refresh; nothing to listen to
            return False
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            keys = os.read(fd, 64)
            if not keys:
                fd = None  # end of input: refresh until interrupted
            elif b"q" in keys.lower():
                return True
    return False


def poll(source: Source, last: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """``(snapshot, error)``: a fresh snapshot, or the last one and why not."""
    try:
        return source.fetch(), None
    except SnapshotError as e:
        return last, str(e)


def run(source: Source, interval: float, console: Console, keys_fd: int | None) -> int:
    """Refresh until ``q`` is pressed on ``keys_fd``; returns the exit status."""
    from rich.live import Live

    history: deque[float] = deque(maxlen=HISTORY)
    snapshot: dict[str, Any] | None = None
    with (
        cbreak(keys_fd) as fd,
        Live(console=console, screen=True, auto_refresh=False, transient=True) as live,
    ):
        while True:
            snapshot, error = poll(source, snapshot)
            if error is None and snapshot is not None and snapshot["kind"] == "local":
                history.append(float(snapshot["stats"].get("throughput") or 0.0))
            frame = render(
                snapshot,
                source=source.label,
                error=error,
                history=history,
                interval=interval,
                quit_hint="q quits" if fd is not None else "Ctrl-C quits",
            )
            live.update(frame, refresh=True)
            if wait_for_quit(fd, interval):
                return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="procqueue top",
        description="A live terminal view of a procqueue queue: counts, throughput, "
        "latencies, workers (and nodes, for a Redis cluster). Press q to quit.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        default=None,
        help=f"a dashboard to read GET /api/stats from (default {DEFAULT_URL})",
    )
    where.add_argument("--broker", default=None, help="a Redis broker: redis://host:port/db")
    # Defaults of None: an option given with the other source is refused, not ignored.
    p.add_argument(
        "--queue", default=None, help="the broker's queue (with --broker; default 'default')"
    )
    p.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        help=f"seconds between refreshes ({MIN_INTERVAL:g} to {MAX_INTERVAL:g}; default 1)",
    )
    p.add_argument(
        "--token", default=None, help=f"the dashboard's token (with --url; else ${TOKEN_ENV})"
    )
    p.add_argument(
        "--secret-file",
        default=None,
        help="the broker's secret (with --broker; else $PROCQUEUE_SECRET)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="a broker without a secret (with --broker; experiments)",
    )
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    return p


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and MIN_INTERVAL <= value <= MAX_INTERVAL):
        raise argparse.ArgumentTypeError(
            f"must be from {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds, got {text}"
        )
    return value


def _check_source_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error for an option of the source not chosen."""
    if args.broker is not None:
        if args.token is not None:
            p.error("--token is for a dashboard (--url), not --broker")
        return
    for flag, given in (
        ("--queue", args.queue is not None),
        ("--secret-file", args.secret_file is not None),
        ("--insecure", args.insecure),
    ):
        if given:
            p.error(f"{flag} is for --broker, not a dashboard (--url)")


class _Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C (so the terminal is restored), exit 143."""


def main(argv: list[str]) -> int:
    """``procqueue top ...``; returns the exit status (130 after Ctrl-C, 143
    after SIGTERM, 1 when ``--once`` cannot fetch, 2 for a bad setup)."""
    p = parser()
    args = p.parse_args(argv)
    _check_source_options(p, args)
    logging.basicConfig(level=logging.WARNING, format="procqueue top: %(message)s")
    try:
        from rich.console import Console
    except ImportError:
        _log.error("procqueue top needs the optional rich package: %s", _INSTALL_HINT)
        return 2
    source: Source
    try:
        if args.broker is not None:
            queue = args.queue or "default"
            source = BrokerSource(args.broker, queue, args.secret_file, args.insecure)
        else:
            env_token = os.environ.get(TOKEN_ENV) or None
            source = HttpSource(args.url or DEFAULT_URL, args.token, fallback_token=env_token)
    except (MissingExtraError, ValueError) as e:  # no redis package, no secret
        _log.error("%s", _hide_password(str(e), args.broker or ""))
        return 2
    except Exception as e:  # redis-py: the server did not answer
        from .dashboard._redis_serve import redact

        _log.error(
            "cannot connect to %s: %s", redact(args.broker), _hide_password(str(e), args.broker)
        )
        return 1
    console = Console()
    try:
        if args.once or not console.is_terminal:
            return print_once(source, console)
        _exit_on_sigterm()
        return run(source, args.interval, console, _stdin_fd())
    except _Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130
    finally:
        source.close()


def print_once(source: Source, console: Console) -> int:
    """One snapshot on ``console``, or the error on stderr (status 1). Not on a
    terminal (a pipe, a file), as wide as it needs: nothing is cut to 80 columns."""
    snapshot, error = poll(source, None)
    if error is not None:
        _log.error("%s", error)
        return 1
    frame = render(snapshot, source=source.label, quit_hint=None)
    if not console.is_terminal:
        from rich.measure import Measurement

        natural = Measurement.get(console, console.options.update_width(10_000), frame).maximum
        console.width = max(console.width, natural)
    console.print(frame)
    return 0


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the terminal is restored."""

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, on_term)
