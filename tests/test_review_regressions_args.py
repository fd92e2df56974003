"""Regressions for bugs a review found in how a call's arguments are taken in:
the walk for ``result_of`` markers copied every list, tuple and dict (shared
objects arrived as copies, a list holding itself raised ``RecursionError``),
``result_of(<another pool's future>)`` read this queue's task of the same id,
and ``max_retries`` was type-checked only when no cached policy matched."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _tasks import add, echo_kwargs, ident

from procqueue import (
    InvalidArgumentError,
    OptionTypeError,
    ProcQueue,
    RetryPolicy,
    TaskQueue,
    result_of,
    task_id,
)
from procqueue._core.deps import FutureResultOf, ResultOf, bind, find_markers, replace_in_call
from procqueue._frontdoor import make_engine, prepare
from procqueue._policy import resolve_policy
from procqueue._runtime import _calls
from procqueue._runtime.engine import Engine
from procqueue._runtime.futures import _TaskFuture
from procqueue._runtime.state import EngineState

BOUND = 30.0


def open_engine() -> Engine:
    """An engine that takes submits, with no process behind it."""
    eng = make_engine("ProcQueue", 1, {})
    eng.state = EngineState.RUNNING
    return eng


def future_of(eng: Engine, tid: int) -> _TaskFuture:
    fut = _TaskFuture()
    fut.bind(eng._cancel_ref, tid)
    return fut


def keep(v: Any) -> Any:
    return v


# --- the walk keeps the caller's objects ----------------------------------------------


def test_containers_without_markers_are_passed_on_as_they_are() -> None:
    shared = [1, 2, {"k": 3}]
    args = (shared, shared, (shared, "s"))
    kwargs = {"d": {"x": shared, "y": shared}}
    new_args, new_kwargs = replace_in_call(args, kwargs, keep)
    assert new_args is args and new_kwargs is kwargs
    assert new_args[0] is shared and new_args[2][0] is shared


def test_a_copied_container_is_copied_once_however_often_it_is_held() -> None:
    marker = FutureResultOf(7, object())
    held = [marker, 1]
    plain = [2]
    args, kwargs = replace_in_call(
        (held, held, plain), {"k": (held,)}, lambda v: ResultOf(7) if v is marker else v
    )
    assert args[0] is args[1] is kwargs["k"][0] and args[0] is not held
    assert type(args[0][0]) is ResultOf and args[2] is plain
    assert held[0] is marker  # the caller's list is not changed


def test_containers_that_hold_themselves_are_walked_once() -> None:
    loop: list[Any] = [1, ResultOf(4)]
    loop.append(loop)
    looped: dict[str, Any] = {"k": 1}
    looped["self"] = looped
    args, kwargs = replace_in_call((loop,), {"d": looped}, keep)
    assert args[0] is loop and kwargs["d"] is looped
    found: set[int] = set()
    find_markers((loop,), {"d": looped}, found)
    assert found == {4}


def test_a_loop_through_a_replaced_value_points_at_the_copy() -> None:
    marker = ResultOf(1)
    loop: list[Any] = [marker]
    loop.append((loop, "t"))
    outer = {"loop": loop, "plain": [5]}
    bound = bind(outer, {1: "one"})
    assert bound["plain"] is outer["plain"]
    copy = bound["loop"]
    assert copy is not loop and copy[0] == "one" and copy[1][0] is copy
    assert loop[0] is marker  # the original is not changed


def test_bind_keeps_a_shared_container_shared() -> None:
    held = [ResultOf(1)]
    a, b = bind((held, held), {1: 0})
    assert a == [0] and a is b


def test_shared_and_looping_arguments_arrive_as_pickle_keeps_them() -> None:
    """As ``ProcessPoolExecutor`` passes them: one list given twice arrives as
    one list; a list holding itself arrives holding itself."""
    shared = [1, 2, {"k": 3}]
    loop: list[Any] = [1, 2]
    loop.append(loop)
    with ProcQueue(max_workers=1) as pool:
        (a, b), _ = pool.submit(echo_kwargs, shared, shared).result(timeout=BOUND)
        assert a == shared and a is b
        nested = pool.submit(ident, {"x": shared, "y": shared}).result(timeout=BOUND)
        assert nested["x"] is nested["y"]
        got = pool.submit(ident, loop).result(timeout=BOUND)
        assert got[:2] == [1, 2] and got[2] is got
        # A future of this pool in a looping list: the list is copied, loop and all.
        up = pool.submit(add, 20, 22)
        held: list[Any] = [up]
        held.append(held)
        got = pool.submit(ident, held).result(timeout=BOUND)
        assert got[0] == 42 and got[1] is got


def test_a_looping_argument_beside_a_marker_is_bound_in_place() -> None:
    async def main() -> list[Any]:
        async with TaskQueue(num_workers=1) as q:
            up = await q.submit(add, 1, 2)
            loop: list[Any] = [result_of(up)]
            loop.append(loop)
            got: list[Any] = await q.result(await q.submit(ident, loop), timeout=BOUND)
            return got

    got = asyncio.run(main())
    assert got[0] == 3 and got[1] is got


# --- result_of(future) belongs to the queue it came from ------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: ((m,), {}),  # a chain's link: the fast path
        lambda m: ((m, 1), {}),
        lambda m: ((1,), {"k": m}),
        lambda m: (([{"v": m}],), {}),
    ],
    ids=["alone", "beside a scalar", "keyword", "nested"],
)
def test_result_of_another_queues_future_is_refused(call: Any) -> None:
    mine, other = open_engine(), open_engine()
    foreign = future_of(other, 1)
    args, kwargs = call(result_of(foreign))
    with pytest.raises(InvalidArgumentError, match="not a future of this queue"):
        prepare(mine, ident, args, kwargs)
    with pytest.raises(InvalidArgumentError, match="not a future of this queue"):
        prepare(mine, ident, args, kwargs, after=[], trigger="all_done")


def test_result_of_this_queues_future_waits_on_it() -> None:
    eng = open_engine()
    own = future_of(eng, 5)
    for args, kwargs in [((result_of(own),), {}), ((1,), {"k": [result_of(own)]})]:
        mine = _TaskFuture()
        rec = prepare(eng, ident, args, kwargs, future=mine)
        assert rec.upstream == (5,) and rec.inputs == {5: own}
        assert rec.future is mine and task_id(own) == 5 and task_id(mine) == rec.task_id


def test_result_of_a_procqueue_future_in_a_taskqueue_is_refused() -> None:
    async def submit(fut: Any) -> None:
        async with TaskQueue(num_workers=1) as q:
            await q.submit(ident, "TaskQueue's own task")
            await q.submit(ident, result_of(fut))

    with ProcQueue(max_workers=1) as pool:
        fut = pool.submit(ident, "the pool's result")
        with pytest.raises(InvalidArgumentError):
            asyncio.run(submit(fut))
        assert pool.submit(add, result_of(fut), "!").result(timeout=BOUND) == "the pool's result!"
        assert pool.submit(ident, result_of(fut)).result(timeout=BOUND) == "the pool's result"


# --- max_retries is an int, whatever came before --------------------------------------


@pytest.mark.parametrize("bad", [False, True, 0.0, 1.0, 2.0])
def test_max_retries_of_the_wrong_type_is_refused_whatever_is_cached(bad: object) -> None:
    base = RetryPolicy()
    resolve_policy(base, 1, None)  # caches a budget of 1 (the queue's is 0)
    resolve_policy(base, 2, None)
    with pytest.raises(OptionTypeError, match="max_retries must be an int"):
        resolve_policy(base, bad, None)  # type: ignore[arg-type]
    with pytest.raises(OptionTypeError, match="max_retries must be an int"):
        resolve_policy(base, bad, RetryPolicy(max_retries=1))  # type: ignore[arg-type]


def test_a_queue_refuses_max_retries_equal_to_the_default_but_not_an_int() -> None:
    with pytest.raises(OptionTypeError, match="max_retries must be an int"):
        make_engine("ProcQueue", 1, {"max_retries": False})
    base = RetryPolicy()
    assert resolve_policy(base, 0, None) is base and resolve_policy(base, None, None) is base


def test_a_list_shared_by_args_and_kwargs_stays_one_list_when_bound() -> None:
    """bind_inputs bound args and kwargs in two walks: a container holding a
    marker that both shared arrived as two copies."""
    shared = [ResultOf(7), 1]
    payload = ("fn", _calls.dump_arguments((shared,), {"again": shared}))
    _, segments = _calls.bind_inputs(payload, {7: 70})  # type: ignore[arg-type]
    (arg,), kwargs = _calls._load_segments(segments)
    assert arg == [70, 1] and arg is kwargs["again"]


def test_pickling_errors_are_type_errors_too_as_pickle_s_own_are() -> None:
    """ProcessPoolExecutor surfaces pickle's TypeError ("cannot pickle
    '_thread.lock' object"): a script's ``except TypeError`` must still catch."""
    import threading

    from procqueue import ResultSerializationError, SerializationError

    assert issubclass(SerializationError, TypeError)
    assert issubclass(ResultSerializationError, TypeError)
    with ProcQueue(max_workers=1) as pool, pytest.raises(TypeError):
        pool.submit(ident, threading.Lock())
