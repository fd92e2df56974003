"""Results flowing between tasks: the ``result_of`` marker, and the walks that
find markers in a call's arguments and bind upstream values in their place.

The rule (README, "Dependencies"): a marker counts at the top level of the
positional or keyword arguments, or inside a ``list``, ``tuple`` or ``dict``
(values, not keys) at any depth; anything else is left alone (a marker inside
your own object is not seen, and reaches the task as the marker itself).

The walks keep the caller's objects: a container is copied only when it holds
a replaced value, once however often it is referenced, and a container that
refers back to itself is looked into once. So arguments that share a list
still share it in the worker, as pickle (and ``ProcessPoolExecutor``) keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "FutureResultOf",
    "ResultOf",
    "bind",
    "find_markers",
    "replace_in_call",
]

#: Small builtin scalars: never a marker, nothing to look into (``_calls._ATOMIC``).
_SCALARS = frozenset({int, float, str, bytes, bool, type(None), complex})


class ResultOf:
    """Stands for task ``task_id``'s result in another task's arguments
    (``procqueue.result_of``); replaced by that result when the task runs."""

    __slots__ = ("task_id",)

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"result_of({self.task_id})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ResultOf, (self.task_id,))


class FutureResultOf(ResultOf):
    """``result_of(future)``: the marker keeps its future until the queue it
    is submitted to has checked that the future is one of its own, as for
    ``after=`` (the id alone would name that queue's task of the same id);
    the queue then puts a plain marker, or the result, in its place. Not a
    ``type(v) is ResultOf``, so no fast path takes it unchecked; pickles as
    a plain marker."""

    __slots__ = ("future",)

    def __init__(self, task_id: int, future: Any) -> None:
        self.task_id = task_id
        self.future = future


def find_markers(args: tuple[Any, ...], kwargs: dict[str, Any], out: set[int]) -> None:
    """Add the task ids of every marker in the arguments to ``out``."""
    seen: set[int] = set()
    _find(args, out, seen)
    _find(kwargs.values(), out, seen)


def _find(items: Iterable[Any], out: set[int], seen: set[int]) -> None:
    for v in items:
        kind = type(v)
        if kind is ResultOf or kind is FutureResultOf:
            out.add(v.task_id)
        elif (kind is list or kind is tuple or kind is dict) and id(v) not in seen:
            seen.add(id(v))
            _find(v.values() if kind is dict else v, out, seen)


def bind(value: Any, values: dict[int, Any]) -> Any:
    """``value`` with every marker replaced by ``values[marker.task_id]``
    (containers are rebuilt only where they hold a marker; the others are
    returned as they are, so objects shared between arguments stay shared).
    Runs once per dependent, on the coordinator thread under the engine lock:
    markers are bound inline, not through a ``leaf`` call each."""
    kind = type(value)
    if kind is list or kind is tuple or kind is dict:
        try:
            return _walk(value, values, None, {})
        except _Looped:
            return _replace_looped(value, values, None)
    return values[value.task_id] if kind is ResultOf else value


def replace_in_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], leaf: Callable[[Any], Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with ``leaf(v)`` in place of each ``v`` where a
    marker may sit (an argument, or an item of a list or tuple or a value of
    a dict in one, at any depth) that is neither such a container nor a small
    scalar; ``leaf`` returns ``v`` itself to keep it, and may be called more
    than once for one ``v``. Only the containers that lead to a replaced value
    are copied, each once; the others are the caller's own objects, and one
    that ``args`` and ``kwargs`` share stays shared."""
    memo: dict[int, Any] = {}
    try:
        return _walk(args, None, leaf, memo), _walk(kwargs, None, leaf, memo) if kwargs else kwargs
    except _Looped:
        new_args, new_kwargs = _replace_looped((args, kwargs), None, leaf)
        return new_args, new_kwargs


class _Looped(Exception):
    """A container met again while it is being walked: the depth-first copy
    would leave its copies pointing at the original."""


_BUSY: Any = object()  # in a walk's memo: being walked


def _walk(
    value: Any,
    values: dict[int, Any] | None,
    leaf: Callable[[Any], Any] | None,
    memo: dict[int, Any],
) -> Any:
    """The walk of :func:`bind` (``values``) and :func:`replace_in_call`
    (``leaf``) through the container ``value``: depth first, each container
    copied once all it holds is walked, and only if something in it changed.
    ``memo``: id(container) -> it or its copy, once walked. Exact unless the
    containers loop: :class:`_Looped`, and the caller starts over."""
    key = id(value)
    memo[key] = _BUSY
    is_dict = type(value) is dict
    scalars = _SCALARS
    changed: list[tuple[Any, Any]] | None = None
    for k, v in value.items() if is_dict else enumerate(value):
        kind = type(v)
        if kind in scalars:
            continue
        if kind is ResultOf and values is not None:
            new = values[v.task_id]
        elif kind is list or kind is tuple or kind is dict:
            new = memo.get(id(v))
            if new is None:
                new = _walk(v, values, leaf, memo)
            elif new is _BUSY:
                raise _Looped
            if new is v:
                continue
        elif leaf is None:
            continue
        else:
            new = leaf(v)
            if new is v:
                continue
        if changed is None:
            changed = [(k, new)]
        else:
            changed.append((k, new))
    if changed is None:
        memo[key] = value
        return value
    if is_dict:
        copy: Any = dict(value)  # same key order
        for k, new in changed:
            copy[k] = new
    else:
        items = list(value)
        for k, new in changed:
            items[k] = new
        copy = items if type(value) is list else tuple(items)
    memo[key] = copy
    return copy


def _replace_looped(
    root: Any, values: dict[int, Any] | None, leaf: Callable[[Any], Any] | None
) -> Any:
    """:func:`_walk` for containers that loop (a list holding itself):
    first every container and replaced value, then the containers that lead
    to one, copied as ``copy.deepcopy`` does (a list or dict registered
    before it is filled, so a loop back to it finds the copy)."""
    swapped: dict[int, Any] = {}  # id(value) -> its replacement
    holders: dict[int, list[int]] = {}  # id(container) -> ids of those holding it
    dirty: list[int] = []  # containers holding a replaced value themselves
    seen = {id(root)}
    stack = [root]
    while stack:
        c = stack.pop()
        direct = False
        for v in c.values() if type(c) is dict else c:
            kind = type(v)
            if kind is list or kind is tuple or kind is dict:
                holders.setdefault(id(v), []).append(id(c))
                if id(v) not in seen:
                    seen.add(id(v))
                    stack.append(v)
                continue
            if kind in _SCALARS:
                continue
            if id(v) not in swapped:
                if kind is ResultOf and values is not None:
                    new = values[v.task_id]
                elif leaf is None or (new := leaf(v)) is v:
                    continue
                swapped[id(v)] = new
            direct = True
        if direct:
            dirty.append(id(c))
    copied = set(dirty)
    while dirty:
        for holder in holders.get(dirty.pop(), ()):
            if holder not in copied:
                copied.add(holder)
                dirty.append(holder)
    copies: dict[int, Any] = {}

    def copy(v: Any) -> Any:
        kind = type(v)
        if not (kind is list or kind is tuple or kind is dict):
            return v if kind in _SCALARS else swapped.get(id(v), v)
        if id(v) not in copied:
            return v
        if id(v) in copies:
            return copies[id(v)]
        new: Any
        if kind is list:
            new = copies[id(v)] = []
            new.extend(copy(x) for x in v)
        elif kind is dict:
            new = copies[id(v)] = {}
            for k, x in v.items():
                new[k] = copy(x)
        else:
            items = [copy(x) for x in v]
            if id(v) in copies:  # made meanwhile, by a loop through a list or dict
                return copies[id(v)]
            new = copies[id(v)] = tuple(items)
        return new

    return copy(root)
