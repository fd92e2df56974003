"""``_calls.bind_inputs``: binding upstream results into a waiting call's pickled
arguments. The fast path (top-level markers bound to scalars) and the general
walk (markers nested in lists, tuples and dicts, keyword arguments, values
that are not scalars, out-of-band buffers) must both give exactly what
``dump_arguments`` gives for the bound call, and an upstream value that cannot
be pickled must raise (the scheduler turns that into ``SerializationError``)."""

from __future__ import annotations

import asyncio
import pickle
import struct
import threading
from collections import namedtuple
from typing import Any

import pytest
from _tasks import add, ident

from procqueue import SerializationError, TaskQueue, result_of
from procqueue._core.deps import ResultOf, bind
from procqueue._runtime import _calls

BOUND = 30.0
BIG = b"x" * (1 << 17)  # above _calls._BIG: travels out of band
Pair = namedtuple("Pair", "a b")


def _reference_bind(value: Any, values: dict[int, Any]) -> Any:
    """The rule, written plainly: markers at any depth of lists, tuples and
    dict values are replaced; nothing else is looked into."""
    kind = type(value)
    if kind is ResultOf:
        return values[value.task_id]
    if kind in (list, tuple):
        return kind(_reference_bind(v, values) for v in value)
    if kind is dict:
        return {k: _reference_bind(v, values) for k, v in value.items()}
    return value


def _payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, list[Any]]:
    return _calls.dump_callable(ident), _calls.dump_arguments(args, kwargs)


def _decode(segments: list[Any]) -> Any:
    """What a worker does with the bound segments."""
    fn_blob = _calls.dump_callable(ident)
    blob = memoryview(b"".join(bytes(memoryview(s)) for s in segments))
    fn, args, kwargs = _calls.CallLoader().load(memoryview(fn_blob), blob, 0)
    assert fn is ident
    return args, kwargs


def _flat_bytes(segments: list[Any]) -> bytes:
    return b"".join(bytes(memoryview(s)) for s in segments)


VALUES: dict[int, Any] = {1: 41, 2: "two", 3: 3.5, 4: None, 5: b"five", 6: [6, 6], 7: {"k": 7}}

CASES: list[tuple[str, bool, tuple[Any, ...], dict[str, Any]]] = [
    # (id, takes the fast path, args, kwargs)
    # top-level markers bound to scalars, positional or keyword: the fast path
    ("one marker", True, (ResultOf(1),), {}),
    ("markers and scalars", True, (ResultOf(1), 2, ResultOf(2), True, None, 1.5), {}),
    ("keyword marker", True, (1,), {"b": ResultOf(2), "c": 3}),
    ("keywords only", True, (), {"x": ResultOf(3), "y": ResultOf(4)}),
    ("same marker twice", True, (ResultOf(1), ResultOf(1)), {"k": ResultOf(1)}),
    # the general walk
    ("in a list", False, ([1, ResultOf(1), 3],), {}),
    ("in a tuple in a list", False, ([(ResultOf(2), 0)],), {}),
    ("dict value, deep", False, ({"a": [{"b": (ResultOf(3),)}]},), {}),
    ("nested keyword", False, (), {"k": [ResultOf(1), {"z": ResultOf(5)}]}),
    ("bound to a list", False, (ResultOf(6),), {}),
    ("bound to a dict, keyword", False, (1,), {"d": ResultOf(7)}),
    ("marker-free containers beside one", False, ([1, 2], {"q": (3,)}, ResultOf(1)), {}),
]


@pytest.mark.parametrize(
    ("fast", "args", "kwargs"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bound_payload_is_what_dump_arguments_gives(
    monkeypatch: pytest.MonkeyPatch, fast: bool, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    walks: list[object] = []

    def spy(value: Any, values: dict[int, Any]) -> Any:
        walks.append(value)
        return bind(value, values)

    monkeypatch.setattr(_calls, "bind", spy)  # the general path walks with _calls.bind
    fn_blob, segments = _calls.bind_inputs(_payload(args, kwargs), VALUES)
    assert bool(walks) is not fast
    want_args = _reference_bind(args, VALUES)
    want_kwargs = _reference_bind(kwargs, VALUES)
    assert fn_blob == _calls.dump_callable(ident)
    assert _flat_bytes(segments) == _flat_bytes(_calls.dump_arguments(want_args, want_kwargs))
    got_args, got_kwargs = _decode(segments)
    assert got_args == want_args and type(got_args) is tuple
    assert got_kwargs == want_kwargs and list(got_kwargs) == list(kwargs)


def test_fast_path_result_is_one_plain_pickle() -> None:
    _, segments = _calls.bind_inputs(_payload((ResultOf(9), 1), {"k": ResultOf(8)}), {9: 5, 8: "v"})
    assert segments == (_calls._NO_BUFFERS, pickle.dumps(((5, 1), {"k": "v"}), protocol=5))


def test_nothing_but_lists_tuples_and_dict_values_is_looked_into() -> None:
    marker = ResultOf(1)
    args = (Pair(marker, 1), {marker: 1}, frozenset([marker]))
    _, segments = _calls.bind_inputs(_payload(args, {}), {1: 99})
    (pair, keyed, frozen), _ = _decode(segments)
    assert type(pair) is Pair and type(pair.a) is ResultOf and pair.a.task_id == 1
    assert [type(k) for k in keyed] == [ResultOf]
    assert [type(m) for m in frozen] == [ResultOf]


def test_a_bound_value_that_is_a_marker_is_not_bound_again() -> None:
    _, segments = _calls.bind_inputs(_payload((ResultOf(1),), {}), {1: ResultOf(2)})
    (value,), _ = _decode(segments)
    assert type(value) is ResultOf and value.task_id == 2


def test_big_bound_bytes_travel_out_of_band() -> None:
    _, segments = _calls.bind_inputs(_payload((ResultOf(1), 2), {}), {1: BIG})
    assert struct.unpack_from("<I", segments[0])[0] == 1
    assert _flat_bytes(segments) == _flat_bytes(_calls.dump_arguments((BIG, 2), {}))
    assert _decode(segments) == ((BIG, 2), {})


@pytest.mark.parametrize("where", ["positional", "keyword"])
def test_out_of_band_arguments_beside_a_marker_survive(where: str) -> None:
    big = b"y" * len(BIG)
    args, kwargs = (
        ((big, ResultOf(1)), {}) if where == "positional" else ((ResultOf(1),), {"b": big})
    )
    payload = _payload(args, {**kwargs, "k": ResultOf(2)})
    assert struct.unpack_from("<I", payload[1][0])[0] == 1  # the argument is out of band
    _, segments = _calls.bind_inputs(payload, {1: 1, 2: [2]})
    want_args = _reference_bind(args, {1: 1})
    want_kwargs = {**kwargs, "k": [2]}
    assert _flat_bytes(segments) == _flat_bytes(_calls.dump_arguments(want_args, want_kwargs))
    assert struct.unpack_from("<I", segments[0])[0] == 1
    assert _decode(segments) == (want_args, want_kwargs)


def test_a_joined_blob_is_accepted_too() -> None:
    """A payload whose segments were split otherwise (one blob) still binds."""
    fn_blob, segments = _payload((BIG, [ResultOf(1)]), {})
    _, bound = _calls.bind_inputs((fn_blob, [_flat_bytes(segments)]), {1: 7})
    assert _decode(bound) == ((BIG, [7]), {})


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((ResultOf(1),), {}),
        ((0,), {"k": ResultOf(1)}),
        (([{"a": ResultOf(1)}],), {}),
    ],
    ids=["top level", "keyword", "nested"],
)
def test_an_unpicklable_upstream_value_raises(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(TypeError, match="lock"):
        _calls.bind_inputs(_payload(args, kwargs), {1: threading.Lock()})


def test_bind_copies_only_containers_that_hold_a_marker() -> None:
    shared = [1, 2]
    plain = {"a": (3, shared)}
    value = (shared, plain, [ResultOf(1)], ResultOf(2))
    bound = bind(value, {1: "one", 2: "two"})
    assert bound == ([1, 2], {"a": (3, [1, 2])}, ["one"], "two")
    assert bound[0] is shared and bound[1] is plain
    assert bind(plain, {}) is plain and bind((1, 2), {}) == (1, 2)
    keyed = {"x": ResultOf(1), "y": 2}
    assert list(bind(keyed, {1: 0})) == ["x", "y"] and keyed["x"].task_id == 1  # not mutated


def test_objects_shared_between_arguments_stay_shared() -> None:
    shared = [1, 2]
    _, segments = _calls.bind_inputs(_payload((shared, shared, ResultOf(1)), {}), {1: 0})
    (a, b, c), _ = _decode(segments)
    assert a == [1, 2] and a is b and c == 0


def test_marker_arguments_pickle_as_the_fast_pickler_would() -> None:
    """``dump_arguments`` pickles top-level markers with the plain C pickler;
    the bytes are those ``_FastPickler`` gave, which workers already read."""
    for call in [((ResultOf(1),), {}), ((1, ResultOf(2), "s"), {"k": ResultOf(3)})]:
        via_fast = _calls._dump_with(_calls._FastPickler, (_calls._wrap_big(call[0]), call[1]))
        assert _flat_bytes(_calls.dump_arguments(*call)) == _flat_bytes(via_fast)
    # all_plain still refuses markers: the front doors look for them by it.
    assert not _calls.all_plain([ResultOf(1)])


# --- end to end --------------------------------------------------------------------------


def test_results_flow_through_both_paths_end_to_end() -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2) as q:
            a = await q.submit(add, 1, 1)  # 2
            b = await q.submit(add, result_of(a), b=result_of(a))  # fast path: 4
            c = await q.submit(ident, {"x": [result_of(a), (result_of(b),)]})  # nested
            d = await q.submit(ident, result_of(c))  # bound to a dict: general path
            assert await q.result(b, timeout=BOUND) == 4
            assert await q.result(c, timeout=BOUND) == {"x": [2, (4,)]}
            assert await q.result(d, timeout=BOUND) == {"x": [2, (4,)]}

    asyncio.run(main())


def test_an_unpicklable_upstream_result_fails_the_dependent() -> None:
    """The result pickles in the worker but unpickles, here, as a lock: binding
    it into the dependent's arguments cannot pickle it again. (The dependents
    are submitted once it has ended, so the coordinator binds them; one that
    waits for it gets the worker's own bytes instead: test_holes.py.)"""

    class BecomesALock:
        def __reduce__(self) -> tuple[Any, ...]:
            return (threading.Lock, ())

    def make() -> BecomesALock:
        return BecomesALock()

    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            up = await q.submit(make)
            await q.result(up, timeout=BOUND)
            fast = await q.submit(ident, result_of(up))
            nested = await q.submit(ident, [{"v": result_of(up)}])
            for tid in (fast, nested):
                with pytest.raises(SerializationError, match="upstream results"):
                    await q.result(tid, timeout=BOUND)

    asyncio.run(main())
