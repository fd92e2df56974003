"""Script calls on connections kept aside from redis-py's client layer.

Every broker step is one ``EVALSHA``. Through ``redis.Redis`` each costs about
45 µs of Python before and after the round trip (a pool checkout, a retry
wrapper, event dispatch, response callbacks): on this project's 2-core box a
plain ``EVALSHA`` of ``return 1`` took 100-130 µs of wall time that way, and
40-50 µs on one of the client's own ``Connection`` objects, written to and
read from directly. A no-op task costs a submit, a share of a claim, of a
finish and of a result read, so that layer was a fifth of its cost end to end
(issue #9).

A :class:`Lanes` keeps a few such connections, checked out of the client's
own pool (so a URL's password, TLS and database hold, and the client's
``close()`` closes them too), one per thread at a time. Their
failure behaviour is redis-py's own: a connection is checked when it is taken
(one the server closed reconnects), an error reply is raised as its
``ResponseError`` and leaves the connection usable; anything else (a lost
connection, a timeout, an interrupt mid-reply) drops the connection, which
reconnects on its next use, and the error is raised to the caller, exactly as
``Redis.execute_command`` does without retries. A script Redis does not know
(a restarted or flushed server) is loaded and run again, as
``redis.commands.Script`` does.
"""

from __future__ import annotations

import hashlib
import os
import select
import threading
from collections.abc import Sequence
from typing import Any

#: Connections kept aside at most; more threads at once get one each from the
#: pool, and the extras go back to it.
MAX_IDLE = 8


class Lanes:
    """``call(script, keys, args)`` for the scripts of one client."""

    def __init__(self, client: Any) -> None:
        import redis.exceptions as rx

        self._pool = client.connection_pool
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._response_error: type[Exception] = rx.ResponseError
        self._no_script: type[Exception] = rx.NoScriptError

    def script(self, text: str) -> Script:
        return Script(self, text)

    def _take(self) -> Any:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours
                self._idle, self._pid = [], os.getpid()
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            # What the pool's checkout does: a connection the server closed
            # (restarted, timed out) reads as ready; it reconnects instead.
            # select() rather than its can_read(): no socket timeout set and
            # reset, no exception raised on the healthy path (a third of a
            # call's instructions went there).
            sock = conn._sock
            if sock is not None:
                try:
                    if select.select((sock,), (), (), 0)[0]:
                        conn.disconnect()
                except (OSError, ValueError):
                    conn.disconnect()
            return conn
        # Checked out of the client's pool and kept: the client's close()
        # disconnects it with the rest (redis-py 5.3 takes no argument here,
        # 5.0 wants a command name).
        try:
            return self._pool.get_connection()
        except TypeError:
            return self._pool.get_connection("EVALSHA")

    def _give(self, conn: Any) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE and self._pid == os.getpid():
                self._idle.append(conn)
                return
        self._pool.release(conn)

    def call(self, sha: str, text: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        conn = self._take()
        try:
            try:
                conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                reply = conn.read_response()
            except self._no_script:
                conn.send_command("SCRIPT", "LOAD", text)
                conn.read_response()
                conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                reply = conn.read_response()
        except self._response_error:
            self._give(conn)  # an error reply: the connection is in step
            raise
        except BaseException:
            conn.disconnect()  # mid-command: its state is unknown; reconnects on next use
            self._give(conn)
            raise
        self._give(conn)
        return reply


class Script:
    """One script: ``script(keys=[...], args=[...])``, like redis-py's."""

    __slots__ = ("_lanes", "_sha", "_text")

    def __init__(self, lanes: Lanes, text: str) -> None:
        self._lanes = lanes
        self._text = text
        self._sha = hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return self._lanes.call(self._sha, self._text, keys, args)
