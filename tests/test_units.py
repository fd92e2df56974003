"""Pure units: heap order, backoff, the transition table, the wire codec."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from procqueue import InvalidArgumentError, OptionTypeError, RetryPolicy, TaskState
from procqueue._core.heaps import _DelayedHeap, _ReadyHeap
from procqueue._core.records import _IllegalTransitionError, _TaskRecord
from procqueue._runtime._calls import dump_arguments, dump_value, load_value
from procqueue._runtime.wire import Hello, RunBatch, _FrameReader, _FrameWriter, decode, encode


def _rec(task_id: int, priority: int) -> _TaskRecord:
    return _TaskRecord(task_id, "t", priority, (b"", []), RetryPolicy(), None, 0.0, None)


@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), max_size=60))
def test_ready_heap_pops_priority_then_fifo_and_skips_cancelled(
    items: list[tuple[int, bool]],
) -> None:
    recs = [_rec(i + 1, p) for i, (p, _) in enumerate(items)]
    heap = _ReadyHeap({r.task_id: r for r in recs})
    for r in recs:
        heap.push(r)
    for r, (_, cancelled) in zip(recs, items):
        if cancelled:
            heap.discard(r)
            r.move(TaskState.CANCELLED)
    expected = sorted(
        (r for r, (_, c) in zip(recs, items) if not c), key=lambda r: (-r.priority, r.task_id)
    )
    assert len(heap) == len(expected)
    got = []
    while (r := heap.pop()) is not None:
        got.append(r)
    assert got == expected
    assert len(heap) == 0


def test_delayed_heap_releases_by_due_time() -> None:
    d = _DelayedHeap()
    a, b = _rec(1, 0), _rec(2, 0)
    for r in (a, b):
        r.move(TaskState.RUNNING)
        r.move(TaskState.RETRYING)
    d.push(5.0, a)
    d.push(3.0, b)
    assert d.next_due() == 3.0
    assert d.pop_due(4.0) == [b]
    assert d.pop_due(4.0) == []
    assert d.pop_due(5.0) == [a]
    assert d.next_due() is None


@given(
    base=st.floats(0, 10),
    factor=st.floats(1, 4),
    cap=st.floats(0, 100),
    jitter=st.floats(0, 1),
    n=st.integers(1, 200),
    r=st.floats(0, 0.999999),
)
def test_backoff_is_capped_and_jittered_within_bounds(
    base: float, factor: float, cap: float, jitter: float, n: int, r: float
) -> None:
    policy = RetryPolicy(backoff_base=base, backoff_factor=factor, backoff_max=cap, jitter=jitter)
    delay = policy.delay(n, lambda: r)
    assert 0 <= delay <= cap
    try:
        raw = min(cap, base * factor ** (n - 1))
    except OverflowError:
        raw = cap
    assert raw * (1 - jitter) - 1e-9 <= delay <= raw * (1 + jitter) + 1e-9


def test_backoff_formula() -> None:
    p = RetryPolicy(backoff_base=0.5, backoff_factor=2, backoff_max=3, jitter=0)
    assert [p.delay(n, lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]


def test_retry_policy_validation() -> None:
    with pytest.raises(InvalidArgumentError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(OptionTypeError):
        RetryPolicy(max_retries=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        RetryPolicy(jitter=2)
    with pytest.raises(InvalidArgumentError):
        RetryPolicy(backoff_factor=0.5)
    with pytest.raises(OptionTypeError):
        RetryPolicy(retry_on=(int,))  # type: ignore[arg-type]


def test_should_retry_counts_attempts() -> None:
    p = RetryPolicy(max_retries=2)
    assert p.should_retry(ValueError(), 1)
    assert p.should_retry(ValueError(), 2)
    assert not p.should_retry(ValueError(), 3)
    assert not p.should_retry(KeyboardInterrupt(), 1)


def test_transition_table_rejects_illegal_moves() -> None:
    r = _rec(1, 0)
    with pytest.raises(_IllegalTransitionError):
        r.move(TaskState.COMPLETED)  # pending cannot complete without running
    r.move(TaskState.RUNNING)
    r.move(TaskState.COMPLETED)
    for state in TaskState:
        with pytest.raises(_IllegalTransitionError):
            r.move(state)  # a final state is never left
    assert TaskState.COMPLETED.is_final and not TaskState.RETRYING.is_final


@given(
    sizes=st.lists(st.integers(0, 300_000), min_size=1, max_size=4),
)
def test_frames_survive_partial_reads_and_writes(sizes: list[int]) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    writer, reader = _FrameWriter(w), _FrameReader(r)
    blobs = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    msgs = [RunBatch((i,), (len(b), 0), (i,)) for i, b in enumerate(blobs)]
    got = []
    try:
        for m, b in zip(msgs, blobs):
            writer.write(encode(m, [b]))
            while True:
                frames = reader.read_frames()
                assert frames is not None
                got.extend(frames)
                if writer.flush() and len(got) == msgs.index(m) + 1:
                    break
        decoded = [decode(f) for f in got]
        assert [m for m, _ in decoded] == msgs
        assert [bytes(blob) for _, blob in decoded] == blobs
        os.close(w)
        w = -1
        assert reader.read_frames() is None
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_hello_round_trip() -> None:
    frame = b"".join(encode(Hello(1, 42)))
    msg, blob = decode(frame[8:])
    assert msg == Hello(1, 42) and len(blob) == 0


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.integers(),
            st.text(max_size=8),
            st.builds(lambda n: b"\x07" * n, st.integers(65_536, 200_000)),
            st.builds(lambda n: bytearray(b"\x05" * n), st.integers(0, 200_000)),
        ),
        max_size=5,
    )
)
def test_value_blobs_round_trip_with_out_of_band_buffers(values: list[object]) -> None:
    for value in (tuple(values), {"k": values}, values[0] if values else None):
        segments = dump_value(value)
        blob = memoryview(b"".join(bytes(memoryview(s)) for s in segments))
        assert load_value(blob) == value
    segments = dump_arguments(tuple(values), {"kw": values[-1] if values else 0})
    blob = memoryview(b"".join(bytes(memoryview(s)) for s in segments))
    assert load_value(blob) == (tuple(values), {"kw": values[-1] if values else 0})


def test_big_bytes_travel_out_of_band() -> None:
    big = b"z" * 100_000
    segments = dump_value(big)
    assert len(segments) == 3  # header, pickle, the buffer itself
    assert memoryview(segments[2]).obj is big  # written from the object's own memory
    args = dump_arguments((1, big), {"also": big})
    assert len(args) == 4  # header, pickle, two buffers
    assert load_value(memoryview(b"".join(bytes(memoryview(s)) for s in args))) == (
        (1, big),
        {"also": big},
    )
