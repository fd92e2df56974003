"""What crosses a worker's pipes: framing and the wire messages (the blobs
they carry are made and read by the call codec, ``_calls.py``).

A frame is ``<Q body_len>`` then a body that starts with a one-byte tag:

* ``RunBatch``: ``<B tag><I n><q acked><n q task_ids><2n q sizes><n q fids>``
  then, per call, its pickled callable (absent when the worker already holds
  it: see ``_calls.CallRefs``) and its pickled ``(args, kwargs)``;
* ``Result``: ``<B tag><q task_id><B ok><d started><d finished>`` then the
  pickled value (or :class:`ErrorInfo`);
* anything else: ``<B tag>`` then the message pickled with the standard pickler.

Blobs are written with ``writev`` straight from the bytes produced at
``submit``, never re-pickled. Buffers of 64 KiB or more inside a value blob
travel through the worker's side files instead (``_shm.py``); the blob says
where. A dependent's ``result_of`` values travel inside its arguments blob
as the ``Result`` frames their own workers sent, unopened ("holes", in
``_calls.py``).

Each worker has two one-way pipes (``os.pipe``): *tasks* (coordinator -> worker)
and *results* (worker -> coordinator). The coordinator's ends are non-blocking
and it never blocks on a write (a full pipe is queued and flushed when writable),
so a worker blocked writing a large result can never deadlock against it.
The worker's ends are blocking.

Protocol version :data:`PROTOCOL_VERSION` is exchanged in :class:`Hello`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

PROTOCOL_VERSION = 6

_LEN = struct.Struct("<Q")
_HEADER_SIZE = _LEN.size
_TAG_PICKLED, _TAG_RUN, _TAG_RESULT = 0, 1, 2
_TAG_PICKLED_BYTE = bytes([_TAG_PICKLED])
#: A ``Result`` frame's head (tag, task id, ok, started, finished), before its value.
RESULT_HEAD = struct.Struct("<BqBdd")
_READ_CHUNK = 1 << 18
_IOV_MAX = 512
_F_SETPIPE_SZ = 1031  # Linux fcntl; absent from the fcntl module before 3.10
_PIPE_SIZE = 1 << 20


# --- messages ----------------------------------------------------------------------
# coordinator -> worker


class RunBatch(NamedTuple):
    """Run these calls in order. ``sizes`` holds two lengths per call: its
    pickled callable, then its pickled ``(args, kwargs)``, in blob order.
    ``fids`` holds one callable id per call (see :class:`CallRefs`): 0 for a
    callable sent inline and not kept; otherwise the worker keeps the callable
    under that id, and a later call with size 0 refers to it. ``acked``: how
    many results with spilled buffers the coordinator has read from this
    worker's side file so far (the worker may reuse their space)."""

    task_ids: tuple[int, ...]
    sizes: tuple[int, ...]
    fids: tuple[int, ...]
    acked: int = 0


class Shutdown(NamedTuple):
    """Finish the batch in hand, then exit cleanly."""


# worker -> coordinator


class Hello(NamedTuple):
    """The worker is up and its initializer succeeded."""

    version: int
    pid: int


class InitFailed(NamedTuple):
    """The initializer raised; the worker exits after sending this."""

    exc_type: str
    message: str
    traceback: str


class Result(NamedTuple):
    """One attempt ended. ``ok``: the blob is the pickled return value; otherwise it
    is a pickled :class:`ErrorInfo`. Times are the worker's ``time.time()``."""

    task_id: int
    ok: bool
    started: float
    finished: float


class Progress(NamedTuple):
    """``report_progress(done, total, message)`` called inside a task."""

    task_id: int
    done: float
    total: float | None
    message: str


class LogMessage(NamedTuple):
    """A log record emitted in the worker, as ``LogRecord.__dict__`` made
    picklable (message formatted, args dropped, exc_info rendered to text)."""

    record: dict[str, object]


class ErrorInfo(NamedTuple):
    """An exception raised by task code. ``exc`` is the pickled exception, or
    ``None`` when it cannot make the round trip (then the names and text remain)."""

    exc: bytes | None
    exc_type: str
    message: str
    traceback: str


WireMessage = RunBatch | Shutdown | Hello | InitFailed | Result | LogMessage | Progress


# --- codec ---------------------------------------------------------------------------


def encode(msg: WireMessage, blobs: Sequence[Any] = ()) -> list[Any]:
    """The buffers of one frame, ready for ``writev`` (blobs are not copied).

    The two messages sent once per task, ``RunBatch`` and ``Result``, have fixed
    ``struct`` layouts (a fraction of a microsecond, where pickling a NamedTuple
    costs several); the rare ones are pickled.
    """
    if isinstance(msg, Result):
        head = RESULT_HEAD.pack(_TAG_RESULT, *msg)
    elif isinstance(msg, RunBatch):
        n = len(msg.task_ids)
        head = struct.pack(
            f"<BIq{4 * n}q", _TAG_RUN, n, msg.acked, *msg.task_ids, *msg.sizes, *msg.fids
        )
    else:
        head = _TAG_PICKLED_BYTE + pickle.dumps(msg, protocol=5)
    body_len = len(head)
    for b in blobs:
        body_len += memoryview(b).nbytes
    return [_LEN.pack(body_len), head, *blobs]


def decode(frame: bytes | bytearray | memoryview) -> tuple[WireMessage, memoryview]:
    """Split one frame body (without the 8-byte length) into message and blob."""
    view = memoryview(frame)
    tag = view[0]
    if tag == _TAG_RESULT:
        _, task_id, ok, started, finished = RESULT_HEAD.unpack_from(view)
        return Result(task_id, bool(ok), started, finished), view[RESULT_HEAD.size :]
    if tag == _TAG_RUN:
        n, acked = struct.unpack_from("<Iq", view, 1)
        values = struct.unpack_from(f"<{4 * n}q", view, 13)
        batch = RunBatch(values[:n], values[n : 3 * n], values[3 * n :], acked)
        return batch, view[13 + 32 * n :]
    msg: WireMessage = pickle.loads(view[1:])
    return msg, view[0:0]


def enlarge_pipe(fd: int) -> None:
    """Ask Linux for a 1 MiB pipe buffer: fewer wake-ups for large payloads."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: keep the default


# --- coordinator side: non-blocking ---------------------------------------------------


class _FrameWriter:
    """Queues frames for a non-blocking fd; never blocks."""

    __slots__ = ("fd", "_pending", "_first_offset", "dropped")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._pending: deque[memoryview] = deque()
        self._first_offset = 0
        #: Bytes given to :meth:`write` that never went into the pipe: its
        #: reader was gone (EPIPE).
        self.dropped = 0

    @property
    def pending_bytes(self) -> int:
        return sum(map(len, self._pending))

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def write(self, buffers: list[bytes]) -> bool:
        """Queue ``buffers`` and write what the pipe takes now.

        Returns True when everything is written, False when some waits for the
        pipe to become writable (call :meth:`flush` then).
        """
        if not self._pending and len(buffers) <= _IOV_MAX:
            # The usual case, an empty queue: one writev straight from the
            # caller's list, and a view made only of what the pipe left over.
            try:
                n = os.writev(self.fd, buffers)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self.dropped += sum(map(len, buffers))
                return True  # EPIPE: as in flush()
            if n == sum(map(len, buffers)):
                return True
            for b in buffers:
                size = len(b)
                if n >= size:
                    n -= size
                    continue
                self._pending.append(memoryview(b)[n:] if n else memoryview(b))
                n = 0
            return False
        self._pending.extend(memoryview(b) for b in buffers if b)
        return self.flush()

    def flush(self) -> bool:
        pending = self._pending
        while pending:
            chunk = list(pending)[:_IOV_MAX] if len(pending) > 1 else [pending[0]]
            try:
                n = os.writev(self.fd, chunk)
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            except OSError:
                # EPIPE: the worker died. Its sentinel reports the exit and the
                # coordinator settles what it held; nothing more to write.
                self.dropped += self.pending_bytes
                pending.clear()
                return True
            while n:
                head = pending[0]
                if n >= len(head):
                    n -= len(head)
                    pending.popleft()
                else:
                    pending[0] = head[n:]
                    n = 0
        return True


class _FrameReader:
    """Collects whole frames from a non-blocking fd."""

    __slots__ = ("fd", "_buf", "_big", "_big_pos")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._big: bytearray | None = None
        self._big_pos = 0

    def read_frames(self) -> list[bytearray] | None:
        """Every complete frame readable now; ``None`` at end of file."""
        frames: list[bytearray] = []
        while True:
            if self._big is not None:
                try:
                    if not self._fill_big(frames):
                        return frames
                except EOFError:
                    # Cut off inside a large frame (its writer died): the
                    # complete frames before it still count (a Result sent
                    # before the crash must not be taken for the crashed task).
                    self._big = None
                    return frames if frames else None
                continue
            try:
                data = os.read(self.fd, _READ_CHUNK)
            except BlockingIOError:
                return frames
            except InterruptedError:
                continue
            if not data:
                return frames if frames else None
            buf = self._buf
            buf += data
            self._split(frames)
            if len(data) < _READ_CHUNK and self._big is None:
                return frames

    def _split(self, frames: list[bytearray]) -> None:
        buf = self._buf
        pos = 0
        end = len(buf)
        while end - pos >= _HEADER_SIZE:
            (body_len,) = struct.unpack_from("<Q", buf, pos)
            start = pos + 8
            if end - start >= body_len:
                # A bytearray (the slice copies, as bytes() would): out-of-band
                # buffers unpickled from it (numpy arrays) are writable, as
                # with ProcessPoolExecutor, and as a large frame's are.
                frames.append(buf[start : start + body_len])
                pos = start + body_len
                continue
            if body_len > 2 * _READ_CHUNK:
                # A large frame: read the rest straight into its own buffer.
                big = bytearray(body_len)
                have = end - start
                big[:have] = buf[start:end]
                self._big, self._big_pos = big, have
                pos = end
            break
        if pos:
            del buf[:pos]

    def _fill_big(self, frames: list[bytearray]) -> bool:
        big = self._big
        assert big is not None
        view = memoryview(big)
        while self._big_pos < len(big):
            try:
                n = os.readv(self.fd, [view[self._big_pos :]])
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            if n == 0:
                raise EOFError
            self._big_pos += n
        frames.append(big)
        self._big = None
        self._big_pos = 0
        return True


# --- worker side: blocking --------------------------------------------------------------


def read_exact(fd: int, n: int) -> bytearray:
    """Read exactly ``n`` bytes from a blocking fd; EOFError if it closes first."""
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        try:
            got = os.readv(fd, [view[pos:]])
        except InterruptedError:
            continue
        if got == 0:
            raise EOFError
        pos += got
    return buf


def write_all(fd: int, buffers: list[bytes]) -> None:
    """Write every buffer to a blocking fd, resuming after partial writes."""
    views = [memoryview(b) for b in buffers if b]
    while views:
        try:
            n = os.writev(fd, views[:_IOV_MAX])
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno == errno.EAGAIN:
                continue
            raise
        while n:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0
