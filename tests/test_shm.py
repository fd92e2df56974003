"""Large buffers through the side files (``procqueue/_runtime/_shm.py``).

The codec in one process (round trips, space reuse, pages returned), then real
pools on every start method (values identical, types kept), then the faults:
a worker SIGKILLed mid-task, one killed while writing a result, one killed
just after sending one, a task that raises, shutdown, and a coordinator killed
outright. After each, no process may hold a side file that no live worker
needs, and nothing may appear in ``/dev/shm`` (side files have no names).
"""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _tasks import Gate, gated
from hypothesis import given, settings
from hypothesis import strategies as st

from procqueue import ProcQueue, WorkerCrashedError
from procqueue._runtime import _calls, _shm, wire
from procqueue._runtime import worker as worker_module

MB = 1_000_000
BIG = 3 * MB  # over _shm.SPILL_MIN
pytestmark = pytest.mark.skipif(not _shm._HAVE_MEMFD, reason="side files need Linux memfds")


# --- helpers ----------------------------------------------------------------------------


def _side_files(prefix: str) -> dict[int, set[str]]:
    """``pid -> side file names`` for every process (that we may read) holding
    a memfd whose name starts with ``procqueue-<prefix>``."""
    holders: dict[int, set[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(f"/memfd:procqueue-{prefix}"):
                holders.setdefault(int(entry), set()).add(target.split()[0][len("/memfd:") :])
    return holders


def _mine() -> dict[int, set[str]]:
    return _side_files(f"{os.getpid()}-")


def _names(holders: dict[int, set[str]]) -> set[str]:
    return set().union(*holders.values()) if holders else set()


def _settle(want: Any, timeout: float = 10.0) -> dict[int, set[str]]:
    """Side-file holders once ``want(holders)`` is true (processes take a
    moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        holders = _mine()
        if want(holders) or time.monotonic() > deadline:
            return holders
        time.sleep(0.05)


def _dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.fixture
def no_dev_shm_names() -> Iterator[None]:
    before = _dev_shm()
    yield
    new = {n for n in _dev_shm() - before if "procqueue" in n or n.startswith("psm_")}
    assert not new, f"named segments left in /dev/shm: {new}"


def _allocated(name_suffix: str) -> int:
    """Bytes of pages the coordinator's side file ``*-<name_suffix>`` holds."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"/memfd:procqueue-{os.getpid()}-") and name_suffix in target:
            return os.stat(f"/proc/self/fd/{fd}").st_blocks * 512
    raise AssertionError(f"no side file *-{name_suffix}")


def payload(i: int, size: int = BIG) -> bytes:
    return i.to_bytes(8, "little") + bytes([i % 251]) * (size - 16) + i.to_bytes(8, "little")


# --- tasks (importable, so every start method finds them) ---------------------------------


def echo(x: Any) -> Any:
    return x


def digest(x: Any) -> tuple[str, int, bytes]:
    raw = memoryview(x).cast("B")
    return type(x).__name__, raw.nbytes, bytes(raw[:8]) + bytes(raw[-8:])


def make(i: int, size: int) -> bytes:
    return payload(i, size)


def raise_with(x: bytes) -> None:
    raise ValueError(f"refused {len(x)} bytes")


def writable_array(n: int) -> Any:
    import numpy as np

    a = np.arange(n, dtype=np.int64)
    a[0] = 7
    return a


def bump(a: Any) -> Any:
    a += 1  # only a writable array takes this
    return a


# --- the codec, in one process ---------------------------------------------------------


def _files() -> Iterator[tuple[_shm.Outbox, _shm.Inbox]]:
    fd = _shm.create("procqueue-test-codec")
    try:
        yield _shm.Outbox(fd), _shm.Inbox(fd)
    finally:
        os.close(fd)


@pytest.fixture
def side() -> Iterator[tuple[_shm.Outbox, _shm.Inbox]]:
    yield from _files()


def _frame(segments: list[Any]) -> memoryview:
    return memoryview(b"".join(bytes(memoryview(s)) for s in segments))


def test_spilled_values_round_trip_and_keep_their_types(
    side: tuple[_shm.Outbox, _shm.Inbox],
) -> None:
    outbox, inbox = side
    big = payload(1)
    small = pickle.PickleBuffer(bytearray(b"s" * 1000))  # out of band, but inline
    value = ((big, 5, small, bytearray(big)), {"k": payload(2)})
    segments = _calls.dump_arguments(*value)  # top-level bytes travel out of band
    spilled = outbox.spill(segments, key=1)
    assert spilled is not segments
    # Only the small buffer is left in the frame.
    assert sum(memoryview(s).nbytes for s in spilled[2:]) == 1000
    got = _calls.load_value(_frame(spilled), inbox)
    assert got[0][:2] == value[0][:2] and got[0][3:] == value[0][3:] and got[1] == value[1]
    assert bytes(got[0][2]) == b"s" * 1000
    assert type(got[0][0]) is bytes and type(got[0][3]) is bytearray
    assert inbox.read == 1 and outbox.sent == 1


def test_bytes_are_read_once_and_handed_on_uncopied(
    side: tuple[_shm.Outbox, _shm.Inbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox, inbox = side
    read: list[bytes] = []
    real = _shm._read_at

    def spy(fd: int, size: int, offset: int) -> bytes:
        read.append(real(fd, size, offset))
        return read[-1]

    monkeypatch.setattr(_shm, "_read_at", spy)
    got = _calls.load_value(_frame(outbox.spill(_calls.dump_value(payload(3)), key=1)), inbox)
    assert got is read[0]  # the bytes pread made, not a copy of them


def test_small_values_are_left_alone(side: tuple[_shm.Outbox, _shm.Inbox]) -> None:
    outbox, _ = side
    for value in (1, b"x" * 1000, b"y" * (_shm.SPILL_MIN - 1), bytearray(100)):
        segments = _calls.dump_value(value)
        assert outbox.spill(segments, key=1) is segments
    assert not outbox.held and outbox.sent == 0


def test_space_is_reused_once_released(side: tuple[_shm.Outbox, _shm.Inbox]) -> None:
    outbox, _ = side

    def offset(key: int) -> int:
        return outbox.held[key][0][0]

    for key in (1, 2, 3):
        outbox.spill(_calls.dump_value(payload(key)), key=key)
    assert [offset(k) for k in (1, 2, 3)] == sorted({offset(k) for k in (1, 2, 3)})
    outbox.release(1)
    outbox.spill(_calls.dump_value(payload(4)), key=4)
    assert offset(4) == 0  # first fit: the hole key 1 left
    outbox.release_through(3)
    assert list(outbox.held) == [4]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3 * _shm.SPILL_MIN), st.booleans()), max_size=12))
def test_held_regions_never_overlap(steps: list[tuple[int, bool]]) -> None:
    for outbox, _ in _files():
        for key, (size, release_oldest) in enumerate(steps):
            outbox.spill([b"", b"", memoryview(bytes(size))], key=key)
            spans = sorted(s for spans in outbox.held.values() for s in spans)
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
            if release_oldest and outbox.held:
                outbox.release(next(iter(outbox.held)))


def test_pages_beyond_keep_are_returned_once_read(
    side: tuple[_shm.Outbox, _shm.Inbox],
) -> None:
    outbox, inbox = side
    size = _shm.KEEP // 2 + _shm.SPILL_MIN
    frames = [_frame(outbox.spill(_calls.dump_value(payload(i, size)), key=i)) for i in range(3)]
    fd_stat = os.fstat(outbox.fd)
    assert fd_stat.st_blocks * 512 >= 3 * size - 3 * _shm._PAGE
    for i, frame in enumerate(frames):
        assert _calls.load_value(frame, inbox) == payload(i, size)
    assert os.fstat(outbox.fd).st_blocks * 512 <= _shm.KEEP


def test_run_batch_carries_the_acknowledgement() -> None:
    msg = wire.RunBatch((1, 2), (0, 5, 3, 4), (7, 0), 42)
    frame = b"".join(bytes(memoryview(b)) for b in wire.encode(msg, [b"12345", b"abcd"]))
    got, blob = wire.decode(frame[8:])
    assert got == msg and bytes(blob) == b"12345abcd"
    assert wire.RunBatch((1,), (0, 0), (0,)).acked == 0


# --- real pools -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_large_payloads_both_ways_on_every_start_method(
    method: str, no_dev_shm_names: None
) -> None:
    data = [payload(i) for i in range(6)]
    with ProcQueue(2, start_method=method) as pool:
        assert [f.result() for f in [pool.submit(echo, d) for d in data]] == data
        assert [f.result() for f in [pool.submit(make, i, BIG) for i in range(6)]] == data
        assert pool.submit(digest, data[0]).result() == ("bytes", BIG, data[0][:8] + data[0][-8:])
        mixed = (data[1], 3, b"m" * 70_000, [data[2]], bytearray(b"small"))
        assert pool.submit(echo, mixed).result() == mixed
        assert type(pool.submit(echo, bytearray(data[3])).result()) is bytearray
        assert len(_mine()) == 3  # the coordinator and its two workers
    assert _settle(lambda h: not h) == {}


def test_without_memfds_everything_takes_the_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shm, "_HAVE_MEMFD", False)
    with ProcQueue(1, start_method="forkserver") as pool:
        assert pool.submit(echo, payload(1)).result() == payload(1)
        assert pool.submit(make, 2, BIG).result() == payload(2)
        assert _mine() == {}


def test_numpy_arrays_stay_writable() -> None:
    np = pytest.importorskip("numpy")
    with ProcQueue(2, start_method="fork") as pool:
        a = np.arange(BIG // 8, dtype=np.float64)
        got = pool.submit(bump, a).result()  # writable in the worker
        assert (got == a + 1).all() and got.flags.writeable
        made = pool.submit(writable_array, BIG // 8).result()
        assert made[0] == 7 and made[-1] == BIG // 8 - 1 and made.flags.writeable
        frozen = np.frombuffer(payload(5), dtype=np.uint8)  # read-only, stays so
        assert pool.submit(digest, frozen).result()[1:] == digest(frozen)[1:]


def test_many_sizes_in_flight_at_once(no_dev_shm_names: None) -> None:
    sizes = [_shm.SPILL_MIN + 4096 * k for k in range(0, 60, 7)] + [9 * MB, 17 * MB]
    data = [payload(i, s) for i, s in enumerate(sizes)]
    with ProcQueue(2, start_method="fork", prefetch=4) as pool:
        for _ in range(3):
            assert [f.result() for f in [pool.submit(echo, d) for d in data]] == data


# --- faults: nothing is left behind ------------------------------------------------------


def test_sigkilled_worker_leaves_no_side_file(gate: Gate, no_dev_shm_names: None) -> None:
    with ProcQueue(2, start_method="fork") as pool:
        fut = pool.submit(gated, gate.paths, payload(1))  # holds its argument
        victim = gate.wait_started()
        before = _mine()
        dead = before[victim]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError):
            fut.result(30)
        # The replacement serves large payloads too.
        assert pool.submit(echo, payload(2)).result() == payload(2)
        after = _settle(lambda h: not (_names(h) & dead))
        assert not (_names(after) & dead), f"a dead worker's side files live on: {after}"
    assert _settle(lambda h: not h) == {}


def _die_while_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fork-inherited: a worker writing a result kills itself half way."""
    parent = os.getpid()
    real = _shm._write_at

    def write_half(fd: int, view: memoryview, offset: int) -> None:
        if os.getpid() == parent:
            real(fd, view, offset)
            return
        real(fd, view[: view.nbytes // 2], offset)
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(_shm, "_write_at", write_half)


def test_crash_while_writing_a_result_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, no_dev_shm_names: None
) -> None:
    _die_while_writing(monkeypatch)
    with ProcQueue(1, start_method="fork") as pool:
        assert pool.submit(echo, 1).result() == 1
        first = _names(_mine())
        with pytest.raises(WorkerCrashedError):
            pool.submit(make, 1, BIG).result(30)
        assert pool.submit(digest, payload(3)).result()[1] == BIG  # arguments still spill
        after = _settle(lambda h: not (_names(h) & first))
        assert not (_names(after) & first)
    assert _settle(lambda h: not h) == {}


def test_a_result_sent_just_before_the_worker_dies_is_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent = os.getpid()
    real = worker_module._Sender.send

    def send_then_die(self: Any, msg: Any, blobs: Any = ()) -> None:
        real(self, msg, blobs)
        spilled = blobs and bytes(memoryview(blobs[0])[3:4])[0] & 0x80
        if os.getpid() != parent and type(msg) is wire.Result and msg.ok and spilled:
            os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(worker_module._Sender, "send", send_then_die)
    with ProcQueue(1, start_method="fork") as pool:
        assert pool.submit(make, 4, BIG).result(30) == payload(4)
        deadline = time.monotonic() + 30
        while not sum(w.restarts for w in pool.get_stats().workers):
            assert time.monotonic() < deadline, "the worker did not die"
            time.sleep(0.02)
        assert pool.submit(echo, 5).result(30) == 5  # on a replacement worker


def test_a_task_that_raises_frees_its_arguments(no_dev_shm_names: None) -> None:
    big = payload(6, _shm.KEEP + 8 * MB)
    with ProcQueue(1, start_method="fork") as pool:
        with pytest.raises(ValueError, match="refused"):
            pool.submit(raise_with, big).result()
        assert _allocated("tasks") <= _shm.KEEP  # the worker returned what lay beyond
        # And the coordinator reuses the space from the start of the file.
        assert pool.submit(digest, payload(7)).result()[1] == BIG
        assert _allocated("tasks") <= _shm.KEEP
        assert pool.submit(make, 8, _shm.KEEP + 8 * MB).result() == payload(8, _shm.KEEP + 8 * MB)
        assert _allocated("results") <= _shm.KEEP  # the coordinator returned its part


def test_coordinator_killed_outright_leaves_nothing(tmp_path: Path) -> None:
    script = tmp_path / "victim.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, time
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from procqueue import ProcQueue
            from test_shm import echo, payload, make

            if __name__ == "__main__":
                pool = ProcQueue(2, start_method="forkserver")
                assert pool.submit(echo, payload(1)).result() == payload(1)
                futs = [pool.submit(make, i, 3_000_000) for i in range(20)]
                futs += [pool.submit(echo, payload(i)) for i in range(20)]
                print(os.getpid(), flush=True)
                time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    before = _dev_shm()
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    victim = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 15
    while _side_files(f"{victim}-") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _side_files(f"{victim}-") == {}
    assert not {n for n in _dev_shm() - before if "procqueue" in n or n.startswith("psm_")}
