"""Re-arming a dead letter's dormant dependents (``requeue_dead_letter(...,
cascade=True)``): the dependents its failure ended, rebuilt as new records
that wait on the re-armed tasks' new ids, in an order where every upstream
comes before its dependents. Pure record building: the engine admits what
this returns, under its lock, all or none.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._core.deps import ResultOf
from .._core.records import _TaskRecord
from .._policy import RetryPolicy
from ..errors import ProcQueueError
from ._calls import bind_inputs
from .futures import _TaskFuture

#: ``ReadSide.new_record``: (name, priority, payload, policy, timeout, future).
NewRecord = Callable[
    [str, int, tuple[bytes, Sequence[Any]], RetryPolicy | None, float | None, _TaskFuture | None],
    _TaskRecord,
]


def rearm(roots: list[Any], ids: dict[int, int], new_record: NewRecord) -> list[_TaskRecord]:
    """New records for the dormant dependents below a dead letter, each
    after every re-armed upstream it has (a diamond's branches can be of
    unequal depth: breadth-first order would link a dependent to a deeper
    upstream's old, failed id), their upstream ids (and ``result_of``
    markers) moved to the new tasks in ``ids`` (which this fills in).
    ``new_record``: the engine's (``ReadSide.new_record``), for fresh ids."""
    nodes: list[Any] = []
    todo = deque(roots)
    while todo:
        node = todo.popleft()
        nodes.append(node)
        todo.extend(node.dependents)
    # Kahn's algorithm over the tree's own edges, in breadth-first order.
    in_tree = {node.task_id: node for node in nodes}
    blocked = {node.task_id: sum(u in in_tree for u in node.upstream) for node in nodes}
    below: dict[int, list[Any]] = {}
    for node in nodes:
        for u in node.upstream:
            if u in in_tree:
                below.setdefault(u, []).append(node)
    ready = deque(node for node in nodes if not blocked[node.task_id])
    out = []
    while ready:
        node = ready.popleft()
        out.append(_rearmed(node, ids, new_record))
        for dep in below.get(node.task_id, ()):
            blocked[dep.task_id] -= 1
            if not blocked[dep.task_id]:
                ready.append(dep)
    if len(out) != len(nodes):  # a cycle: cannot be built by submits
        raise ProcQueueError("the dormant dependents of this dead letter form a cycle")
    return out


def _rearmed(node: Any, ids: dict[int, int], new_record: NewRecord) -> _TaskRecord:
    """One dormant dependent as a new record (its re-armed upstreams are
    in ``ids`` already); adds its own new id to ``ids``."""
    # Each marker: moved to its re-armed upstream's new id; else bound
    # to the value it had already been passed (a diamond's branch that
    # completed, whose record may have released that value since);
    # else left for an upstream still under way.
    arrived = node.arrived
    taken = [u for u in node.needed if u in arrived and u not in ids]
    moved: dict[int, Any] = {u: arrived[u] for u in taken}
    for old in node.needed:
        if old not in moved:
            moved[old] = ResultOf(ids.get(old, old))
    payload = bind_inputs(node.payload, moved) if node.needed else node.payload
    rec = new_record(node.name, node.priority, payload, node.policy, node.timeout, None)
    # An upstream whose value is bound in has ended as its trigger
    # wanted: nothing to wait for (and its record may be gone).
    rec.upstream = tuple(ids.get(u, u) for u in node.upstream if u not in taken)
    rec.all_done = node.all_done
    rec.limit_key = node.limit_key
    still = [u for u in node.needed if u not in taken]
    if still:
        # A ProcQueue future it was given for an upstream still under way
        # goes with it: once that upstream's record lets go of its value,
        # the future holds it (``_outcome_of``).
        rec.inputs = {ids.get(u, u): None if u in ids else node.awaited.get(u) for u in still}
    ids[node.task_id] = rec.task_id
    return rec
