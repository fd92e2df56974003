"""Ctrl-C held while the main thread is inside the engine's bookkeeping.

Python raises ``KeyboardInterrupt`` in the main thread between any two
bytecodes. A script's submit loop spends most of its time inside the engine:
admitting the task under the lock, taking the coordinator's step itself
(direct dispatch) and writing the task down a worker's pipe. An interrupt
landing there left the engine half-way: a lock taken and never released, a
task the scheduler believed sent but never written, a wake-up flag set with
no byte behind it, so a later task waited forever. A notebook's interrupt
button sends exactly that, and the pool outlives the cell.

So while a queue started in the main thread runs, SIGINT's handler is this
module's wherever it finds Python's default (at the start, and again at each
held section: a notebook kernel puts the default back before every cell).
Outside the engine it raises ``KeyboardInterrupt`` at once, as the default
does; inside (:func:`hold` .. :func:`release`, main thread only) it notes the
interrupt, and :func:`release` raises it once the engine is consistent again
(microseconds later). A handler of your own is left alone, and then nothing
is held. ``asyncio.run`` installs its own SIGINT handler only over Python's
default, so one started while such a queue is open keeps this one; the last
queue to stop puts the default back once the main thread waits for it.

Blocking the signal instead (``signal.pthread_sigmask``) would not help:
the kernel hands it to another thread, and Python still runs the handler, and
raises, in the main thread. ``with lock:`` itself is safe since Python 3.10
(bpo-29988: the interpreter checks for signals only after calls and on
backward jumps, so ``__exit__`` runs if ``__enter__`` did).
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

# The C function: ``signal.getsignal`` maps the handler to an enum member
# through a raised and caught ValueError, ~6 µs against 0.1, and hold() asks
# on every submit.
_getsignal: Callable[[int], object] = importlib.import_module("_signal").getsignal
_SIGINT = int(signal.SIGINT)
_get_ident = threading.get_ident

_main = threading.main_thread().ident
_depth = 0
_pending = False
#: Running queues started in the main thread. Taken in the main thread and
#: given back in each queue's coordinator thread: under a lock.
_holders = 0
_count_lock = threading.Lock()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _depth:
        _pending = True
        return
    signal.default_int_handler(signum, frame)


def _ensure() -> bool:
    """This module's handler is in place: it was, or Python's default was
    and is now replaced (a syscall; once, and again after whoever put the
    default back: a notebook kernel does before every cell)."""
    current = _getsignal(_SIGINT)
    if current is _on_sigint:
        return True
    if current is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
        return True
    return False  # a handler of your own: left alone


def take() -> bool:
    """A queue starts. True in the main thread: the caller must
    :func:`give_back` when it stops."""
    global _holders
    if _get_ident() != _main:
        return False
    with _count_lock:
        _holders += 1  # first: a Ctrl-C just after the handler is set finds it counted
    _ensure()
    return True


def give_back() -> None:
    """A queue that :func:`take` counted has stopped (from its coordinator
    thread, which ends once whatever stopped it)."""
    global _holders
    with _count_lock:
        _holders = max(0, _holders - 1)


def restore() -> None:
    """Once no counted queue runs: Python's default handler back, if this
    module's is still in place and this is the main thread, the only one that
    may set handlers (a wait for a stop there calls this; a queue stopped with
    no one waiting for it in the main thread leaves this module's handler,
    which raises as the default does, until the next such wait)."""
    if not _holders and _get_ident() == _main and _getsignal(_SIGINT) is _on_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def hold() -> bool:
    """Enter a section a Ctrl-C must not cut in two. True in the main thread
    while a queue runs and this module's handler is (or can be put) in place:
    the caller must :func:`release` (in a ``finally``)."""
    global _depth
    if _get_ident() != _main or not _holders:
        return False
    if not _depth and _getsignal(_SIGINT) is not _on_sigint and not _ensure():
        return False
    _depth += 1
    return True


def release() -> None:
    """Leave the section; a Ctrl-C that came meanwhile is raised now."""
    global _depth, _pending
    _depth = max(0, _depth - 1)
    if not _depth and _pending:
        _pending = False
        raise KeyboardInterrupt


def _after_fork_in_child() -> None:
    # The forking thread is the child's main thread; nothing is held there.
    global _main, _depth, _pending, _holders
    _main = threading.get_ident()
    _depth = 0
    _pending = False
    _holders = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
