"""The dashboard's settings as one frozen value, and the checks made before it
binds a socket (issue #10: loopback by default, a token anywhere else)."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..errors import InsecureDashboardError, InvalidArgumentError, OptionTypeError

__all__ = ["DashboardOptions", "is_loopback", "resolve_options"]

#: Characters of a repr shown for an argument or a result before it is cut.
DEFAULT_REPR_LIMIT = 2000
#: What a token may hold: printable ASCII, less what a cookie value cannot
#: carry (space ``"`` ``,`` ``;`` ``\\``, RFC 6265 4.1.1) and what ``url``'s
#: ``?token=`` would change on its way to the server (``#`` ends the URL,
#: ``&`` the parameter, ``+`` reads as a space, ``%`` starts an escape).
#: Anything else (non-Latin-1 text above all) cannot be set as a cookie, so
#: the browser would be locked out after the first visit.
TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set(' ",;\\#&+%')


@dataclass(frozen=True)
class DashboardOptions:
    """How a queue's dashboard is served.

    ``host``: the address to bind (default ``127.0.0.1``: this machine only);
    any other address needs a ``token``, or starting refuses with
    :class:`~procqueue.InsecureDashboardError`. ``port``: 0 picks a free one
    (read it back from the handle's ``url``). ``token``: required on every
    request (``Authorization: Bearer <token>``, the ``X-Procqueue-Token``
    header, or ``?token=`` once, which sets a cookie), so it is printable
    ASCII without spaces or ``" , ; \\ # & + %`` (``secrets.token_urlsafe()``
    fits); anything else raises :class:`~procqueue.InvalidArgumentError`.
    ``read_only``: hide and refuse every action (retry, purge, pause...).
    ``show_args``: show task arguments and results as truncated reprs;
    ``False`` hides them (they can hold secrets). ``repr_limit``: characters
    kept of each repr.

    >>> TaskQueue(num_workers=4, dashboard=DashboardOptions(port=8765, read_only=True))
    ... # doctest: +SKIP
    """

    port: int = 8765
    host: str = "127.0.0.1"
    token: str | None = None
    read_only: bool = False
    show_args: bool = True
    repr_limit: int = DEFAULT_REPR_LIMIT

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise OptionTypeError(f"dashboard port must be an int, got {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise InvalidArgumentError(f"dashboard port must be in 0..65535, got {self.port}")
        if not isinstance(self.host, str) or not self.host:
            raise OptionTypeError(f"dashboard host must be a non-empty str, got {self.host!r}")
        if self.token is not None:
            _check_token(self.token)
        for name in ("read_only", "show_args"):
            if not isinstance(getattr(self, name), bool):
                raise OptionTypeError(f"dashboard {name} must be a bool")
        if isinstance(self.repr_limit, bool) or not isinstance(self.repr_limit, int):
            raise OptionTypeError("dashboard repr_limit must be an int")
        if self.repr_limit < 16:
            raise InvalidArgumentError("dashboard repr_limit must be >= 16")

    def check_bind(self) -> None:
        """Refuse a non-loopback bind without a token."""
        if not is_loopback(self.host) and self.token is None:
            raise InsecureDashboardError(
                f"refusing to serve the dashboard on {self.host!r} without a token: anyone "
                "who can reach that address could read task arguments and retry or purge "
                "tasks. Pass token=... (e.g. secrets.token_urlsafe()) or bind 127.0.0.1"
            )


_OPTION_NAMES = frozenset(f.name for f in fields(DashboardOptions))


def resolve_options(spec: object, **overrides: Any) -> DashboardOptions:
    """``dashboard=`` as the front doors take it: a port (int), ``True`` (the
    default port), a mapping of :class:`DashboardOptions` fields, or an
    options value; ``overrides`` (not ``None``) win."""
    if isinstance(spec, DashboardOptions):
        opts = spec
    elif spec is True:
        opts = DashboardOptions()
    elif isinstance(spec, int) and not isinstance(spec, bool):
        opts = DashboardOptions(port=spec)
    elif isinstance(spec, Mapping):
        unknown = sorted(set(spec) - _OPTION_NAMES)
        if unknown:
            raise OptionTypeError(f"unknown dashboard option {unknown[0]!r}")
        opts = DashboardOptions(**dict(spec))
    else:
        raise OptionTypeError(
            f"dashboard takes a port, True, a dict or a DashboardOptions, got {spec!r}"
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(opts, **given) if given else opts


def _check_token(token: object) -> None:
    if not isinstance(token, str) or len(token) < 8:
        raise InvalidArgumentError("a dashboard token must be a str of at least 8 characters")
    bad = sorted(set(token) - TOKEN_CHARS)
    if bad:
        # The token itself is secret: name the characters, not the value.
        raise InvalidArgumentError(
            f"a dashboard token cannot hold {', '.join(map(repr, bad))}: it travels in a "
            "cookie, a header and the URL, so use printable ASCII without spaces or "
            '" , ; \\ # & + % (secrets.token_urlsafe() makes one)'
        )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_secret() -> str:
    """A random token (CSRF, session)."""
    return secrets.token_urlsafe(24)
