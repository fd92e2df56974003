"""A callable is pickled once per function object and sent once per worker.

Functions defined in ``__main__`` (here: lambdas and closures, which cloudpickle
also carries by value) are snapshotted at their first submit; the workers keep
callables by id, and both sides evict the same way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
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


INIT_SCRIPT = """
import sys
import procqueue

CONFIG = None
CACHE = {}

def init(value):
    global CONFIG
    CONFIG = value
    CACHE["seen"] = []

def task(x):
    CACHE["seen"].append(x)
    return CONFIG, len(CACHE["seen"])

def show(xs):
    return [task(x) for x in xs]

if __name__ == "__main__":
    with procqueue.ProcQueue(1, start_method=sys.argv[1], initializer=init, initargs=(42,)) as pool:
        print(pool.submit(task, 1).result(), pool.submit(task, 2).result())
        print(list(pool.map(task, [3, 4], chunksize=2)))
"""


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_main_initializer_s_globals_reach_main_tasks(tmp_path: Path, method: str) -> None:
    """The standard library's idiom, with both functions in a script's
    ``__main__``: each travels by value with its own snapshot of the
    script's globals, so what the initializer assigned never reached the
    tasks (CONFIG stayed None). An object it put there is shared by them."""
    script = tmp_path / "init_script.py"
    script.write_text(INIT_SCRIPT)
    cmd = [sys.executable, str(script), method]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["(42, 1) (42, 2)", "[(42, 3), (42, 4)]"]
