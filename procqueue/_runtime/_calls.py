"""The call codec: how a call and its values become the blobs that
``wire.py`` frames, and back. A callable is pickled once per function object
(:class:`CallRefs` sends it once per worker); arguments and results take the
C pickler when they are plain, cloudpickle otherwise, with buffers of 64 KiB or
more out of band (``_shm.py``); a dependent's ``result_of`` values are bound
into its arguments in the worker, from the upstream ``Result`` frames ("holes").
"""

from __future__ import annotations

import functools
import io
import pickle
import struct
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cloudpickle

from .._core.deps import ResultOf, bind
from . import _shm
from .wire import RESULT_HEAD

# --- the call codec -------------------------------------------------------------------
# A call crosses as two blobs: the callable and its (args, kwargs). A callable is
# pickled once per function object and its bytes reused for every submit:
# by name for an importable function, by value (cloudpickle) for one defined in
# ``__main__``, a notebook, a closure or a lambda. Pickling a script's function by
# value on every submit cost ~20 µs, half of a tiny task's whole budget; Dask
# caches ``dumps_function`` the same way (distributed/worker.py), and Ray exports a
# function once per job. The price: a by-value function's globals and closure
# cells are snapshotted at its first submit (``refresh_function`` drops the
# snapshot). Arguments of plain builtin types take the C pickler's fast path;
# anything else goes through cloudpickle.

_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex})
_FN_CACHE_MAX = 1024
#: Functions pickled by name, and top-level functions of ``__main__`` by value.
_by_name: dict[object, bytes] = {}
#: Lambdas and closures, by value, while they live.
_by_value: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
_CACHEABLE = (types.FunctionType, types.BuiltinFunctionType)
#: Larger by-value pickles (a closure over a big array) are made afresh each
#: time and never kept by a worker: the snapshot would pin the data twice.
_SNAPSHOT_MAX = 1 << 16


def _by_reference(fn: object) -> bytes | None:
    """The pickled bytes of ``fn`` if it pickles by name (so caching them is
    safe: no captured state can change), else ``None``."""
    try:
        plain = pickle.dumps(fn, protocol=5)
    except Exception:
        return None
    module = getattr(fn, "__module__", None)
    if module == "__main__" or module is None:
        return None  # by name works for scripts but not notebooks: by value
    try:
        cloud = cloudpickle.dumps(fn, protocol=5)
    except Exception:
        return None
    return plain if cloud == plain else None


def dump_callable(fn: object) -> bytes:
    """Pickle a callable; a function is pickled once and its bytes reused."""
    kind = type(fn)
    cacheable = kind in _CACHEABLE
    if cacheable:
        blob = _by_name.get(fn)
        if blob is None and kind is types.FunctionType:
            blob = _by_value.get(fn)
        if blob is not None:
            return blob
        blob = _by_reference(fn)
        if blob is not None:
            if len(_by_name) >= _FN_CACHE_MAX:
                _by_name.clear()
            _by_name[fn] = blob
            return blob
    data: bytes = cloudpickle.dumps(fn, protocol=5)
    if kind is types.FunctionType and len(data) <= _SNAPSHOT_MAX:
        if "<" in fn.__qualname__:  # type: ignore[attr-defined]
            _by_value[fn] = data  # a lambda or closure: kept while it lives
        else:
            # A script's top-level function lives as long as its module: a
            # plain dict, one lookup on the next submit.
            if len(_by_name) >= _FN_CACHE_MAX:
                _by_name.clear()
            _by_name[fn] = data
    return data


def refresh_function(fn: object = None) -> None:
    """Forget the pickled snapshot of ``fn`` (of every function when ``None``),
    so that its next submit pickles it again, with its globals as they are now.

    A function defined in ``__main__`` (or a notebook, a lambda, a closure) is
    pickled by value once, at its first submit, and the same bytes serve every
    later submit: a global it reads, or a variable it closes over, is seen by the
    workers as it was then. Rebinding such a global afterwards? Call this.
    """
    if fn is None:
        _by_name.clear()
        _by_value.clear()
        return
    _by_name.pop(fn, None)
    try:
        _by_value.pop(fn, None)
    except TypeError:
        pass  # not weak-referenceable, so never cached by value


class CallRefs:
    """Coordinator side: which callables each worker already holds.

    Each distinct callable blob of up to ``_SNAPSHOT_MAX`` bytes gets an id; the
    first call a worker gets with it carries the blob and the worker keeps the
    loaded callable under that id; later calls carry the id alone (size 0).
    Both sides bound their table the same way (first in, first out, at
    :data:`KEEP_MAX` ids per worker), applied to the same sequence of calls, so
    the coordinator always knows what a worker holds without being told.
    """

    __slots__ = ("_ids", "_next")

    def __init__(self) -> None:
        self._ids: dict[bytes, int] = {}
        self._next = 1

    def fid(self, blob: bytes) -> int:
        """The id of ``blob``, or 0 for a blob too large to keep."""
        if len(blob) > _SNAPSHOT_MAX:
            return 0
        fid = self._ids.get(blob)  # the same bytes object each time: its hash is cached
        if fid is None:
            if len(self._ids) >= _FN_CACHE_MAX:
                self._ids.clear()  # fresh ids; the workers' old ones age out
            fid = self._ids[blob] = self._next
            self._next += 1
        return fid

    def pack(
        self,
        holds: dict[int, None],
        payloads: list[tuple[bytes, Sequence[Any]]],
        keys: tuple[int, ...] = (),
        outbox: _shm.Outbox | None = None,
    ) -> tuple[list[Any], tuple[int, ...], tuple[int, ...]]:
        """The blobs, sizes and ids of a ``RunBatch`` to the worker that holds
        ``holds`` (updated as the worker will update its own table). With an
        ``outbox``, large argument buffers go through it, held under the
        call's key (its task id) until its result arrives."""
        blobs: list[Any] = []
        sizes: list[int] = []
        fids: list[int] = []
        fid_of = self.fid
        for fn_blob, arg_segments in payloads:
            fid = fid_of(fn_blob)
            if fid and fid in holds:
                sizes.append(0)  # the worker has it: the id alone
            else:
                blobs.append(fn_blob)
                sizes.append(len(fn_blob))
                if fid:
                    keep(holds, fid, None)
            fids.append(fid)
            if len(arg_segments) == 2 and type(arg_segments[1]) is bytes:
                sizes.append(len(arg_segments[0]) + len(arg_segments[1]))  # no out-of-band
            elif arg_segments[0][3] & _HOLES_BYTE:
                # Upstream frames, forwarded as they came: never spilled.
                sizes.append(sum(map(len, arg_segments)))
            else:
                if outbox is not None and len(arg_segments) > 2:
                    spilled = outbox.spill(arg_segments, keys[len(fids) - 1])
                    sizes.append(sum(memoryview(seg).nbytes for seg in spilled))
                    blobs += spilled
                    continue
                sizes.append(sum(memoryview(seg).nbytes for seg in arg_segments))
            blobs += arg_segments
        return blobs, tuple(sizes), tuple(fids)


#: How many callables a worker keeps (both sides evict the oldest first).
KEEP_MAX = 256


def keep(table: dict[int, Any], fid: int, value: Any) -> None:
    """Add ``fid`` to a worker's table (or its coordinator-side mirror)."""
    if len(table) >= KEEP_MAX:
        del table[next(iter(table))]
    table[fid] = value


# --- values with out-of-band buffers (pickle protocol 5, PEP 574) ---------------------
# A value blob is ``<I n><n Q sizes>`` + pickle + the n buffers. Large buffers
# (numpy arrays, bytearrays, and ``bytes`` of 64 KiB or more) travel out of
# band: written by ``writev`` straight from the object's memory and unpickled
# from the received frame, so pickling never copies them. Where a buffer of
# ``_shm.SPILL_MIN`` bytes or more went through the worker's side file instead,
# the blob is ``<I n | 1 << 31><n Q sizes><n q locations>`` + pickle + the
# buffers left inline (location -1); any other location is the buffer's offset
# in the side file, plus 1 if it must arrive writable and 2 if it is a
# ``bytearray``'s (``_shm.py``).

_BIG = 1 << 16
_NO_BUFFERS = struct.pack("<I", 0)


def _bytes_from_buffer(buf: memoryview) -> bytes:
    return bytes(buf)


def _bytearray_from_buffer(buf: memoryview | bytearray) -> bytearray:
    # A bytearray here is one the side file was just read into (_shm's
    # _BYTEARRAY), nobody else's: handed on, not copied again.
    return buf if type(buf) is bytearray else bytearray(buf)


class _OutOfBand:
    """Wraps a large ``bytes`` or ``bytearray`` so that pickle sends it out of
    band (the C pickler never asks ``reducer_override`` about builtin types,
    and pickles a ``bytearray`` in band); each arrives as its own type."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: object) -> Any:
        data = self.data
        rebuild = _bytes_from_buffer if type(data) is bytes else _bytearray_from_buffer
        return rebuild, (pickle.PickleBuffer(data),)


def all_plain(values: Iterable[object]) -> bool:
    """Only small builtin scalars: nothing a marker or a future could hide in."""
    atomic = _ATOMIC
    for v in values:  # a plain loop: this runs on every submit
        t = type(v)
        if t not in atomic or (t is bytes and len(v) >= _BIG):  # type: ignore[arg-type]
            return False
    return True


# What the C pickler writes exactly as ``_FastPickler`` would: small builtin
# scalars, and markers (``ResultOf`` lives in an importable module, so its
# ``reducer_override`` lets it through). Not used by ``all_plain``: the front
# doors rely on that one to say there is no marker to look for.
_FLAT = _ATOMIC | {ResultOf}


def _flat(values: Iterable[object]) -> bool:
    """Only small builtin scalars and top-level ``result_of`` markers."""
    flat = _FLAT
    for v in values:
        t = type(v)
        if t not in flat or (t is bytes and len(v) >= _BIG):  # type: ignore[arg-type]
            return False
    return True


def _is_big(v: object) -> bool:
    # Not memoryview: pickle refuses one, and wrapping it would change what
    # arrives (its format and shape) rather than how.
    t = type(v)
    return (t is bytes or t is bytearray) and len(v) >= _BIG  # type: ignore[arg-type]


def _wrap_big(values: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(_OutOfBand(v) if _is_big(v) else v for v in values)  # type: ignore[arg-type]


# --- large bytes inside containers ------------------------------------------------
# The C pickler writes a ``bytes`` in band wherever it sits, so a task's
# ``return key, data`` sent its 4 MB through the pipe: three copies more than
# the side file, on the coordinator's one thread (1.3x ProcessPoolExecutor,
# where a bare ``return data`` made 6x). A value or call whose pickle comes out
# at 64 KiB or more (and only then: a small one pays a length check) is walked
# for the large ``bytes`` and ``bytearray`` in its tuples, lists and dicts,
# and pickled again with them out of band if there is any. The walk must see
# all of the value, or the first pickle stands: nothing but tuples, lists and
# dicts (keys small scalars), small builtin scalars, and ``bytes`` and
# ``bytearray``; :data:`_LIFT_DEPTH` containers deep at most, none with more
# than :data:`_LIFT_ITEMS` items, :data:`_LIFT_BUDGET` in all. Then every
# reference in the value went through the walk's memo, so what it shares stays
# shared in the copy (each container copied once, only those that lead to a
# wrapped buffer), and pickling it again runs no code but pickle's own (an
# object's ``__reduce__`` may have effects, or refuse a second call). Anything
# else in the value (a numpy array, an object of your own) keeps it in band.
# The second pickle then copies what the first copied, less the buffers.

_LIFT_DEPTH = 4
_LIFT_ITEMS = 256
_LIFT_BUDGET = 2048
_BUSY: Any = object()  # in a walk's memo: being walked


class _Unlifted(Exception):
    """The walk cannot vouch for the whole value: it stays as it is."""


class _Lifter:
    """One walk. ``bytearrays``: lift those too. Not in a call's arguments: a
    lifted buffer is read from the caller's object when the task is sent, and
    until then it holds an export that makes resizing it raise, where a
    nested ``bytearray`` used to be copied at ``submit`` (a top-level one,
    out of band all along, is as before)."""

    __slots__ = ("memo", "held", "budget", "bytearrays")

    def __init__(self, bytearrays: bool) -> None:
        self.memo: dict[int, Any] = {}  # id -> its replacement, or itself
        self.held: list[Any] = []  # what the memo's ids name
        self.budget = _LIFT_BUDGET
        self.bytearrays = bytearrays

    def walk(self, value: Any, depth: int) -> Any:
        """``value`` (a tuple, list or dict) with its large buffers wrapped;
        raises :class:`_Unlifted` for anything it cannot see all of."""
        memo = self.memo
        key = id(value)
        memo[key] = _BUSY
        self.held.append(value)  # no id in the memo is reused while it runs
        is_dict = type(value) is dict
        # One C-level copy, atomic under the GIL (this walk is not): a thread
        # changing the container meanwhile cannot make the copy a state the
        # container never had.
        items: list[Any] = list(value.items()) if is_dict else list(value)
        self.budget -= len(items)
        changed = False
        for i, item in enumerate(items):
            if is_dict:
                k, v = item
                t = type(k)
                if t not in _ATOMIC or (t is bytes and len(k) >= _BIG):
                    raise _Unlifted
            else:
                v = item
            t = type(v)
            if t is bytes or t is bytearray:
                if len(v) < _BIG or (t is bytearray and not self.bytearrays):
                    continue
                new = memo.get(id(v))
                if new is None:
                    self.held.append(v)
                    new = memo[id(v)] = _OutOfBand(v)
            elif t is tuple or t is list or t is dict:
                new = memo.get(id(v))
                if new is None:
                    if depth <= 1 or len(v) > _LIFT_ITEMS or len(v) > self.budget:
                        raise _Unlifted
                    new = self.walk(v, depth - 1)
                elif new is _BUSY:
                    raise _Unlifted  # a loop: the copies would point at the original
                if new is v:
                    continue
            elif t in _ATOMIC or t is _OutOfBand:
                continue
            else:
                raise _Unlifted
            items[i] = (k, new) if is_dict else new
            changed = True
        if not changed:
            memo[key] = value
            return value
        copy = dict(items) if is_dict else items if type(value) is list else tuple(items)
        memo[key] = copy
        return copy


def _lift(value: Any) -> Any:
    """``value`` with its large buffers wrapped to travel out of band (see
    above); ``None`` where there is none or it must stay in band."""
    t = type(value)
    if (t is not tuple and t is not list and t is not dict) or len(value) > _LIFT_BUDGET:
        return None
    try:
        lifted = _Lifter(bytearrays=True).walk(value, _LIFT_DEPTH)
    except _Unlifted:
        return None
    return None if lifted is value else lifted


def _lift_call(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[tuple[object, ...], dict[str, object]] | None:
    """:func:`_lift` for a call, each argument as deep as a value (one walk
    for both, so that a list they share stays one); ``None`` if nothing
    changed. The kwargs dict is the call's own: copying it splits nothing."""
    if len(args) + len(kwargs) > _LIFT_BUDGET:
        return None
    lifter = _Lifter(bytearrays=False)
    values = tuple(kwargs.values())
    try:
        new_args = lifter.walk(args, _LIFT_DEPTH + 1)
        new_values = lifter.walk(values, _LIFT_DEPTH + 1)
    except _Unlifted:
        return None
    if new_args is args and new_values is values:
        return None
    return new_args, dict(zip(kwargs, new_values))


def _dump_lifting(
    pickler: type[pickle.Pickler], obj: object, lift: Callable[[Any], Any]
) -> tuple[Any, ...]:
    """``obj`` as value-blob segments by ``pickler`` (cloudpickle if it
    refuses), pickled again as ``lift(obj)`` if the pickle came out large
    and ``lift`` (:func:`_lift`, :func:`_lift_call`) found buffers to take
    out of band in it (``None``: none, or they must stay in band)."""
    try:
        segments = _dump_with(pickler, obj)
    except Exception:
        pickler = cloudpickle.CloudPickler
        segments = _dump_with(pickler, obj)
    if len(segments[1]) >= _BIG and (lifted := lift(obj)) is not None:
        return _dump_with(pickler, lifted)
    return segments


def _dump_with(pickler: type[pickle.Pickler], obj: object) -> tuple[Any, ...]:
    bufs: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    pickler(out, protocol=5, buffer_callback=bufs.append).dump(obj)
    if not bufs:
        return (_NO_BUFFERS, out.getvalue())
    raws = [b.raw() for b in bufs]
    header = struct.pack(f"<I{len(raws)}Q", len(raws), *(r.nbytes for r in raws))
    return (header, out.getvalue(), *raws)


class _NeedsCloudpickle(Exception):
    """Raised by :class:`_FastPickler` for what only cloudpickle carries."""


class _FastPickler(pickle.Pickler):
    """The C pickler, handing over to cloudpickle for anything defined in
    ``__main__`` (pickled by name it would load in a script's workers but not in
    a notebook's) or in no importable module. ``reducer_override`` runs only for
    non-builtin objects, so plain data (lists of tuples of numbers) costs
    nothing extra."""

    def reducer_override(self, obj: object) -> Any:
        owner = obj if isinstance(obj, (type, types.FunctionType)) else type(obj)
        module = getattr(owner, "__module__", None)
        if module == "__main__" or module is None or module not in sys.modules:
            raise _NeedsCloudpickle
        if "<" in getattr(owner, "__qualname__", ""):  # <lambda>, <locals>
            raise _NeedsCloudpickle
        return NotImplemented


def dump_arguments(args: tuple[object, ...], kwargs: dict[str, object]) -> tuple[Any, ...]:
    """``(args, kwargs)`` as value-blob segments: the C pickler for plain data;
    cloudpickle for lambdas, closures and classes defined in ``__main__`` or a
    notebook. Top-level large ``bytes``, and whatever supports pickle protocol 5
    buffers (numpy arrays, bytearray), travel out of band. A tuple: a
    pending task's record keeps it, and a tuple of bytes is one the cyclic GC
    stops tracking (a list never is; issue #11's tiny tasks at scale)."""
    if _flat(args) and (not kwargs or _flat(kwargs.values())):
        # Markers too: one C call instead of a BytesIO and a Python pickler
        # subclass halves the cost of pickling ``f(result_of(t))``, same bytes.
        return dump_plain_arguments(args, kwargs)
    if kwargs:
        kwargs = dict(zip(kwargs, _wrap_big(tuple(kwargs.values()))))
    call = (_wrap_big(args), kwargs)
    # _NeedsCloudpickle, or anything the C pickler refuses: cloudpickle.
    return _dump_lifting(_FastPickler, call, lambda c: _lift_call(*c))


def dump_plain_arguments(args: tuple[object, ...], kwargs: dict[str, object]) -> tuple[Any, ...]:
    """:func:`dump_arguments` for a call :func:`all_plain` accepted."""
    return (_NO_BUFFERS, pickle.dumps((args, kwargs), protocol=5))


def dump_value(value: object) -> tuple[Any, ...]:
    """A return value as value-blob segments (the C pickler first: a result is
    unpickled where ``__main__`` is the real one; cloudpickle if that fails)."""
    if _is_big(value):
        value = _OutOfBand(value)  # type: ignore[arg-type]
    elif type(value) in _ATOMIC:
        return (_NO_BUFFERS, pickle.dumps(value, protocol=5))
    return _dump_lifting(pickle.Pickler, value, _lift)  # ``return key, data``


def load_value(blob: memoryview, inbox: _shm.Inbox | None = None) -> Any:
    """Unpickle a value blob; out-of-band buffers are views of ``blob``, or
    read from the side file of ``inbox`` where the blob says they were spilled.
    A call with holes comes back with its upstream values in them (markers
    where none came along yet)."""
    (n,) = struct.unpack_from("<I", blob, 0)
    if not n:
        return pickle.loads(blob[4:])
    if n & _shm.SPILLED:
        if inbox is None:
            raise ValueError("a value blob with spilled buffers, and no side file")
        pickled, spilled = inbox.fetch(blob, n & ~_shm.SPILLED)
        return pickle.loads(pickled, buffers=spilled)
    if n & HOLES:
        return _fill_holes(blob, n & ~HOLES)
    sizes = struct.unpack_from(f"<{n}Q", blob, 4)
    end = len(blob)
    start = end - sum(sizes)
    buffers = []
    pos = start
    for size in sizes:
        buffers.append(blob[pos : pos + size])
        pos += size
    return pickle.loads(blob[4 + 8 * n : start], buffers=buffers)


# --- calls with holes: upstream values bound in the worker (issue #8) -----------------
# A call whose arguments are small builtin scalars and top-level ``result_of``
# markers (the usual ``f(result_of(t), 3)``) is pickled with ``None`` in each
# marker's place, and its blob says where the holes are:
# ``<I k | HOLES><k q places><k q task ids><k Q sizes>`` + pickle + k frames.
# A place >= 0 is a positional argument, < 0 keyword argument number
# ``-place - 1`` in the call's order. No pickle at all: the call is its holes,
# in order (``f(result_of(t))``, a chain's link). While the dependent waits,
# the sizes are 0 and a hole loads as its marker (what a dashboard shows). On
# release each becomes the length of the upstream's ``Result`` frame body, as
# its worker sent it, appended after the pickle: the coordinator forwards
# those bytes instead of unpickling the call, binding the values and pickling
# it again (~20k instructions a dependent, of ~160k a task), and the marker
# is never pickled (~12k more: a class is a global, an import lookup each way).

HOLES = 1 << 30
_HOLES_BYTE = HOLES >> 24  # the flag in a blob's fourth byte (the count's high byte)
_ONE_HOLE = struct.Struct("<Iqqq")
_SIZE = struct.Struct("<Q")


def dump_with_holes(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[tuple[Any, ...], tuple[int, ...]] | None:
    """``(args, kwargs)`` as a call blob with holes, and the upstream ids
    they take, when every argument is a small builtin scalar or a top-level
    marker and one at least is a marker; otherwise ``None``."""
    if len(args) == 1 and not kwargs:  # f(result_of(t)), a chain's link: no lists
        v = args[0]
        if type(v) is not ResultOf:
            return None
        tid: int = v.task_id
        return (_ONE_HOLE.pack(1 | HOLES, 0, tid, 0), b""), (tid,)
    places: list[int] = []
    ids: list[int] = []
    atomic = _ATOMIC
    for place, v in enumerate(args):  # a plain loop: this runs on every such submit
        t = type(v)
        if t is ResultOf:
            places.append(place)
            ids.append(v.task_id)  # type: ignore[attr-defined]
        elif t not in atomic or (t is bytes and len(v) >= _BIG):  # type: ignore[arg-type]
            return None
    if kwargs:
        for j, v in enumerate(kwargs.values()):
            t = type(v)
            if t is ResultOf:
                places.append(-j - 1)
                ids.append(v.task_id)  # type: ignore[attr-defined]
            elif t not in atomic or (t is bytes and len(v) >= _BIG):  # type: ignore[arg-type]
                return None
    k = len(places)
    if not k:
        return None
    if k == 1:
        header = _ONE_HOLE.pack(1 | HOLES, places[0], ids[0], 0)
    else:
        header = struct.pack(f"<I{3 * k}q", k | HOLES, *places, *ids, *([0] * k))
    if k == len(args) and not kwargs:  # markers only: nothing to pickle
        return (header, b""), tuple(ids)
    hollow = list(args)
    names = list(kwargs)
    kw = dict(kwargs)
    for place in places:
        if place >= 0:
            hollow[place] = None
        else:
            kw[names[-place - 1]] = None
    return (header, pickle.dumps((tuple(hollow), kw), protocol=5)), tuple(ids)


def _fill_holes(blob: memoryview, k: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call blob with ``k`` holes, unpickled: each hole holds its upstream's
    value where its frame came along, else its marker."""
    if k == 1:
        _, _, tid, size = _ONE_HOLE.unpack_from(blob)
        if len(blob) == _ONE_HOLE.size + size:  # f(result_of(t)): the hole is the call
            frame = _ONE_HOLE.size + RESULT_HEAD.size
            return (load_value(blob[frame:]) if size else ResultOf(tid),), {}
    spec = struct.unpack_from(f"<{3 * k}q", blob, 4)
    pos = len(blob) - sum(spec[2 * k :])
    if pos == 4 + 24 * k:  # no pickle: the holes are the call
        args: tuple[Any, ...] = (None,) * k
        kwargs: dict[str, Any] = {}
    else:
        args, kwargs = pickle.loads(blob[4 + 24 * k : pos])
    filled = list(args)
    names: list[str] | None = None
    for i in range(k):
        place, size = spec[i], spec[2 * k + i]
        if size:
            value = load_value(blob[pos + RESULT_HEAD.size : pos + size])
            pos += size
        else:
            value = ResultOf(spec[k + i])
        if place >= 0:
            filled[place] = value
        else:
            if names is None:
                names = list(kwargs)
            kwargs[names[-place - 1]] = value
    return tuple(filled), kwargs


def pass_inputs(
    payload: tuple[bytes, Sequence[Any]], inputs: dict[int, tuple[Any, Any]]
) -> tuple[bytes, Sequence[Any]]:
    """The scheduler's hook when a dependent is released: its payload with
    the upstream values it takes. ``inputs``: upstream id -> ``(outcome,
    sent)``, ``sent`` being the upstream's ``Result`` frame (``Done.sent``), or
    ``None`` where only the outcome is at hand. A call with holes whose every
    upstream sent one gets those frames, to be unpickled in its worker only;
    anything else is bound here by :func:`bind_inputs`: markers nested in
    containers, an exception under ``all_done``, a value that had arrived
    before the dependent was submitted, one that came through the side file.
    Raises if a value bound here cannot be pickled."""
    fn_blob, segments = payload
    header = segments[0]
    if len(segments) == 2 and header[3] & _HOLES_BYTE:
        if len(header) == _ONE_HOLE.size and len(inputs) == 1:
            # One hole, one upstream: a chain's link, f(result_of(t), ...).
            # The same blob as below, built without its lists (~2x faster).
            for _, frame in inputs.values():
                if frame is not None and len(frame) < _BIG:
                    head = header[:20] + _SIZE.pack(len(frame))
                    return fn_blob, (b"".join((head, segments[1], frame)),)
        k = len(header) // 24  # 4 + 24 k bytes
        if k == 1 and len(inputs) == 1:  # one hole, so its one upstream
            frames = [pair[1] for pair in inputs.values()]
        else:
            frames = [inputs[tid][1] for tid in struct.unpack_from(f"<{k}q", header, 4 + 8 * k)]
        if None not in frames:
            if k == 1:
                sizes = _SIZE.pack(len(frames[0]))
            else:
                sizes = struct.pack(f"<{k}Q", *map(len, frames))
            parts = [header[: 4 + 16 * k], sizes, segments[1], *frames]
            if sum(map(len, frames)) < _BIG:
                # One blob: a batch then takes an iovec per call (writev takes 512).
                return fn_blob, (b"".join(parts),)
            return fn_blob, (parts[0] + parts[1], *parts[2:])
    return bind_inputs(payload, {tid: pair[0] for tid, pair in inputs.items()})


class _Unloadable:
    """A kept callable that failed to unpickle: each call that refers to it
    fails the same way."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error.with_traceback(None)


#: In a worker: the globals of a by-value ``__main__`` initializer once it
#: ran, given to every by-value ``__main__`` callable the worker loads (see
#: :func:`run_initializer`).
_init_globals: dict[str, Any] = {}


def _by_value_main(fn: object) -> bool:
    """Whether ``fn`` is a function of ``__main__`` that came by value: its
    globals are a private snapshot, not the worker's ``__main__`` module."""
    if type(fn) is not types.FunctionType or fn.__module__ != "__main__":
        return False
    main = sys.modules.get("__main__")
    return main is None or fn.__globals__ is not vars(main)


def run_initializer(initializer: Any, initargs: tuple[Any, ...]) -> None:
    """Run a worker's initializer. One defined in a script's ``__main__``
    travels by value, as the tasks do, each with its own snapshot of the
    script's globals, so what it set up (the standard library's idiom:
    ``global CONFIG; CONFIG = load()``, or ``CACHE["db"] = connect()``)
    never reached the tasks. Its globals, as it left them, are given to every
    by-value ``__main__`` callable this worker loads (:meth:`CallLoader.load`):
    the tasks read ``CONFIG`` and share the initializer's ``CACHE`` object, as
    with ``ProcessPoolExecutor``. Only the names the initializer uses are
    there; a task's other globals stay its own snapshot."""
    if not _by_value_main(initializer):
        initializer(*initargs)
        return
    initializer(*initargs)
    _init_globals.clear()
    _init_globals.update(
        (k, v) for k, v in initializer.__globals__.items() if not k.startswith("__")
    )


def _with_init_globals(fn: Any) -> None:
    """Give ``fn`` (and the ``__main__`` functions a ``functools.partial`` of
    ``map`` holds) what the initializer assigned."""
    if type(fn) is functools.partial:
        for part in (fn.func, *fn.args):
            _with_init_globals(part)
    elif _by_value_main(fn):
        fn.__globals__.update(_init_globals)


class CallLoader:
    """Worker side: turns the two blobs back into ``(fn, args, kwargs)``,
    keeping callables by id as :class:`CallRefs` says."""

    def __init__(self, inbox: _shm.Inbox | None = None) -> None:
        self._fns: dict[int, Any] = {}
        self._inbox = inbox

    def load(self, fn_blob: memoryview, arg_blob: memoryview, fid: int) -> tuple[Any, Any, Any]:
        spilled = None
        if arg_blob.nbytes >= 4 and arg_blob[3] & 0x80:  # _shm.SPILLED
            # Spilled buffers are read (and their pages returned) first, so
            # that a callable failing to load leaves nothing behind.
            spilled = self._fetch(arg_blob)
        if fid and not fn_blob.nbytes:
            fn = self._fns[fid]
            if type(fn) is _Unloadable:
                raise fn.error.with_traceback(None)
        else:
            try:
                fn = pickle.loads(fn_blob)
            except BaseException as e:
                if fid:
                    keep(self._fns, fid, _Unloadable(e))
                raise
            if _init_globals:
                _with_init_globals(fn)
            if fid:
                keep(self._fns, fid, fn)
        if spilled is None:
            args, kwargs = load_value(arg_blob)
        elif isinstance(spilled, BaseException):
            raise spilled  # only now: the callable is kept, as CallRefs expects
        else:
            args, kwargs = pickle.loads(spilled[0], buffers=spilled[1])
        return fn, args, kwargs

    def _fetch(self, arg_blob: memoryview) -> tuple[memoryview, list[Any]] | BaseException:
        try:
            if self._inbox is None:
                raise ValueError("arguments with spilled buffers, and no side file")
            (n,) = struct.unpack_from("<I", arg_blob, 0)
            return self._inbox.fetch(arg_blob, n & ~_shm.SPILLED)
        except Exception as e:
            return e


def _load_segments(segments: Sequence[Any]) -> Any:
    """Unpickle the value-blob segments that ``dump_arguments`` produced, as
    they are: ``[header, pickle, *buffers]``. Joining them first cost a copy of
    every buffer, and ``pickle.loads`` is slower on a memoryview than on the
    ``bytes`` the pickle already is."""
    header = segments[0]
    if len(segments) == 2 and header == _NO_BUFFERS:
        return pickle.loads(segments[1])
    (n,) = struct.unpack_from("<I", header, 0)
    if len(segments) == 2 + n and len(header) == 4 + 8 * n:
        return pickle.loads(segments[1], buffers=segments[2:])
    return load_value(memoryview(b"".join(segments)))  # split otherwise: one copy


def _bind_flat(items: Iterable[Any], values: dict[int, Any]) -> tuple[Any, ...] | None:
    """``items`` with top-level markers bound, if every item then is a small
    builtin scalar (what ``dump_arguments`` pickles plainly); else ``None``."""
    out = []
    atomic = _ATOMIC
    for item in items:
        v = values[item.task_id] if type(item) is ResultOf else item
        t = type(v)
        if t not in atomic or (t is bytes and len(v) >= _BIG):
            return None
        out.append(v)
    return tuple(out)


def bind_inputs(
    payload: tuple[bytes, Sequence[Any]], values: dict[int, Any]
) -> tuple[bytes, Sequence[Any]]:
    """A call's payload with upstream results bound in place of its
    ``result_of`` markers: the arguments are unpickled (they were pickled here,
    from the caller's own objects), bound, and pickled again. Once per
    dependent task, when its upstream tasks have ended, on the coordinator
    thread under the engine lock; raises if a bound value cannot be pickled.
    The result is what ``dump_arguments`` gives for the bound arguments."""
    fn_blob, segments = payload
    args, kwargs = _load_segments(segments)
    # The usual shape, ``f(result_of(t), 3)`` bound to scalars: one pass that
    # binds and checks, then the plain pickle dump_arguments would choose.
    flat = _bind_flat(args, values)
    if flat is not None:
        if not kwargs:
            return fn_blob, (_NO_BUFFERS, pickle.dumps((flat, kwargs), protocol=5))
        flat_kw = _bind_flat(kwargs.values(), values)
        if flat_kw is not None:
            bound_kw = dict(zip(kwargs, flat_kw))
            return fn_blob, (_NO_BUFFERS, pickle.dumps((flat, bound_kw), protocol=5))
    # Anything else: markers nested in lists, tuples and dicts, values that are
    # not scalars. ``bind`` copies only the containers that hold a marker.
    # One walk for both: a list that args and kwargs share stays one list.
    args, kwargs = bind((tuple(args), kwargs), values)
    return fn_blob, dump_arguments(args, kwargs)
