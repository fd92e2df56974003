"""What a task and its outcome look like inside their signed envelopes.

A task is the local engine's own payload (``_calls.dump_callable`` and
``_calls.dump_arguments``) flattened to bytes, so a node hands it to a worker
as it is: the node's own process never unpickles user code; only a worker,
after the signature was checked, does. Values and exceptions are pickled by
the node from what its worker returned.

A dependent's ``result_of`` markers are bound in the worker too: the node
wraps the call (:func:`bind_call`) as ``run_bound(fn blob, argument blob,
upstream values)``, all of them bytes it has verified but not opened, and the
worker unpickles them and binds the markers just before the call.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cloudpickle

from .._core.deps import ResultOf, bind
from .._runtime import _calls
from ..errors import RemoteTraceback, TaskCancelledError, UpstreamFailedError

if TYPE_CHECKING:
    from ._protocol import Input

__all__ = [
    "bind_call",
    "dump_call",
    "dump_outcome",
    "encodable",
    "error_text",
    "load_call",
    "load_outcome",
    "move_markers",
    "node_gone",
    "run_bound",
    "split_error",
]

#: Between an error's ``Type: message`` and its remote traceback in the text a
#: node stores (ASCII record separator: it does not occur in either).
TB_SEP = "\x1e"
#: The traceback's tail kept in Redis (the innermost frames matter most).
TB_MAX = 8000


def error_text(exc: BaseException) -> str:
    """How a node stores a failed attempt's error: ``Type: message``, then the
    worker's traceback (an exception's ``__cause__`` does not survive pickling,
    so the text is what carries it to clients and the dashboard). Always
    encodable as UTF-8 (see :func:`encodable`)."""
    text = f"{type(exc).__name__}: {exc}".replace(TB_SEP, " ")
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        text += TB_SEP + cause.tb.strip().strip('"').strip()[-TB_MAX:]
    return encodable(text)


def encodable(text: str) -> str:
    """``text`` with whatever UTF-8 cannot encode written as escapes
    (``caf\\udce9``): a lone surrogate, as ``os.fsdecode`` makes of a file
    name that is not UTF-8, would otherwise make redis-py raise
    ``UnicodeEncodeError`` when it sends the report."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text  # the common case: no copy


def split_error(text: str) -> tuple[str, str]:
    """``(Type: message, traceback)`` from :func:`error_text`'s text."""
    message, _, tb = text.partition(TB_SEP)
    return message, tb


#: A node's entry in ``{pq:Q}:nodes`` (its heartbeat, written every third of
#: its lease) is stale once older than this many of its leases: the node is
#: gone (SIGKILLed, its host lost), since a live one beats nine times in that
#: span. Live nodes delete stale entries (once a lease: ``_node.PRUNE_EVERY``);
#: stats skip them.
GONE_AFTER_LEASES = 3
#: The lease assumed for an entry that does not carry its own (written by an
#: older node): the default ``--lease``.
DEFAULT_LEASE = 30.0


def node_gone(entry: dict[str, Any], now: float) -> bool:
    """Whether a ``{pq:Q}:nodes`` entry (its JSON, decoded) is stale at ``now``
    (Redis's clock, in seconds): see :data:`GONE_AFTER_LEASES`. An entry that
    cannot be read is stale too (nothing could show it)."""
    try:
        lease = float(entry.get("lease", DEFAULT_LEASE))
        return now - float(entry["beat"]) > GONE_AFTER_LEASES * lease
    except (KeyError, TypeError, ValueError):
        return True


_LEN = struct.Struct("<I")


def dump_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    fn_blob = _calls.dump_callable(fn)
    segments = _calls.dump_arguments(args, kwargs)
    return b"".join([_LEN.pack(len(fn_blob)), fn_blob, *(bytes(memoryview(s)) for s in segments)])


def load_call(data: bytes) -> tuple[bytes, Sequence[Any]]:
    """The engine's payload ``(callable blob, argument segments)``, unpickling nothing."""
    (n,) = _LEN.unpack_from(data, 0)
    return data[4 : 4 + n], [data[4 + n :]]


def move_markers(data: bytes, moves: dict[int, int]) -> bytes:
    """A call whose ``result_of`` markers stand for other tasks: each marker of
    task ``old`` becomes one of ``moves[old]`` (every marker's id must be a
    key). For ``requeue(..., cascade=True)``, which re-arms a dependent on
    the new ids of its upstream tasks, as the local engine does with
    ``_calls.bind_inputs``: the arguments are unpickled (the caller checked
    their signature first) and pickled again; the callable is not."""
    fn_blob, segments = load_call(data)
    moved = {old: ResultOf(new) for old, new in moves.items()}
    _, bound = _calls.bind_inputs((fn_blob, segments), moved)
    return b"".join([_LEN.pack(len(fn_blob)), fn_blob, *(bytes(memoryview(s)) for s in bound)])


def dump_outcome(value: Any) -> bytes:
    """Pickle a value or exception: by the stdlib's C pickler when it can
    (most results: ~10x cheaper than cloudpickle's pure-Python set-up per
    call), else by cloudpickle (a class or function from a client's
    ``__main__`` lives in the node only as the dynamic object cloudpickle
    rebuilt, which the stdlib cannot pickle by reference: it raises)."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        return bytes(cloudpickle.dumps(value, protocol=5))


def load_outcome(data: bytes) -> Any:
    """Unpickle a value or exception (only ever after its signature checked)."""
    return pickle.loads(data)


def bind_call(data: bytes, inputs: tuple[Input, ...]) -> tuple[bytes, Sequence[Any]]:
    """The engine's payload for a call whose ``result_of`` markers take
    ``inputs``: ``run_bound`` (pickled by reference) with the call's own blobs
    and the upstream values as its arguments. Only bytes, ints and strings are
    pickled here; nothing is unpickled."""
    (n,) = _LEN.unpack_from(data, 0)
    rows = tuple((i.task_id, i.state, i.value, i.error, i.upstream) for i in inputs)
    args = (bytes(data[4 : 4 + n]), bytes(data[4 + n :]), rows)
    return _calls.dump_callable(run_bound), _calls.dump_arguments(args, {})


def run_bound(
    fn_blob: bytes,
    arg_blob: bytes,
    inputs: tuple[tuple[int, str, bytes | None, str, int | None], ...],
) -> Any:
    """In the worker: unpickle the call and its upstream values (the node
    verified their signatures), bind the markers, run it."""
    fn = pickle.loads(fn_blob)
    args, kwargs = _calls.load_value(memoryview(arg_blob))
    values = {row[0]: _upstream_value(*row) for row in inputs}
    # One walk for both: a list that args and kwargs share stays one list.
    args, kwargs = bind((tuple(args), kwargs), values)
    return fn(*args, **kwargs)


def _upstream_value(
    tid: int, state: str, blob: bytes | None, error: str, upstream: int | None
) -> Any:
    """What a marker binds to, as on a local queue: the value; under
    ``all_done``, a failed upstream's exception, a cancelled one's
    ``TaskCancelledError``."""
    if blob is not None:
        return load_outcome(blob)
    if state == "cancelled":
        text = error if error and error != "cancelled" else f"task {tid} was cancelled"
        return TaskCancelledError(text)
    if state == "failed":
        message = error.split(": ", 1)[1] if ": " in error else error
        if upstream is not None:  # it never ran: its upstream failed
            return UpstreamFailedError(message, upstream)
        from ._remote import RemoteTaskFailedError  # its exception did not pickle

        return RemoteTaskFailedError(f"task {tid} failed: {error}")
    return None
