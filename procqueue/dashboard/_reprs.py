"""Truncated reprs of task arguments and results for the task page.

Arguments exist only as the pickled call the coordinator keeps until a task is
final (and a dead letter keeps to run it again); they are unpickled on demand,
for one page view, outside the engine lock, and never kept. Large pickles are
not decoded at all: "memory grows with large arguments" is a complaint about
other dashboards we mean not to earn.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import Any

__all__ = ["call_reprs", "short_repr"]

#: Pickled calls above this size are described, not decoded.
MAX_DECODE = 1 << 20


class _Repr(reprlib.Repr):
    """``reprlib.Repr`` with binary sequences cut before their repr is made:
    it has no handler for them and falls back to the whole ``repr()`` (200 MB
    of text to show 1,000 characters of a 50 MB result)."""

    def repr_bytes(self, x: Any, level: int) -> str:
        head = x[: self.maxstring]  # bytes and bytearray slice to their own type
        text = repr(head)
        if len(head) < len(x):
            text += f"... ({len(x):,} bytes)"
        return text

    repr_bytearray = repr_bytes

    def repr_memoryview(self, x: Any, level: int) -> str:
        return f"<memoryview of {x.nbytes:,} bytes>"


def _repr_engine(limit: int) -> reprlib.Repr:
    r = _Repr()
    r.maxlevel = 4
    r.maxstring = max(16, limit // 2)
    r.maxother = max(16, limit // 2)
    r.maxlong = 60
    for attr in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
        setattr(r, attr, 12)
    return r


def short_repr(value: Any, limit: int) -> str:
    """``repr(value)``, nested containers abridged and cut at ``limit``
    characters; never raises."""
    try:
        text = _repr_engine(limit).repr(value)
    except Exception as e:  # a user __repr__ may raise anything
        text = f"<repr failed: {type(e).__name__}: {e}>"
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text


def call_reprs(payload: tuple[bytes, Sequence[Any]] | None, limit: int) -> dict[str, Any] | None:
    """``{"args": [...], "kwargs": {...}}`` of a pickled call as reprs, or a
    note saying why not (``None``: no payload kept)."""
    if payload is None:
        return None
    segments = payload[1]
    try:
        size = sum(memoryview(s).nbytes for s in segments)
    except TypeError:
        return {"note": "arguments in an unknown form"}
    if size > MAX_DECODE:
        return {"note": f"arguments not decoded ({size:,} bytes pickled)"}
    try:
        from .._runtime._calls import load_value

        args, kwargs = load_value(memoryview(b"".join(segments)))
    except Exception as e:  # unpickling user data: anything may go wrong
        return {"note": f"arguments could not be decoded: {type(e).__name__}: {e}"}
    return {
        "args": [short_repr(a, limit) for a in args],
        "kwargs": {str(k): short_repr(v, limit) for k, v in kwargs.items()},
    }
