"""Calls with holes (``_calls.dump_with_holes``, ``_calls.pass_inputs``): a call
made of small scalars and top-level ``result_of`` markers is pickled with
holes where the markers stand, and its upstream values reach the worker as
the ``Result`` frames their own workers sent, never unpickled and pickled
again by the coordinator. What a worker binds must be what the coordinator
would have bound; whatever the holes cannot carry falls back to
``_calls.bind_inputs``."""

from __future__ import annotations

import asyncio
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
from _tasks import Gate, add, echo_kwargs, fail_times, gated, ident, raise_value_error
from hypothesis import given, settings
from hypothesis import strategies as st

from procqueue import ProcQueue, SerializationError, TaskQueue, result_of
from procqueue._core.deps import ResultOf, bind
from procqueue._runtime import _calls, _shm, wire

BOUND = 30.0
BIG = b"b" * (_shm.SPILL_MIN + 1)


def _frame(task_id: int, value: Any) -> bytes:
    """A ``Result`` frame body, as a worker sends it and the coordinator reads it."""
    buffers = wire.encode(wire.Result(task_id, True, 1.0, 2.0), _calls.dump_value(value))
    return b"".join(bytes(memoryview(b)) for b in buffers)[8:]


def _in_worker(payload: tuple[bytes, list[Any]]) -> tuple[Any, Any]:
    """What a worker's ``CallLoader`` makes of a payload sent on its own."""
    refs = _calls.CallRefs()
    blobs, sizes, fids = refs.pack({}, [payload], (1,), None)
    batch = wire.encode(wire.RunBatch((1,), sizes, fids), blobs)
    msg, body = wire.decode(b"".join(bytes(memoryview(b)) for b in batch)[8:])
    assert isinstance(msg, wire.RunBatch)
    fn_size, arg_size = msg.sizes
    fn, args, kwargs = _calls.CallLoader().load(
        body[:fn_size], body[fn_size : fn_size + arg_size], msg.fids[0]
    )
    assert fn is ident
    return args, kwargs


def _plain(value: Any) -> Any:
    """Markers as comparable tuples (a marker has no equality of its own)."""
    if type(value) is ResultOf:
        return ("result_of", value.task_id)
    if type(value) in (list, tuple):
        return type(value)(_plain(v) for v in value)
    if type(value) is dict:
        return {k: _plain(v) for k, v in value.items()}
    return value


def _holes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, list[Any]]:
    made = _calls.dump_with_holes(args, kwargs)
    assert made is not None
    return _calls.dump_callable(ident), made[0]


VALUES: dict[int, Any] = {1: 41, 2: "two", 3: [3, {"x": (3,)}], 4: None, 5: BIG}
scalar = st.one_of(
    st.integers(), st.text(max_size=5), st.none(), st.booleans(), st.floats(allow_nan=False)
)
item = st.one_of(scalar, st.sampled_from(sorted(VALUES)).map(ResultOf))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(args=st.lists(item, max_size=5), kwargs=st.dictionaries(st.text(max_size=3), item))
def test_a_worker_binds_what_the_coordinator_would(args: list[Any], kwargs: dict[str, Any]) -> None:
    call = (tuple(args), kwargs)
    made = _calls.dump_with_holes(*call)
    if made is None:  # no marker at all: not a call with holes
        assert not any(type(v) is ResultOf for v in [*args, *kwargs.values()])
        return
    blob, ids = made
    markers = [v for v in [*args, *kwargs.values()] if type(v) is ResultOf]
    assert list(ids) == [m.task_id for m in markers]
    payload = (_calls.dump_callable(ident), blob)
    inputs = {tid: (VALUES[tid], _frame(tid, VALUES[tid])) for tid in ids}
    sent = _calls.pass_inputs(payload, inputs)
    # The frames follow the call's own pickle, as they came: nothing pickled again.
    frames = b"".join(inputs[tid][1] for tid in ids)
    assert sent[0] is payload[0] and b"".join(sent[1]).endswith(blob[1] + frames)
    want = (bind(call[0], VALUES), bind(kwargs, VALUES))
    got = _in_worker(sent)
    assert got == want and list(got[1]) == list(kwargs)
    # The coordinator's own binding agrees (the fallback), and so does what a
    # dashboard decodes from the payload: markers while waiting, then values.
    assert _in_worker(_calls.bind_inputs(payload, VALUES)) == want
    assert _plain(_calls.load_value(memoryview(b"".join(blob)))) == _plain(call)
    assert _calls.load_value(memoryview(b"".join(sent[1]))) == want


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, 2), {}),  # no marker
        (([ResultOf(1)],), {}),  # nested: the general walk
        ((ResultOf(1), [2]), {}),  # a container beside it
        ((ResultOf(1), b"x" * _calls._BIG), {}),  # big bytes travel out of band
        ((ResultOf(1),), {"k": object()}),
    ],
    ids=["plain", "nested", "container", "big bytes", "object"],
)
def test_only_flat_calls_get_holes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    assert _calls.dump_with_holes(args, kwargs) is None


def test_the_same_upstream_in_two_holes_and_a_keyword() -> None:
    payload = _holes((ResultOf(7), 0, ResultOf(7)), {"a": 1, "b": ResultOf(8)})
    inputs = {7: ("seven", _frame(7, "seven")), 8: (8.5, _frame(8, 8.5))}
    assert _in_worker(_calls.pass_inputs(payload, inputs)) == (
        ("seven", 0, "seven"),
        {"a": 1, "b": 8.5},
    )


def test_a_call_of_markers_alone_pickles_nothing() -> None:
    for args in [(ResultOf(1),), (ResultOf(1), ResultOf(2))]:
        segments = _holes(args, {})[1]
        assert segments[1] == b""
        assert _plain(_calls.load_value(memoryview(b"".join(segments)))) == (_plain(args), {})
        inputs = {m.task_id: (m.task_id * 10, _frame(m.task_id, m.task_id * 10)) for m in args}
        sent = _calls.pass_inputs((_calls.dump_callable(ident), segments), inputs)
        assert len(sent[1]) == 1  # small frames: joined, one iovec in a batch
        assert _in_worker(sent) == (tuple(m.task_id * 10 for m in args), {})


def test_without_every_frame_the_coordinator_binds() -> None:
    """An upstream with no frame (linked after it ended, an exception under
    all_done, a spilled result): the values are bound here, as before."""
    payload = _holes((ResultOf(1), ResultOf(2)), {})
    err = ValueError("boom")
    bound = _calls.pass_inputs(payload, {1: (5, _frame(1, 5)), 2: (err, None)})
    assert len(bound[1]) == 2 and not bound[1][0][3] & _calls._HOLES_BYTE
    (five, got), _ = _in_worker(bound)
    assert five == 5 and type(got) is ValueError and str(got) == "boom"
    with pytest.raises(TypeError, match="lock"):
        _calls.pass_inputs(payload, {1: (threading.Lock(), None), 2: (0, None)})


def test_forwarded_frames_are_never_spilled(tmp_path: Path) -> None:
    """A large frame rides in the arguments as it came, whatever the outbox."""
    import os

    fd = os.open(tmp_path / "side", os.O_RDWR | os.O_CREAT)
    try:
        outbox = _shm.Outbox(fd)
        frame = _frame(1, list(range(40_000)))  # in band, over SPILL_MIN
        assert len(frame) > _shm.SPILL_MIN
        sent = _calls.pass_inputs(_holes((ResultOf(1),), {}), {1: (None, frame)})
        blobs, sizes, _ = _calls.CallRefs().pack({}, [sent], (9,), outbox)
        assert blobs[-1] is frame and not outbox.held
        assert sizes[1] == sum(len(s) for s in sent[1])
    finally:
        os.close(fd)


# --- end to end ------------------------------------------------------------------------


def test_values_pass_through_the_worker_end_to_end(gate: Gate, counter: str) -> None:
    """Dependents linked while their upstream runs: positional and keyword
    holes, a retry and a requeue from the dead letter queue get the same
    value; a value spilled through the side file and an all_done exception
    take the coordinator's path."""

    async def main() -> None:
        async with TaskQueue(num_workers=2) as q:
            up = await q.submit(gated, gate.paths, 20)
            gate.wait_started()
            one = await q.submit(add, result_of(up), b=result_of(up))
            kw = await q.submit(echo_kwargs, 1, x=result_of(up), y="y")
            retried = await q.submit(fail_times, counter, 1, result_of(up), max_retries=1)
            dead = await q.submit(fail_times, counter + "2", 1, result_of(up), max_retries=0)
            gate.release()
            assert await q.result(one, timeout=BOUND) == 40
            assert await q.result(kw, timeout=BOUND) == ((1,), {"x": 20, "y": "y"})
            assert await q.result(retried, timeout=BOUND) == 20
            with pytest.raises(ValueError, match="planned failure"):
                await q.result(dead, timeout=BOUND)
            again = q.dlq.requeue(dead)
            assert await q.result(again, timeout=BOUND) == 20

            big = await q.submit(gated, gate.paths, BIG)
            gate.wait_started()
            size = await q.submit(len, result_of(big))
            bad = await q.submit(raise_value_error, "boom", max_retries=0)
            cleanup = await q.submit(ident, result_of(bad), trigger="all_done")
            gate.release()
            assert await q.result(size, timeout=BOUND) == len(BIG)
            err = await q.result(cleanup, timeout=BOUND)
            assert isinstance(err, ValueError)

    asyncio.run(main())


def test_futures_as_arguments_get_holes_too() -> None:
    with ProcQueue(max_workers=2) as pool:
        a = pool.submit(add, 2, 3)
        b = pool.submit(add, a, b=a)  # this pool's futures, top level
        assert b.result(timeout=BOUND) == 10


class BecomesALock:
    """Pickles fine, but unpickles as a lock, which cannot be pickled again."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (threading.Lock, ())


def make_lockish() -> BecomesALock:
    return BecomesALock()


def type_name(x: object) -> str:
    return type(x).__name__


def test_a_waiting_dependent_gets_the_upstream_bytes_a_late_one_a_new_pickle(
    gate: Gate,
) -> None:
    """The coordinator never pickles a value it forwards: a dependent waiting
    for it gets what the upstream's worker pickled (here a lock); one
    submitted after the upstream ended, or holding the marker in a list, has
    it bound and pickled again by the coordinator, which fails cleanly."""

    async def main() -> None:
        async with TaskQueue(num_workers=1) as q:
            held = await q.submit(gated, gate.paths)
            up = await q.submit(make_lockish, after=[held])
            waiting = await q.submit(type_name, result_of(up))
            nested = await q.submit(type_name, [result_of(up)])
            gate.wait_started()
            gate.release()
            assert await q.result(waiting, timeout=BOUND) == "lock"
            with pytest.raises(SerializationError, match="upstream results"):
                await q.result(nested, timeout=BOUND)
            late = await q.submit(type_name, result_of(up))
            with pytest.raises(SerializationError, match="upstream results"):
                await q.result(late, timeout=BOUND)

    asyncio.run(main())


def test_a_frame_pickles_nothing_again_in_the_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Binding a released call with holes neither loads nor dumps a pickle."""
    payload = _holes((ResultOf(1), 2), {})
    frame = _frame(1, {"v": 1})

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("pickled in the coordinator")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "dumps", refuse)
    monkeypatch.setattr(_calls, "bind_inputs", refuse)
    sent = _calls.pass_inputs(payload, {1: ({"v": 1}, frame)})
    assert b"".join(sent[1]).endswith(payload[1][1] + frame)
