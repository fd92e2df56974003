"""Side files: large out-of-band buffers through shared memory, not the pipe.

Each worker gets two anonymous shared-memory files (Linux ``memfd_create``),
one per direction, created by the coordinator and handed to the worker at
start with its pipe ends. A value buffer of :data:`SPILL_MIN` bytes or more
(a large ``bytes``, a numpy array) is written into the direction's file with
one ``pwritev`` by its sender and read out with one ``pread`` by its receiver,
straight into the ``bytes`` (or ``bytearray``) the unpickler hands on: one copy
in, one copy out, where the pipe cost three (pipe in, pipe out, then ``bytes``
of the frame) and allocated and freed kernel pages for every byte. The frame
that names the buffer still travels on the pipe, so ordering and wake-ups are
the pipe's.

Why memfds, not ``multiprocessing.shared_memory``: a memfd has no name, so
nothing can leak into ``/dev/shm``: its pages are freed by the kernel once the
last fd is closed, whichever process dies first and however (SIGKILL
included). Named POSIX segments need someone alive to ``shm_unlink`` them, and
the stdlib's resource tracker warns about or unlinks segments it did not
create (CPython gh-82300, bpo-38119; the ``track=False`` fix is 3.13+ only).

Space is reused, not allocated afresh: the sender places each buffer first-fit
among the regions the receiver may still be reading, and frees them when it
knows they have been read. Coordinator -> worker: when the task's ``Result``
arrives (the worker reads a call's arguments before running it). Worker ->
coordinator: when a ``RunBatch`` says how many spilled results the coordinator
has read (``RunBatch.acked``). Writing into pages that already exist costs a
copy; allocating them costs about three (measured: 0.9 ms vs 2.5 ms per 4 MB
written and read back). Pages below :data:`KEEP` stay allocated for the next
payload; the receiver returns those above it to the kernel as soon as it has
read them, so an idle worker holds at most ``2 * KEEP`` bytes of side files.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from typing import Any

#: Out-of-band buffers of this many bytes or more go through the side file:
#: every one the pickler puts out of band (``_calls._BIG``) but small numpy
#: arrays. Measured against the pipe (2 workers, echo and results): 15-20 %
#: faster per task at 70 KB and 100 KB, ~25 % at 250 KB, ~35 % at 700 KB.
SPILL_MIN = 1 << 16
#: Offsets below this keep their pages between payloads (see the module doc).
KEEP = 16 << 20
_PAGE = mmap.PAGESIZE
#: Linux moves at most this much in one read or write call.
_MAX_IO = 0x7FFFF000
#: The flag in a value blob's buffer count that says some buffers are spilled.
SPILLED = 1 << 31
#: In a spilled value blob's locations: the buffer is inline, after the pickle.
INLINE = -1
#: Low bit of a location: the receiver must get a writable buffer (a numpy
#: array that was writable); otherwise it gets ``bytes``. Offsets are
#: page-aligned, so the low bits are free.
_WRITABLE = 1
#: The next bit: the buffer is a ``bytearray``'s, so the receiver reads it
#: into a fresh ``bytearray``, which ``_calls._bytearray_from_buffer`` hands on
#: as it is (read into a mapping, it was copied once more, faults and all).
_BYTEARRAY = 2

_HAVE_MEMFD = hasattr(os, "memfd_create") and hasattr(mmap, "MADV_REMOVE")


def create(name: str) -> int:
    """A new side file, or -1 where memfds are unavailable (not Linux, or out
    of fds): then that worker's payloads take the pipe, as before."""
    if not _HAVE_MEMFD:
        return -1
    try:
        return os.memfd_create(name, os.MFD_CLOEXEC)
    except OSError:
        return -1


class Outbox:
    """The sending end of one side file: where to put each buffer, and which
    regions the receiver may still be reading (``key -> [(start, end)]``)."""

    __slots__ = ("fd", "held", "sent")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.held: dict[int, list[tuple[int, int]]] = {}
        #: Spilled values sent so far (the worker keys its results by it).
        self.sent = 0

    def _place(self, size: int) -> int:
        """The lowest page-aligned offset where ``size`` bytes overlap no held region."""
        # list(): one step under the GIL, should a result release a region
        # from another thread meanwhile (a submitter's direct dispatch).
        spans = sorted(span for spans in list(self.held.values()) for span in spans)
        offset = 0
        for start, end in spans:
            if offset + size <= start:
                break
            offset = max(offset, end)
        return offset

    def spill(self, segments: Sequence[Any], key: int | None = None) -> Sequence[Any]:
        """Value-blob segments ``[header, pickle, *buffers]`` with every buffer
        of :data:`SPILL_MIN` bytes or more written to the side file instead;
        ``segments`` themselves if there is none. The regions are held under
        ``key`` (by default the count of spilled values, this one included)
        until :meth:`release` or :meth:`release_through`."""
        raws = segments[2:]
        sizes = [memoryview(r).nbytes for r in raws]
        if max(sizes, default=0) < SPILL_MIN:
            return segments
        locations: list[int] = []
        inline: list[Any] = []
        regions: list[tuple[int, int]] = []
        key = self.sent + 1 if key is None else key
        self.held[key] = regions  # so that _place avoids this value's own regions
        try:
            for raw, size in zip(raws, sizes):
                if size < SPILL_MIN:
                    locations.append(INLINE)
                    inline.append(raw)
                    continue
                view = memoryview(raw).cast("B")
                span = -(-size // _PAGE) * _PAGE  # whole pages: offsets stay aligned
                offset = self._place(span)
                regions.append((offset, offset + span))
                _write_at(self.fd, view, offset)
                if view.readonly:
                    locations.append(offset)
                elif type(getattr(raw, "obj", None)) is bytearray:
                    locations.append(offset | _WRITABLE | _BYTEARRAY)
                else:
                    locations.append(offset | _WRITABLE)
        except OSError:
            del self.held[key]  # out of memory for the file: the pipe, as before
            return segments
        self.sent += 1
        n = len(raws)
        header = struct.pack(f"<I{n}Q{n}q", n | SPILLED, *sizes, *locations)
        return [header, segments[1], *inline]

    def release(self, key: int) -> None:
        """The receiver has read what was held under ``key``."""
        self.held.pop(key, None)

    def release_through(self, key: int) -> None:
        """The receiver has read everything held under ``key`` or lower."""
        held = self.held
        while held:
            first = next(iter(held))
            if first > key:
                break
            del held[first]


class Inbox:
    """The receiving end of one side file. ``kept``: what it reads is usually
    kept (results handed to the user) rather than dropped after one call."""

    __slots__ = ("fd", "read", "kept")

    def __init__(self, fd: int, kept: bool = False) -> None:
        self.fd = fd
        self.kept = kept
        #: Spilled values read so far (the coordinator acknowledges results by it).
        self.read = 0

    def fetch(self, blob: memoryview, n: int) -> tuple[memoryview, list[Any]]:
        """The pickle of a spilled value blob with ``n`` buffers, and its
        buffers: inline ones as views of ``blob``, spilled ones read from the
        side file (whose pages above :data:`KEEP` are then returned)."""
        sizes = struct.unpack_from(f"<{n}Q", blob, 4)
        locations = struct.unpack_from(f"<{n}q", blob, 4 + 8 * n)
        inline = sum(size for size, loc in zip(sizes, locations) if loc == INLINE)
        end = len(blob)
        pos = end - inline
        pickled = blob[4 + 16 * n : pos]
        buffers: list[Any] = []
        self.read += 1
        for size, loc in zip(sizes, locations):
            if loc == INLINE:
                buffers.append(blob[pos : pos + size])
                pos += size
                continue
            offset = loc & ~(_WRITABLE | _BYTEARRAY)
            if loc & _BYTEARRAY:
                buffers.append(_read_writable(self.fd, size, offset, False))
            elif loc & _WRITABLE:
                buffers.append(_read_writable(self.fd, size, offset, self.kept))
            else:
                buffers.append(_read_at(self.fd, size, offset))
            _forget(self.fd, offset, offset + size)
        return pickled, buffers


def _write_at(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    total = view.nbytes
    while done < total:
        done += os.pwritev(fd, [view[done : done + _MAX_IO]], offset + done)


def _read_at(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``, read straight into the ``bytes`` that the
    unpickler hands on uncopied (``_bytes_from_buffer`` of a ``bytes``)."""
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    return bytes(_read_writable(fd, size, offset, False))  # over 2 GiB: one more copy


def _read_writable(fd: int, size: int, offset: int, kept: bool) -> bytearray | mmap.mmap:
    """``size`` bytes at ``offset`` in writable memory (a numpy array that was
    writable stays so). Memory that will be kept is fresh, and faulting it in
    page by page cost as much as the copy: an anonymous mapping populated in
    one call halves that (measured, 4 MB: 2.8 ms vs 5 ms kept; a ``bytearray``
    is cheaper when freed and reused at once)."""
    buf: bytearray | mmap.mmap
    if kept and size:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
        buf = mmap.mmap(-1, size, flags=flags)
    else:
        buf = bytearray(size)
    view = memoryview(buf)
    done = 0
    try:
        while done < size:
            got = os.preadv(fd, [view[done : done + _MAX_IO]], offset + done)
            if not got:
                raise EOFError(f"side file ends at {offset + done}, expected {offset + size}")
            done += got
    finally:
        view.release()
    return buf


def _forget(fd: int, start: int, end: int) -> None:
    """Return the pages of ``[start, end)`` above :data:`KEEP` to the kernel
    (``MADV_REMOVE`` on a shared mapping punches a hole in the file)."""
    start = max(start, KEEP)
    if end <= start:
        return
    try:
        # A region has its last page to itself: the length is rounded up to
        # it by madvise, but mmap must not reach past the end of the file.
        end = min(-(-end // _PAGE) * _PAGE, os.fstat(fd).st_size)
        with mmap.mmap(fd, end - start, offset=start) as m:
            m.madvise(mmap.MADV_REMOVE)
    except (OSError, ValueError):
        pass  # the pages stay until the worker exits: memory, never correctness
