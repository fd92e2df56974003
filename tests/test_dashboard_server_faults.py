"""Faults in the dashboard's HTTP server (review 6): idle connections that held
the close up, tokens a cookie or a header cannot carry, ``HEAD`` on the event
stream, and bracketed IPv6 ``Host`` headers."""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

from procqueue import InvalidArgumentError, ProcQueue
from procqueue.dashboard import Dashboard, DashboardOptions
from procqueue.dashboard._server import DashboardServer

REQUEST_THREAD = "procqueue-dashboard-request"
#: Printable ASCII less the cookie's ``space " , ; \\`` and the URL's ``# & + %``.
ALLOWED_IN_TOKENS = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' ",;\\#&+%')


def request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == REQUEST_THREAD]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition`` (a state other threads reach), failing at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.005)


def get(
    dash: Dashboard, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(dash.host, dash.port, timeout=10)
    try:
        conn.request(method, target, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


@pytest.fixture
def pool() -> Iterator[ProcQueue]:
    with ProcQueue(max_workers=1, dashboard={"port": 0}) as p:
        yield p


def dash_of(pool: ProcQueue) -> Dashboard:
    assert pool.dashboard is not None
    return pool.dashboard


# ---------------------------------------------------------------- 1: idle connections


@pytest.mark.parametrize("closer", ["pool", "dashboard"])
def test_idle_connections_do_not_hold_the_close_up(closer: str) -> None:
    """A browser's preconnects (connected, nothing sent) and a half-sent
    request each held the close up 5 s (one join per thread) and their
    handlers lived on up to the 30 s request timeout."""
    pool = ProcQueue(max_workers=1)
    socks: list[socket.socket] = []
    try:
        dash = pool.serve_dashboard(port=0)
        socks = [socket.create_connection((dash.host, dash.port), timeout=10) for _ in range(3)]
        socks[-1].sendall(b"GET /api/stats HTTP/1.0\r\n")  # and never the blank line
        # The handlers must be running (accepted, blocked reading) before the close.
        wait_until(lambda: len(request_threads()) == len(socks))
        start = time.monotonic()
        if closer == "pool":
            pool.shutdown()
        else:
            dash.close()
        elapsed = time.monotonic() - start
        assert elapsed < 3.0, f"closing took {elapsed:.1f} s"
        assert not request_threads()
        for s in socks:
            assert s.recv(1) == b""  # the server's end is closed, not just idle
    finally:
        for s in socks:
            s.close()
        pool.shutdown()


def test_finish_stop_waits_one_deadline_for_all_threads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler stuck outside its socket (a backend call) is not ended by
    the shutdown; three of them cost one ``join_timeout``, not three."""
    server = DashboardServer(("127.0.0.1", 0), cast(Any, None))
    release = threading.Event()
    monkeypatch.setattr(server, "finish_request", lambda request, address: release.wait())
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for ours, _theirs in pairs:
            server.process_request(ours, ("127.0.0.1", 0))
        server.stop()
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="procqueue.dashboard"):
            server.finish_stop(join_timeout=1.0)
        elapsed = time.monotonic() - start
        assert elapsed < 2.4, f"finish_stop took {elapsed:.2f} s (3 x 1 s is one join each)"
        assert "3 request thread(s) still running" in caplog.text
    finally:
        release.set()
        for thread in request_threads():
            thread.join(10)
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


# ---------------------------------------------------------------- 2: tokens


@pytest.mark.parametrize(
    "token",
    [
        "пароль-12345",  # not Latin-1: the Set-Cookie header cannot be encoded
        "naïve-token-1",  # Latin-1 but not ASCII: not a cookie octet
        "abc;defgh",  # ends the cookie's value
        "abc,defgh",
        "abc defgh",
        'abc"defgh',
        "abc\\defgh",
        "abc\tdefgh",
        "abc&defgh",  # url's ?token= would split here
        "abc+defgh",  # ... read this as a space
        "abc%41defg",  # ... unescape this
        "abc#defgh",  # ... and a browser never sends what follows this
    ],
)
def test_a_token_a_cookie_header_or_url_cannot_carry_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgumentError, match="dashboard token cannot hold") as info:
        DashboardOptions(token=token)
    assert token not in str(info.value)  # a secret stays out of logs and tracebacks
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(InvalidArgumentError):
            pool.serve_dashboard(port=0, host="0.0.0.0", token=token)
        assert pool.dashboard is None


def test_every_allowed_token_character_gets_through_url_cookie_and_headers() -> None:
    """The allowed set is not narrower than it must be: a token of every
    allowed character works the three ways a token travels."""
    token = ALLOWED_IN_TOKENS
    with ProcQueue(max_workers=1) as pool:
        dash = pool.serve_dashboard(port=0, token=token)
        url = urlsplit(dash.url)
        status, headers, _ = get(dash, f"{url.path}?{url.query}")
        assert status == 303, status
        cookie = headers["Set-Cookie"].split("; ")[0]
        assert cookie == f"{dash.cookie_name}={token}"
        assert get(dash, "/api/stats", {"Cookie": cookie})[0] == 200
        assert get(dash, "/api/stats", {"Authorization": f"Bearer {token}"})[0] == 200
        assert get(dash, "/api/stats", {"X-Procqueue-Token": token})[0] == 200
        assert get(dash, "/api/stats", {"Cookie": cookie[:-1]})[0] == 403


# ---------------------------------------------------------------- 3: HEAD /api/events


def test_head_on_events_sends_headers_only(pool: ProcQueue) -> None:
    dash = dash_of(pool)
    with socket.create_connection((dash.host, dash.port), timeout=10) as s:
        s.sendall(b"HEAD /api/events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        # Until the server closes (the handler is done, no stream slot held),
        # or at once if a body byte comes.
        while chunk := s.recv(4096):
            data += chunk
            if data.partition(b"\r\n\r\n")[2]:
                break
        head, end, body = data.partition(b"\r\n\r\n")
        assert end and body == b"", data
        assert head.startswith(b"HTTP/1.0 200")
        assert b"Content-Type: text/event-stream" in head
    wait_until(lambda: not request_threads())


# ---------------------------------------------------------------- 4: IPv6 Host headers


def test_bracketed_ipv6_host_headers(pool: ProcQueue) -> None:
    dash = dash_of(pool)
    for host in ("[::1]", f"[::1]:{dash.port}", "[::1]:", "[0:0:0:0:0:0:0:1]", "LOCALHOST"):
        assert get(dash, "/api/stats", {"Host": host})[0] == 200, host
    for host in ("[::2]", "[::1", "[::1]x", "[::1]:80x", "::1", "[evil.example]", "a:b:c"):
        assert get(dash, "/api/stats", {"Host": host})[0] == 403, host


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("[::1]", "::1"),
        ("[::1]:8765", "::1"),
        ("localhost:8765", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1", None),
        ("[::1]8765", None),
        ("::1", None),
        ("[]", None),
        ("host:port", None),
    ],
)
def test_host_of(header: str, host: str | None) -> None:
    from procqueue.dashboard._server import _host_of

    assert _host_of(header) == host
