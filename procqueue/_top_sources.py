"""Where ``procqueue top`` reads its snapshots: a dashboard's ``/api/stats``
(:class:`HttpSource`) or a Redis broker (:class:`BrokerSource`), and what
must not leak from either: a broker URL's password is shown and logged
redacted, and the dashboard token goes to the ``--url`` origin only
(redirects are refused, loopback is never sent through a proxy).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from typing import Any, Protocol
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

__all__ = ["TOKEN_ENV", "BrokerSource", "HttpSource", "SnapshotError", "Source"]

#: Read when neither ``--token`` nor the URL gives one, as ``procqueue dashboard`` does.
TOKEN_ENV = "PROCQUEUE_DASHBOARD_TOKEN"


class Source(Protocol):
    """Where snapshots come from. ``label`` names it in the header."""

    label: str

    def fetch(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class SnapshotError(Exception):
    """A fetch failed; the message is what the screen shows."""


def check_snapshot(payload: object) -> dict[str, Any]:
    """``payload`` if it is a snapshot this view can show, else ``SnapshotError``."""
    if (
        not isinstance(payload, dict)
        or payload.get("kind") not in ("local", "cluster")
        or not isinstance(payload.get("stats"), dict)
    ):
        raise SnapshotError('unexpected answer: want {"kind": "local"|"cluster", "stats": {...}}')
    return payload


class HttpSource:
    """A dashboard's ``GET {url}/api/stats``, with ``Authorization: Bearer
    <token>`` when a token is given (else the URL's ``?token=``, else
    ``fallback_token``: ``$PROCQUEUE_DASHBOARD_TOKEN`` from the CLI).

    Redirects are refused, not followed: urllib would carry the
    ``Authorization`` header along, to any host and port, and the dashboard's
    ``/api/stats`` never redirects. A loopback URL never goes through a proxy
    (``$http_proxy``): one there cannot reach this machine's dashboard, and would
    see the token; other hosts use the environment's proxy as urllib does, since a
    remote dashboard may be reachable only through it."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 5.0,
        *,
        fallback_token: str | None = None,
    ) -> None:
        # The URL a dashboard prints carries its token (``/?token=...``): it
        # is taken from there (unless given), and neither shown nor sent in
        # the path.
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        #: Where the token came from, for the message when it is refused.
        self._token_from = "--token"
        if not token and query.get("token"):
            token, self._token_from = query["token"][0], "the URL's ?token="
        if not token and fallback_token:
            token, self._token_from = fallback_token, f"${TOKEN_ENV}"
        base = urlunsplit(parts._replace(query="", fragment=""))
        self.label = base
        self._endpoint = base.rstrip("/") + "/api/stats"
        self._headers = {"Accept": "application/json"}
        self._has_token = bool(token)
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._opener = _opener(parts.hostname)

    def fetch(self) -> dict[str, Any]:
        request = urllib.request.Request(self._endpoint, headers=self._headers)
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as e:
            e.close()
            raise SnapshotError(self._refused(e)) from e
        except urllib.error.URLError as e:
            raise SnapshotError(f"cannot reach {self._endpoint}: {e.reason}") from e
        except (OSError, ValueError) as e:  # timeouts, resets, bad JSON
            raise SnapshotError(f"{self._endpoint}: {e}") from e
        return check_snapshot(payload)

    def _refused(self, e: urllib.error.HTTPError) -> str:
        message = f"{self._endpoint}: HTTP {e.code} {e.reason}"
        if 300 <= e.code < 400:
            # Shown without its query: it may carry a token of its own.
            where = urljoin(self._endpoint, e.headers.get("Location") or "")
            where = urlunsplit(urlsplit(where)._replace(query="", fragment=""))
            return (
                f"{message}: a redirect to {where}, not followed (the token would go "
                "with it); pass the dashboard's own address as --url"
            )
        if e.code in (401, 403):
            if self._has_token:
                return f"{message}: the token (from {self._token_from}) was refused"
            return f"{message}: this dashboard needs its token (pass --token or set ${TOKEN_ENV})"
        return message

    def close(self) -> None:
        self._opener.close()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hands every 3xx back as an ``HTTPError`` (see :class:`HttpSource`)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(host: str | None) -> urllib.request.OpenerDirector:
    """urllib's opener, without redirects, and without a proxy for a loopback ``host``."""
    from .dashboard._options import is_loopback

    handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
    if host is not None and is_loopback(host):
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _hide_password(text: str, url: str) -> str:
    """``text`` (an error message) with ``url``'s password starred out."""
    password = urlsplit(url).password
    if not password:
        return text
    from .dashboard._redis_serve import redact

    return text.replace(url, redact(url)).replace(f":{password}@", ":***@")


class BrokerSource:
    """A Redis cluster, through a broker client's ``get_stats()`` (the secret
    from ``$PROCQUEUE_SECRET`` or ``secret_file``, as for ``procqueue worker``)."""

    def __init__(
        self, url: str, queue: str, secret_file: str | None = None, insecure: bool = False
    ) -> None:
        from .dashboard._redis_serve import redact

        # What ProcQueue(broker=url, queue=...) builds, named for the type checker.
        from .redis._client import RemoteProcQueue

        self._url = url
        self.label = f"{redact(url)} queue {queue!r}"
        self._pool = RemoteProcQueue(
            broker=url, queue=queue, secret_file=secret_file, insecure=insecure
        )

    def fetch(self) -> dict[str, Any]:
        try:
            stats = self._pool.get_stats()
        except Exception as e:  # redis-py's errors: the view retries next refresh
            raise SnapshotError(f"{self.label}: {_hide_password(str(e), self._url)}") from e
        return {"kind": "cluster", "stats": dataclasses.asdict(stats)}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
