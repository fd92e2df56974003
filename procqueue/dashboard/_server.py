"""The dashboard's HTTP side: the standard library's ``http.server`` (no
dependency), one thread per request, routes for the pages' assets, the JSON
API under ``/api/``, Server-Sent Events and ``/metrics``.

Security (issue #10): without a token the server only answers requests whose
``Host`` names a loopback address (a DNS-rebinding page cannot reach it by a
name of its own); with a token every request must carry it. Actions are
``POST`` with a JSON body and the ``X-CSRF-Token`` header (a value only a page
served from here can read), and are refused outright when ``read_only``.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..errors import InvalidArgumentError, OptionTypeError, QueueClosedError, TaskNotFoundError
from ._monitor import dumps
from ._options import is_loopback
from ._source import DeadLetterFilter, TaskQuery, unreachable

if TYPE_CHECKING:
    from ._app import Dashboard

__all__ = ["DashboardServer"]

_log = logging.getLogger("procqueue.dashboard")

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
#: Seconds an SSE stream waits before a keep-alive comment.
KEEPALIVE = 15.0
#: Live SSE streams at once (each holds a thread).
MAX_STREAMS = 32
_MAX_BODY = 1 << 16
#: A Host header: a bracketed IPv6 literal (its own colons are not the port's,
#: so cutting at the last colon would leave "[:" of "[::1]") or a name, each
#: with an optional port. A bare IPv6 address, which must be bracketed, fails.
_HOST = re.compile(r"\[([0-9a-f:.]+)\](?::[0-9]*)?|([^:\[\]]+)(?::[0-9]*)?")


def _load_assets() -> dict[str, tuple[bytes, str]]:
    out = {}
    root = resources.files("procqueue.dashboard").joinpath("static")
    for entry in root.iterdir():
        name = entry.name
        ext = name[name.rfind(".") :]
        if entry.is_file() and ext in _TYPES:
            out[name] = (entry.read_bytes(), _TYPES[ext])
    return out


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class DashboardServer(ThreadingHTTPServer):
    """A threading HTTP server with a wake-up pipe instead of a polling
    ``serve_forever``, and request threads that are tracked and joined on
    close. Every accepted socket is tracked too and shut on close, so no
    handler outlives it: not an SSE stream, nor a client that connected and
    sent nothing (a browser's preconnect), which would otherwise sit in
    ``readline`` until the handler's 30 s timeout.

    Invariant: a socket is in ``_connections`` from its accept until just
    before it is closed, and both moves happen under ``_guard``; :meth:`stop`
    shuts them under the same lock, so it never touches a closed socket (whose
    descriptor number may already belong to another file).
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: Dashboard) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.app = app
        self.assets = _load_assets()
        self._request_threads: set[threading.Thread] = set()
        self._connections: set[socket.socket] = set()
        self._streams: set[socket.socket] = set()
        self._guard = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False

    # ------------------------------------------------------------------ loop

    def serve(self) -> None:
        """Accept until :meth:`stop` (in the dashboard's server thread)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._stopping:
                        return
                    try:
                        request, client = self.get_request()
                    except OSError:
                        continue
                    if self.verify_request(request, client):
                        self.process_request(request, client)
                    else:
                        self.shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run_request,
            args=(request, client_address),
            name="procqueue-dashboard-request",
            daemon=True,
        )
        with self._guard:
            self._request_threads.add(thread)
            self._connections.add(request)
            if self._stopping:
                # Accepted as stop() ran, after it shut the others: shut this
                # one too, so its handler reads EOF at once.
                _shut(request)
        thread.start()

    def _run_request(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._guard:
                self._request_threads.discard(threading.current_thread())

    def shutdown_request(self, request: Any) -> None:
        # Forget the socket before it is closed (see the class's invariant).
        with self._guard:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("dashboard request from %s failed", client_address, exc_info=True)

    def add_stream(self, sock: socket.socket) -> bool:
        with self._guard:
            if self._stopping or len(self._streams) >= MAX_STREAMS:
                return False
            self._streams.add(sock)
            return True

    def drop_stream(self, sock: socket.socket) -> None:
        with self._guard:
            self._streams.discard(sock)

    def stop(self) -> None:
        """Stop accepting and shut every open connection (streams, idle
        connections, half-sent requests): each handler then reads EOF or
        fails its next write, and ends."""
        with self._guard:
            self._stopping = True
            for sock in self._connections:
                _shut(sock)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def finish_stop(self, join_timeout: float = 5.0) -> None:
        """After the accept loop has returned: close the listening socket and
        join the request threads, all of them within ``join_timeout`` seconds
        in total (one deadline, not one per thread)."""
        self.server_close()
        with self._guard:
            threads = list(self._request_threads)
        deadline = time.monotonic() + join_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = sum(thread.is_alive() for thread in threads)
        if stuck:
            # Their sockets are shut, so only a handler blocked outside its
            # socket (a backend call) gets here; they are daemons and end with
            # the call.
            _log.warning(
                "dashboard: %d request thread(s) still running %.1f s after close",
                stuck,
                join_timeout,
            )
        self._wake_r.close()
        self._wake_w.close()


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.0"
    server_version = "procqueue-dashboard"
    sys_version = ""
    #: Seconds a client may take to send its request or read a response.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ dispatch

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        try:
            if not self._authorized(method, path):
                return
            if method == "POST":
                self._check_action()
            for route_method, pattern, handler in _ROUTES:
                if route_method != method:
                    continue
                m = pattern.fullmatch(path)
                if m is not None:
                    handler(self, *m.groups())
                    return
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        except _HTTPError as e:
            self._json(e.status, {"error": str(e)})
        except TaskNotFoundError as e:
            self._json(HTTPStatus.NOT_FOUND, {"error": _message(e)})
        except (InvalidArgumentError, OptionTypeError, ValueError) as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except QueueClosedError as e:
            self._json(HTTPStatus.CONFLICT, {"error": str(e)})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away
        except Exception as e:
            if unreachable(app.source, e):
                self._json(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    {"error": f"the queue's backend is unreachable: {e}"},
                )
                return
            _log.exception("dashboard: %s %s failed", method, path)
            if not app.closing:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (logged)"})

    # ------------------------------------------------------------------ security

    def _authorized(self, method: str, path: str) -> bool:
        app = self.server.app
        token = app.options.token
        if token is None:
            header = self.headers.get("Host") if self.headers else None
            host = _host_of(header) if header else ""
            if host is None or (host and not (is_loopback(host) or host == app.options.host)):
                # A DNS-rebinding page names itself, not a loopback address.
                self._json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
                return False
            return True
        given = self._given_token()
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            if "token" in self.query and method == "GET" and not path.startswith("/api/"):
                # Once, from the URL: keep it in a cookie, drop it from the address bar.
                self.send_response(HTTPStatus.SEE_OTHER)
                self.send_header(
                    "Set-Cookie",
                    f"{app.cookie_name}={token}; Path=/; HttpOnly; SameSite=Strict",
                )
                self.send_header("Location", path)
                self._common_headers()
                self.end_headers()
                return False
            return True
        status = HTTPStatus.UNAUTHORIZED if given is None else HTTPStatus.FORBIDDEN
        if path.startswith("/api/") or path == "/metrics":
            self._json(status, {"error": "a valid dashboard token is required"})
        else:
            body = (
                b"<!doctype html><title>procqueue</title><p>This dashboard needs its token: "
                b"open it with <code>?token=...</code> (see <code>dashboard.url</code>).</p>"
            )
            self._bytes(status, body, "text/html; charset=utf-8")
        return False

    def _given_token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:].strip()
        header = self.headers.get("X-Procqueue-Token")
        if header:
            return header.strip()
        if "token" in self.query:
            return self.query["token"]
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.server.app.cookie_name:
                return value
        return None

    def _check_action(self) -> None:
        app = self.server.app
        if app.options.read_only:
            raise _HTTPError(HTTPStatus.FORBIDDEN, "this dashboard is read-only")
        csrf = self.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(csrf.encode(), app.csrf.encode()):
            raise _HTTPError(HTTPStatus.FORBIDDEN, "missing or wrong X-CSRF-Token")
        origin = self.headers.get("Origin")
        host = self.headers.get("Host")
        if origin and host and urlsplit(origin).netloc != host:
            raise _HTTPError(HTTPStatus.FORBIDDEN, "cross-origin action refused")

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if length < 0:  # read(-n) would read to the end of the stream, unbounded
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        if length > _MAX_BODY:
            raise _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        if not length:
            return {}
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("application/json"):
            raise _HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
        data = json.loads(self.rfile.read(length))
        if not isinstance(data, dict):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return data

    # ------------------------------------------------------------------ responses

    def _common_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Cache-Control", "no-store")

    def _bytes(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, value: Any) -> None:
        self._bytes(status, dumps(value), "application/json")

    # ------------------------------------------------------------------ pages

    def page(self) -> None:
        body, ctype = self.server.assets["index.html"]
        self._bytes(HTTPStatus.OK, body, ctype)

    def asset(self, name: str) -> None:
        found = self.server.assets.get(name)
        if found is None:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no such asset: {name}")
        self._bytes(HTTPStatus.OK, *found)

    # ------------------------------------------------------------------ API

    def session(self) -> None:
        app = self.server.app
        from .. import __version__

        self._json(
            HTTPStatus.OK,
            {
                "csrf": app.csrf,
                "read_only": app.options.read_only,
                "show_args": app.options.show_args,
                "kind": app.source.kind,
                "version": __version__,
                "metrics": app.registry is not None,
            },
        )

    def stats(self) -> None:
        self._json(HTTPStatus.OK, self.server.app.source.stats())

    def overview(self) -> None:
        self._json(HTTPStatus.OK, self.server.app.monitor.snapshot())

    def tasks(self) -> None:
        q = self.query
        query = TaskQuery(
            state=q.get("state") or None,
            name=q.get("name") or None,
            before=_int(q, "before"),
            limit=_int(q, "limit") or 50,
            task_id=_int(q, "id"),
        )
        self._json(HTTPStatus.OK, self.server.app.source.tasks(query))

    def task(self, task_id: str) -> None:
        self._json(HTTPStatus.OK, self.server.app.source.task(int(task_id)))

    def _filter(self, values: dict[str, Any]) -> DeadLetterFilter:
        name, exc = values.get("name") or None, values.get("exception") or None
        if not isinstance(name, (str, type(None))) or not isinstance(exc, (str, type(None))):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "name and exception filter by text")
        return DeadLetterFilter(name=name, exception=exc)

    def dead_letters(self) -> None:
        q = self.query
        source = self.server.app.source
        offset, limit = _int(q, "offset") or 0, _int(q, "limit") or 50
        result = source.dead_letters(self._filter(q), offset, limit)
        self._json(HTTPStatus.OK, result)

    def retry_one(self, task_id: str) -> None:
        self._json(HTTPStatus.OK, self.server.app.source.retry_dead_letter(int(task_id)))

    def retry_all(self) -> None:
        flt = self._filter(self._body())
        self._json(HTTPStatus.OK, self.server.app.source.retry_dead_letters(flt))

    def purge(self) -> None:
        body = self._body()
        ids = body.get("ids")
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, int) for i in ids)
        ):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "ids must be a list of task ids")
        result = self.server.app.source.purge_dead_letters(self._filter(body), ids)
        self._json(HTTPStatus.OK, result)

    def schedules(self) -> None:
        self._json(HTTPStatus.OK, self.server.app.source.schedules())

    def schedule_action(self, name: str, op: str) -> None:
        from urllib.parse import unquote

        self._body()
        result = self.server.app.source.control_schedule(unquote(name), op)
        self._json(HTTPStatus.OK, result)

    def limits(self) -> None:
        self._json(HTTPStatus.OK, self.server.app.source.limits())

    def metrics(self) -> None:
        registry = self.server.app.registry
        if registry is None:
            self._bytes(
                HTTPStatus.NOT_IMPLEMENTED,
                b"metrics need prometheus-client: pip install 'procqueue[metrics]'\n",
                "text/plain; charset=utf-8",
            )
            return
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        self._bytes(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)

    def _stream_headers(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-Accel-Buffering", "no")
        self._common_headers()
        self.end_headers()

    def events(self) -> None:
        """Server-Sent Events: the newest overview whenever it changes (at
        most 4 a second), a comment every 15 s to keep proxies from closing."""
        server, monitor = self.server, self.server.app.monitor
        if self.command == "HEAD":
            # Headers only: a HEAD must neither get a body nor hold a stream slot.
            self._stream_headers()
            return
        sock = self.connection
        if not server.add_stream(sock):
            raise _HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, "too many live clients")
        monitor.attach()
        try:
            self._stream_headers()
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            version = _int(self.query, "after") or 0
            while not monitor.closed:
                got = monitor.wait(version, KEEPALIVE)
                if got is None:
                    if monitor.closed:
                        break
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    version, payload = got
                    self.wfile.write(b"id: %d\nevent: overview\ndata: %s\n\n" % (version, payload))
                self.wfile.flush()
        except OSError:
            pass  # the browser left, or the dashboard is closing
        finally:
            monitor.detach()
            server.drop_stream(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut by its handler, or the peer reset it


def _host_of(header: str) -> str | None:
    """The host named by a ``Host`` header, lower-cased, without its port or an
    IPv6 literal's brackets (``[::1]:8765`` -> ``::1``); None if malformed."""
    m = _HOST.fullmatch(header.strip().lower())
    if m is None:
        return None
    return m[1] if m[1] is not None else m[2]


def _message(e: KeyError) -> str:
    return str(e.args[0]) if e.args else "not found"


def _int(q: dict[str, Any], key: str) -> int | None:
    value = q.get(key)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"{key} must be an integer") from None


_Route = tuple[str, re.Pattern[str], Callable[..., None]]
_ROUTES: list[_Route] = [
    ("GET", re.compile(p), h)
    for p, h in (
        (r"/", _Handler.page),
        (r"/static/([A-Za-z0-9_.-]+)", _Handler.asset),
        (r"/favicon\.ico", lambda h: h.asset("favicon.svg")),
        (r"/api/session", _Handler.session),
        (r"/api/stats", _Handler.stats),
        (r"/api/overview", _Handler.overview),
        (r"/api/tasks", _Handler.tasks),
        (r"/api/tasks?/(\d+)", _Handler.task),
        (r"/api/dead-letters", _Handler.dead_letters),
        (r"/api/schedules", _Handler.schedules),
        (r"/api/limits", _Handler.limits),
        (r"/api/events", _Handler.events),
        (r"/metrics", _Handler.metrics),
    )
] + [
    ("POST", re.compile(p), h)
    for p, h in (
        (r"/api/dead-letters/(\d+)/retry", _Handler.retry_one),
        (r"/api/dead-letters/retry", _Handler.retry_all),
        (r"/api/dead-letters/purge", _Handler.purge),
        (r"/api/schedules/([^/]+)/(pause|resume|run-now)", _Handler.schedule_action),
    )
]
