"""``procqueue top`` (issue #10): the pure render functions, the sources, and
the real program driven in a pseudo-terminal against a small HTTP server that
serves ``/api/stats``. The screen is read until the expected text appears (with
a deadline), never after a sleep."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import REDIS_URL, require_redis
from rich.console import Console

from procqueue._top import (
    TOKEN_ENV,
    BrokerSource,
    HttpSource,
    SnapshotError,
    fmt_bytes,
    fmt_seconds,
    main,
    parser,
    render,
    sparkline,
)
from procqueue.stats import LatencySummary, QueueStats, WorkerStats

BOUND = 30.0
ROOT = Path(__file__).resolve().parent.parent


def local_stats(**changes: Any) -> dict[str, Any]:
    stats = QueueStats(
        submitted=120,
        pending=5,
        running=2,
        retrying=1,
        completed=100,
        failed=3,
        cancelled=1,
        retried=4,
        dead_letters=3,
        dead_letters_dropped=0,
        success_rate=100 / 103,
        throughput=42.5,
        queue_wait=LatencySummary(0.001, 0.01, 0.05, 100),
        run_time=LatencySummary(0.2, 0.8, 1.5, 100),
        uptime=3725.0,
        workers=(
            WorkerStats(0, 41234, "ready", 50, 0, 0, 77, 50 * 2**20, 99.0),
            WorkerStats(1, 41235, "starting", 50, 2, 1, None, None, None),
        ),
        scheduled=7,
        waiting=1,
        throttled=2,
    )
    return {"kind": "local", "stats": dataclasses.asdict(dataclasses.replace(stats, **changes))}


CLUSTER = {
    "kind": "cluster",
    "stats": {
        "pending": 11,
        "scheduled": 2,
        "running": 3,
        "dead_letters": 1,
        "waiting": 4,
        "limits": {
            "api:eu": {"cap": 2, "rate": None, "running": 2, "waiting": 5},
            "api:us": {"cap": None, "rate": "10/s", "running": 1, "waiting": 0},
        },
        "nodes": [
            {
                "node": "n-a",
                "host": "alpha",
                "pid": 501,
                "workers": 2,
                "held": 3,
                "heartbeat_age": 1.5,
                "processes": [
                    {"slot": 0, "pid": 601, "state": "ready", "tasks_done": 9, "restarts": 1,
                     "recycled": 0, "current_task": 4242, "rss": 2**30, "cpu_percent": 55.0},
                ],
            },
            {"node": "n-b", "host": "beta", "pid": 502, "workers": 4, "held": 0,
             "heartbeat_age": 95.0, "processes": []},
        ],
    },
}  # fmt: skip


def text_of(renderable: Any, width: int = 140) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


# ------------------------------------------------------------------ pure rendering


def test_render_local_shows_counts_rates_latencies_and_workers() -> None:
    out = text_of(render(local_stats(), source="http://x", history=[1.0, 40.0, 42.5]))
    assert "(local)" in out and "http://x" in out and "q quits" in out
    lines = out.splitlines()
    labels = next(i for i, line in enumerate(lines) if "submitted" in line)
    assert lines[labels].split() == [
        "submitted", "waiting", "scheduled", "pending", "throttled", "running", "retrying"
    ]  # fmt: skip
    assert lines[labels + 1].split() == ["120", "1", "7", "5", "2", "2", "1"]
    assert "42.5 tasks/s" in out and "97.1%" in out and "uptime 1h02m" in out
    assert "▁" in out and "█" in out  # the throughput sparkline
    wait = next(line for line in lines if "queue wait" in line)
    assert re.findall(r"[\d.]+m?s|\d+", wait)[:4] == ["1.0ms", "10.0ms", "50.0ms", "100"]
    assert "1.50s" in out
    worker = next(line for line in lines if "41234" in line)
    assert "ready" in worker and "77" in worker and "50.0 MiB" in worker and "99%" in worker
    assert "workers (2)" in out


def test_render_cluster_shows_nodes_and_their_workers() -> None:
    out = text_of(render(CLUSTER, source="redis://r queue 'q'"))
    assert "(cluster)" in out
    lines = out.splitlines()
    labels = next(i for i, line in enumerate(lines) if "dead letters" in line)
    assert lines[labels].split() == [
        "waiting", "scheduled", "pending", "running", "dead", "letters", "nodes", "workers",
        "limit", "keys",
    ]  # fmt: skip
    assert lines[labels + 1].split() == ["4", "2", "11", "3", "1", "2", "6", "2"]
    alpha = next(line for line in lines if "alpha" in line and "n-a" in line)
    assert "501" in alpha and "1.50s ago" in alpha
    assert "1m35s ago" in out  # beta's stale heartbeat
    worker = next(line for line in lines if "601" in line)
    assert "alpha:501" in worker and "4242" in worker and "1.0 GiB" in worker and "55%" in worker
    # The busy limit keys, as the dashboard lists them: the most held back first.
    assert "busy limit keys (2)" in out
    eu = next(i for i, line in enumerate(lines) if "api:eu" in line)
    assert lines[eu].replace("│", " ").split() == ["api:eu", "2", "-", "2", "5"]
    assert lines[eu + 1].replace("│", " ").split() == ["api:us", "-", "10/s", "1", "0"]


def test_render_cluster_lists_the_busiest_limit_keys_only() -> None:
    limits = {f"k{i:02d}": {"cap": 1, "rate": None, "running": 1, "waiting": i} for i in range(25)}
    out = text_of(render({"kind": "cluster", "stats": {"limits": limits}}, source="s"))
    assert "busy limit keys (25)" in out and "and 15 more" in out
    assert "k24" in out and "k15" in out and "k14" not in out
    assert "busy limit keys" not in text_of(render({"kind": "cluster", "stats": {}}, source="s"))
    odd = {"tenant:[bold]acme": {"cap": 1, "rate": None, "running": 1, "waiting": 0}}
    assert "tenant:[bold]acme" in text_of(
        render({"kind": "cluster", "stats": {"limits": odd}}, source="s")
    )


def test_render_before_the_first_snapshot_and_when_stale() -> None:
    assert "waiting for the first snapshot" in text_of(render(None, source="s"))
    out = text_of(render(None, source="s", error="cannot reach it"))
    assert "cannot reach it" in out and "showing the last" not in out
    out = text_of(render(local_stats(), source="s", error="cannot reach it"))
    assert "showing the last snapshot" in out and "41234" in out


def test_formatting_helpers() -> None:
    assert [fmt_seconds(v) for v in (None, 5e-4, 0.0123, 1.25, 125.0, 7300.0)] == [
        "-", "500µs", "12.3ms", "1.25s", "2m05s", "2h01m"
    ]  # fmt: skip
    assert [fmt_bytes(v) for v in (None, 512, 2048, 3 * 2**20, 5 * 2**40)] == [
        "-", "512 B", "2.0 KiB", "3.0 MiB", "5120.0 GiB"
    ]  # fmt: skip
    assert sparkline([0, 1, 2, 4]) == "▁▃▅█"
    assert sparkline([0, 0]) == "▁▁" and sparkline([]) == ""
    assert len(sparkline(list(range(100)), width=30)) == 30


# ------------------------------------------------------------------ a stats server


class StatsServer:
    """Serves ``GET /api/stats`` from ``payload(hits)``; with ``token``, only
    to ``Authorization: Bearer <token>`` (401 without one, 403 for another,
    as the dashboard answers); with ``redirect``, a 302 to that URL instead.
    ``targets``: each request's target as sent (a proxy gets absolute URLs)."""

    def __init__(
        self,
        payload: Callable[[int], object],
        token: str | None = None,
        redirect: str | None = None,
    ) -> None:
        self.hits = 0
        self.auth: list[str | None] = []
        self.targets: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.auth.append(self.headers.get("Authorization"))
                server.targets.append(self.path)
                if redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if urlsplit(self.path).path != "/api/stats":
                    self.send_error(404)
                    return
                given = self.headers.get("Authorization")
                if token is not None and given != f"Bearer {token}":
                    self.send_error(401 if given is None else 403)
                    return
                server.hits += 1
                body = json.dumps(payload(server.hits)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # poll_interval: how soon shutdown() is noticed (the default waits 0.5 s).
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.02,), name="stats-server"
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[StatsServer]:
    # Each answer differs: ``submitted`` counts the requests, so a refresh shows.
    s = StatsServer(lambda hits: local_stats(submitted=1000 + hits))
    yield s
    s.close()


def test_http_source_sends_the_token_and_explains_refusals() -> None:
    s = StatsServer(lambda hits: local_stats(), token="s3cret")
    try:
        assert HttpSource(s.url, token="s3cret").fetch()["kind"] == "local"
        assert s.auth[-1] == "Bearer s3cret"
        with pytest.raises(SnapshotError, match=r"HTTP 401.*pass --token or set \$PROCQUEUE_DASH"):
            HttpSource(s.url).fetch()
        with pytest.raises(SnapshotError, match="404"):
            HttpSource(s.url + "/nope").fetch()
    finally:
        s.close()
    bad = StatsServer(lambda hits: {"kind": "weird"})
    try:
        with pytest.raises(SnapshotError, match="unexpected answer"):
            HttpSource(bad.url).fetch()
    finally:
        bad.close()


def test_http_source_takes_the_token_from_a_printed_dashboard_url() -> None:
    """A dashboard prints ``http://host:port/?token=...``: that URL works as
    it is, the token sent as a header, neither in the path nor in the label."""
    s = StatsServer(lambda hits: local_stats(), token="s3cret")
    try:
        source = HttpSource(s.url + "/?token=s3cret")
        assert source.fetch()["kind"] == "local"
        assert s.auth[-1] == "Bearer s3cret" and "s3cret" not in source.label
    finally:
        s.close()


def test_http_source_refuses_redirects_so_the_token_stays_home() -> None:
    """urllib follows a redirect with ``Authorization`` still set, to any host
    and port: the dashboard never redirects ``/api/stats``, so none is followed."""
    elsewhere = StatsServer(lambda hits: local_stats())
    hop = StatsServer(lambda hits: local_stats(), redirect=elsewhere.url + "/api/stats?token=x")
    try:
        source = HttpSource(hop.url, token="s3cret")
        with pytest.raises(
            SnapshotError,
            match=r"HTTP 302 .*redirect to http://127\.0\.0\.1:\d+/api/stats, not followed",
        ):
            source.fetch()
        assert hop.auth == ["Bearer s3cret"] and elsewhere.auth == []
        with pytest.raises(SnapshotError) as info:
            source.fetch()
        assert "token=x" not in str(info.value)  # the Location's query is not shown
        source.close()
    finally:
        hop.close()
        elsewhere.close()


def test_http_source_never_sends_a_loopback_dashboard_through_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``$http_proxy`` is honoured for other hosts, as urllib does; a loopback
    URL goes straight to this machine, its token seen by no proxy."""
    dashboard = StatsServer(lambda hits: local_stats(), token="s3cret")
    proxy = StatsServer(lambda hits: local_stats())
    try:
        monkeypatch.setenv("http_proxy", proxy.url)
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's, built from the env
        assert HttpSource(dashboard.url, token="s3cret").fetch()["kind"] == "local"
        assert dashboard.auth == ["Bearer s3cret"] and proxy.targets == []
        assert HttpSource("http://dashboard.invalid:8765", token="t").fetch()["kind"] == "local"
        assert proxy.targets == ["http://dashboard.invalid:8765/api/stats"]
    finally:
        dashboard.close()
        proxy.close()


def test_a_refused_token_is_named_and_not_asked_for_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = StatsServer(lambda hits: local_stats(), token="s3cret")
    try:
        with pytest.raises(SnapshotError, match="pass --token") as no_token:
            HttpSource(s.url).fetch()
        assert "refused" not in str(no_token.value)
        with pytest.raises(SnapshotError) as wrong:
            HttpSource(s.url, token="wrong").fetch()
        assert "HTTP 403" in str(wrong.value) and "pass --token" not in str(wrong.value)
        assert "the token (from --token) was refused" in str(wrong.value)
        with pytest.raises(SnapshotError, match=r"from the URL's \?token=\) was refused"):
            HttpSource(s.url + "/?token=wrong").fetch()
        monkeypatch.setenv(TOKEN_ENV, "wrong")
        assert main(["--url", s.url, "--once"]) == 1
        assert f"(from ${TOKEN_ENV}) was refused" in caplog.text
    finally:
        s.close()


def test_the_dashboard_token_falls_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``procqueue dashboard`` reads it: ``$PROCQUEUE_DASHBOARD_TOKEN``,
    after ``--token`` and a token in the URL."""
    s = StatsServer(lambda hits: local_stats(), token="s3cret")
    try:
        monkeypatch.setenv(TOKEN_ENV, "s3cret")
        assert main(["--url", s.url, "--once"]) == 0
        assert s.auth[-1] == "Bearer s3cret"
        assert main(["--url", s.url, "--token", "given", "--once"]) == 1
        assert main(["--url", s.url + "/?token=printed", "--once"]) == 1
        assert s.auth[-2:] == ["Bearer given", "Bearer printed"]
        monkeypatch.setenv(TOKEN_ENV, "")
        assert main(["--url", s.url, "--once"]) == 1
        assert s.auth[-1] is None  # an empty variable is no token
    finally:
        s.close()


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "0", "-1", "0.01", "1e12", "soon"])
def test_interval_must_be_a_sane_number_of_seconds(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``inf`` used to reach ``select`` and crash (OverflowError); a tiny one
    would hammer the dashboard."""
    with pytest.raises(SystemExit) as exit_:
        main(["--interval", text, "--once"])
    assert exit_.value.code == 2
    assert "--interval" in capsys.readouterr().err
    assert parser().parse_args(["--interval", "0.05"]).interval == 0.05


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--url", "http://127.0.0.1:1", "--queue", "q"], "--queue"),
        (["--queue", "q"], "--queue"),  # the default source is a dashboard
        (["--url", "http://127.0.0.1:1", "--secret-file", "f"], "--secret-file"),
        (["--url", "http://127.0.0.1:1", "--insecure"], "--insecure"),
        (["--broker", "redis://127.0.0.1:1/0", "--token", "t"], "--token"),
    ],
)
def test_options_of_the_other_source_are_refused(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--once"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: procqueue top" in err and f"{flag} is for" in err


def test_once_off_a_terminal_prints_whole_rows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped, rich would fit the screen to 80 columns and wrap the cluster's
    workers table; one snapshot there is as wide as it needs."""
    for name in ("COLUMNS", "TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    host = "alpha-node-with-a-long-name.eu-west-1.compute.internal"
    stats = json.loads(json.dumps(CLUSTER["stats"]))
    stats["nodes"][0]["host"] = host
    s = StatsServer(lambda hits: {"kind": "cluster", "stats": stats})
    try:
        assert main(["--url", s.url, "--once"]) == 0
    finally:
        s.close()
    out = capsys.readouterr().out
    worker = next(line for line in out.splitlines() if "601" in line)
    assert f"{host}:501" in worker and "4242" in worker and "1.0 GiB" in worker
    assert "55%" in worker


def test_the_cli_prints_usage_for_help_and_refuses_unknown_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``procqueue --help`` (or a typo) used to run the demo."""
    from procqueue.__main__ import cli

    assert cli(["--help"]) == 0
    assert "procqueue worker" in capsys.readouterr().out
    assert cli(["wroker"]) == 2
    assert "usage: procqueue" in capsys.readouterr().err


def test_once_prints_one_snapshot(
    server: StatsServer, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["--url", server.url, "--once"]) == 0
    out = capsys.readouterr().out
    assert "1001" in out and "41234" in out and "(local)" in out
    assert "quits" not in out  # no key is read: there is nothing to quit
    with socket_closed_port() as url:
        assert main(["--url", url, "--once"]) == 1
    # The error is logged (stderr), not printed as a screen on stdout.
    assert capsys.readouterr().out == ""
    assert "cannot reach" in caplog.text


def test_without_rich_it_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "rich", None)
    assert main(["--once"]) == 2
    assert 'pip install "procqueue[top]"' in caplog.text


class socket_closed_port:
    """A URL where nothing listens (a port bound, then freed)."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        pass


def test_once_reads_a_real_dashboard(capsys: pytest.CaptureFixture[str]) -> None:
    """The contract with the dashboard's ``/api/stats``, end to end."""
    pytest.importorskip("procqueue.dashboard")
    from procqueue import ProcQueue

    with ProcQueue(max_workers=1, dashboard=0) as pool:
        assert list(pool.map(abs, [-1, -2, -3])) == [1, 2, 3]
        assert pool.dashboard is not None
        assert main(["--url", pool.dashboard.url, "--once"]) == 0
    out = capsys.readouterr().out
    assert "(local)" in out and "workers (1)" in out
    lines = out.splitlines()
    labels = next(i for i, line in enumerate(lines) if "completed" in line)
    assert lines[labels + 1].split()[0] == "3"


# ------------------------------------------------------------------ in a pseudo-terminal

_ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


class Terminal:
    """``procqueue top ...`` on a pseudo-terminal; a thread reads all it draws."""

    def __init__(self, *args: str, rows: int = 45, cols: int = 150) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.modes = termios.tcgetattr(self.slave)
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
        env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "procqueue", "top", *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
            start_new_session=True,
        )
        self.raw = bytearray()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="pty-reader")
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave end is closed
                data = b""
            with self._cond:
                if not data:
                    self._cond.notify_all()
                    return
                self.raw += data
                self._cond.notify_all()

    def screen(self) -> str:
        with self._cond:
            return _ANSI.sub(b"", bytes(self.raw)).decode("utf-8", "replace")

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first match of ``pattern`` on the screen so far, waiting for it."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            m = re.search(pattern, _ANSI.sub(b"", bytes(self.raw)).decode("utf-8", "replace"))
            if m:
                found.append(m)
            return m is not None or self.proc.poll() is not None

        with self._cond:
            self._cond.wait_for(seen, BOUND)
        assert found, f"{pattern!r} never appeared; screen:\n{self.screen()[-3000:]}"
        return found[0]

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def exit_status(self) -> int:
        return self.proc.wait(BOUND)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(BOUND)
        os.close(self.slave)  # the last slave end: the reader sees EIO and ends
        self._reader.join(BOUND)
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        t = Terminal(*args)
        opened.append(t)
        return t

    yield start
    for t in opened:
        t.close()


def test_top_refreshes_in_place_and_q_quits(
    server: StatsServer, terminal: Callable[..., Terminal]
) -> None:
    term = terminal("--url", server.url, "--interval", "0.05")
    term.wait_for(r"q quits")
    term.wait_for(r"41234 │ ready")  # the workers table
    term.wait_for(r"97\.1%")
    first = int(term.wait_for(r"\b(10\d\d)\b").group(1))
    term.wait_for(rf"\b{first + 2}\b")  # two refreshes later, new numbers
    assert "\x1b[?1049h" in term.raw.decode("utf-8", "replace")  # the alternate screen
    term.press(b"x")  # other keys are ignored
    term.press(b"q")
    assert term.exit_status() == 0
    term.wait_for(r"$")  # and what it wrote on the way out has been read
    tail = bytes(term.raw).decode("utf-8", "replace")
    assert tail.rfind("\x1b[?1049l") > tail.rfind("\x1b[?1049h")  # left the alternate screen
    assert termios.tcgetattr(term.slave) == term.modes  # echo and line mode are back


def test_top_restores_the_terminal_on_ctrl_c(
    server: StatsServer, terminal: Callable[..., Terminal]
) -> None:
    term = terminal("--url", server.url, "--interval", "0.05")
    term.wait_for(r"41234 │ ready")
    assert termios.tcgetattr(term.slave) != term.modes  # in cbreak mode while it runs
    term.proc.send_signal(signal.SIGINT)
    assert term.exit_status() == 130
    assert termios.tcgetattr(term.slave) == term.modes


def test_top_restores_the_terminal_and_exits_143_on_sigterm(
    server: StatsServer, terminal: Callable[..., Terminal]
) -> None:
    term = terminal("--url", server.url, "--interval", "0.05")
    term.wait_for(r"41234 │ ready")
    term.proc.send_signal(signal.SIGTERM)
    assert term.exit_status() == 128 + signal.SIGTERM
    assert termios.tcgetattr(term.slave) == term.modes


def test_top_keeps_going_when_the_server_is_away(terminal: Callable[..., Terminal]) -> None:
    with socket_closed_port() as url:
        term = terminal("--url", url, "--interval", "0.05")
        term.wait_for(r"cannot reach .*/api/stats")
        assert term.proc.poll() is None
        term.press(b"Q")
        assert term.exit_status() == 0


# ------------------------------------------------------------------ a broker

SECRET = "top-test-secret-" + "x" * 32


class FakeRemote:
    """Stands in for ``RemoteProcQueue``: ``get_stats`` answers, or fails with
    the URL in its message (as a client library's error might)."""

    fail = False

    def __init__(self, broker: str, **options: Any) -> None:
        self.broker = broker

    def get_stats(self) -> Any:
        from procqueue.redis._remote import ClusterStats

        if self.fail:
            raise ConnectionError(f"Error connecting to {self.broker}: refused")
        return ClusterStats(pending=1, scheduled=0, running=0, dead_letters=0, nodes=())

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_a_broker_password_is_never_shown(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("redis")
    monkeypatch.setattr("procqueue.redis._client.RemoteProcQueue", FakeRemote)
    monkeypatch.setenv(TOKEN_ENV, "t")  # for --url only: not an error with --broker
    url = "redis://user:hunter2@redis.example:6379/0"
    source = BrokerSource(url, "jobs")
    assert source.label == "redis://user:***@redis.example:6379/0 queue 'jobs'"
    assert main(["--broker", url, "--queue", "jobs", "--once"]) == 0
    out = capsys.readouterr().out
    assert "user:***@redis.example" in out and "hunter2" not in out
    monkeypatch.setattr(FakeRemote, "fail", True)
    with pytest.raises(SnapshotError) as info:
        source.fetch()
    assert "hunter2" not in str(info.value) and "refused" in str(info.value)
    assert main(["--broker", url, "--once"]) == 1
    assert "refused" in caplog.text and "hunter2" not in caplog.text


def test_cannot_connect_names_the_broker_without_its_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("redis")
    monkeypatch.setenv("PROCQUEUE_SECRET", SECRET)
    with socket_closed_port() as free:
        url = f"redis://user:hunter2@{urlsplit(free).netloc}/0"
        assert main(["--broker", url, "--once"]) == 1
    assert "cannot connect to redis://user:***@127.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text


def test_top_reads_a_redis_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client: Any = require_redis()
    from procqueue import ProcQueue

    queue = f"top-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("PROCQUEUE_SECRET", SECRET)
    pool = ProcQueue(broker=REDIS_URL, queue=queue)
    try:
        for i in range(3):
            pool.submit(abs, -i)  # no node serves this queue: they stay pending
        assert main(["--broker", REDIS_URL, "--queue", queue, "--once"]) == 0
        out = capsys.readouterr().out
        assert "(cluster)" in out and queue in out
        lines = out.splitlines()
        labels = next(i for i, line in enumerate(lines) if "dead letters" in line)
        assert lines[labels + 1].split() == ["0", "0", "3", "0", "0", "0", "0", "0"]
    finally:
        pool.shutdown(wait=False)
        keys = list(client.scan_iter(match=f"{{pq:{queue}}}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    monkeypatch.delenv("PROCQUEUE_SECRET")
    assert main(["--broker", REDIS_URL, "--queue", queue, "--once"]) == 2  # no secret
