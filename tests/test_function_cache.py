"""A callable is pickled once per function object and sent once per worker.

Functions defined in ``__main__`` (here: lambdas and closures, which cloudpickle
also carries by value) are snapshotted at their first submit; the workers keep
callables by id, and both sides evict the same way.
"""

from __future__ import annotations

from typing import Any

import pytest
from _tasks import LoadsOnlyHere, add
from hypothesis import given, settings
from hypothesis import strategies as st

import procqueue
from procqueue import ProcQueue
from procqueue._runtime import _calls, wire


def _constant(i: int) -> Any:
    # eval: a distinct by-value function (and pickle) per i, as a script's would be.
    return eval(f"lambda: {i}")


def test_a_by_value_function_is_snapshotted_until_refreshed() -> None:
    box = [1]

    def read() -> int:
        return box[0]

    with ProcQueue(1) as pool:
        assert pool.submit(read).result() == 1
        box[0] = 2
        assert pool.submit(read).result() == 1  # the snapshot of the first submit
        procqueue.refresh_function(read)
        assert pool.submit(read).result() == 2
        box[0] = 3
        procqueue.refresh_function()  # every function
        assert pool.submit(read).result() == 3


def test_workers_keep_callables_and_evict_in_step_with_the_coordinator() -> None:
    fns = [_constant(i) for i in range(_calls.KEEP_MAX + 60)]
    order = list(range(len(fns))) + list(reversed(range(len(fns)))) + list(range(40))
    with ProcQueue(1) as pool:
        futures = [pool.submit(fns[i]) for i in order]
        assert [f.result(timeout=60) for f in futures] == order


def test_a_kept_callable_that_cannot_load_fails_each_call_alone() -> None:
    with ProcQueue(1) as pool:
        for _ in range(3):
            with pytest.raises(RuntimeError, match="cannot be loaded in a worker"):
                pool.submit_task(LoadsOnlyHere(), max_retries=0).result(timeout=30)
        assert pool.submit(add, 1, 2).result(timeout=30) == 3


def test_large_closures_are_neither_cached_nor_kept() -> None:
    big = bytes(_calls._SNAPSHOT_MAX + 1)

    def size() -> int:
        return len(big)

    blob = _calls.dump_callable(size)
    assert blob is not _calls.dump_callable(size)  # pickled afresh each time
    assert _calls.CallRefs().fid(blob) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, _calls.KEEP_MAX + 40), max_size=800), st.integers(1, 7))
def test_refs_and_worker_tables_agree(picks: list[int], batch: int) -> None:
    """Whatever the order, a worker finds each callable the coordinator means."""
    import pickle

    blobs = [pickle.dumps(("fn", i)) for i in range(_calls.KEEP_MAX + 41)]
    refs, holds, loader = _calls.CallRefs(), {}, _calls.CallLoader()
    args = _calls.dump_arguments((), {})
    for start in range(0, len(picks), batch):
        chunk = picks[start : start + batch]
        out, sizes, fids = refs.pack(holds, [(blobs[i], args) for i in chunk])
        msg, body = wire.decode(
            b"".join(
                bytes(memoryview(b))
                for b in wire.encode(wire.RunBatch(tuple(chunk), sizes, fids), out)
            )[8:]
        )
        assert isinstance(msg, wire.RunBatch)
        pos = 0
        for k, i in enumerate(chunk):
            fn_size, arg_size = msg.sizes[2 * k], msg.sizes[2 * k + 1]
            fn, _, _ = loader.load(
                body[pos : pos + fn_size],
                body[pos + fn_size : pos + fn_size + arg_size],
                msg.fids[k],
            )
            pos += fn_size + arg_size
            assert fn == ("fn", i)
    assert set(holds) == set(loader._fns)
