"""What a task and its outcome look like inside their signed envelopes.

A task is the local engine's own payload (``wire.dump_callable`` and
``wire.dump_arguments``) flattened to bytes, so a node hands it to a worker
as it is: the node's own process never unpickles user code; only a worker,
after the signature was checked, does. Values and exceptions are pickled by
the node from what its worker returned.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import Any

import cloudpickle

from .._runtime import wire

__all__ = ["dump_call", "dump_outcome", "load_call", "load_outcome"]

_LEN = struct.Struct("<I")


def dump_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    fn_blob = wire.dump_callable(fn)
    segments = wire.dump_arguments(args, kwargs)
    return b"".join([_LEN.pack(len(fn_blob)), fn_blob, *(bytes(memoryview(s)) for s in segments)])


def load_call(data: bytes) -> tuple[bytes, list[Any]]:
    """The engine's payload ``(callable blob, argument segments)``, unpickling nothing."""
    (n,) = _LEN.unpack_from(data, 0)
    return data[4 : 4 + n], [data[4 + n :]]


def dump_outcome(value: Any) -> bytes:
    return bytes(cloudpickle.dumps(value, protocol=5))


def load_outcome(data: bytes) -> Any:
    """Unpickle a value or exception (only ever after its signature checked)."""
    return pickle.loads(data)
