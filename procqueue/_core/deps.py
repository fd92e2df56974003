"""Results flowing between tasks: the ``result_of`` marker, and the walks that
find markers in a call's arguments and bind upstream values in their place.

The rule (README, "Dependencies"): a marker counts at the top level of the
positional or keyword arguments, or inside a ``list``, ``tuple`` or ``dict``
(values, not keys) at any depth; anything else is left alone (a marker inside
your own object is not seen, and reaches the task as the marker itself).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["ResultOf", "bind", "find_markers"]

_CONTAINERS = (list, tuple, dict)


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


def find_markers(args: tuple[Any, ...], kwargs: dict[str, Any], out: set[int]) -> None:
    """Add the task ids of every marker in the arguments to ``out``."""
    _find(args, out)
    _find(kwargs.values(), out)


def _find(items: Iterable[Any], out: set[int]) -> None:
    for v in items:
        if type(v) is ResultOf:
            out.add(v.task_id)
        elif type(v) in _CONTAINERS:
            _find(v.values() if type(v) is dict else v, out)


def bind(value: Any, values: dict[int, Any]) -> Any:
    """``value`` with every marker replaced by ``values[marker.task_id]``
    (containers are rebuilt only where they hold a marker; the others are
    returned as they are, so objects shared between arguments stay shared)."""
    kind = type(value)
    if kind is ResultOf:
        return values[value.task_id]
    if kind is list or kind is tuple:
        changed = _bound(enumerate(value), values)
        if not changed:
            return value
        items = list(value)
        for i, new in changed:
            items[i] = new
        return items if kind is list else tuple(items)
    if kind is dict:
        changed = _bound(value.items(), values)
        if not changed:
            return value
        copy = dict(value)  # same key order
        for k, new in changed:
            copy[k] = new
        return copy
    return value


def _bound(
    pairs: Iterable[tuple[Any, Any]], values: dict[int, Any]
) -> list[tuple[Any, Any]] | None:
    """``(key, bound value)`` for each value of ``pairs`` that holds a marker.
    Runs once per dependent, on the coordinator thread under the engine lock:
    leaves are tested inline rather than by a call to bind() each, and the
    caller copies a container only when something changed (``None``: nothing)."""
    out = None
    for k, v in pairs:
        kind = type(v)
        if kind is ResultOf:
            new = values[v.task_id]
        elif kind is list or kind is tuple or kind is dict:
            new = bind(v, values)
            if new is v:
                continue
        else:
            continue
        if out is None:
            out = [(k, new)]
        else:
            out.append((k, new))
    return out


def replace_markers(value: Any, swap: Any) -> Any:
    """``value`` with ``swap(v)`` applied to each leaf that ``swap`` recognises
    (returns something else than ``v``), at the places markers may sit."""
    kind = type(value)
    if kind is list or kind is tuple:
        items = [replace_markers(v, swap) for v in value]
        return items if kind is list else tuple(items)
    if kind is dict:
        return {k: replace_markers(v, swap) for k, v in value.items()}
    return swap(value)
