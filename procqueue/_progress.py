"""Progress bars for ``ProcQueue.map(..., progress=...)`` and
``TaskQueue.as_completed(..., progress=...)`` (issue #10, "Progress").

How a completion reaches the screen::

    front door                       coordinator thread (map) / event loop (as_completed)
    ----------                       ---------------------------------------------------
    progress_factory(progress)  ->   raises MissingExtraError at the call
    Tracker.watch(fut, weight)  ->   fut done-callback: Tracker.settled
    Tracker.open()                         |  done += weight (under the tracker's lock)
    Tracker.close()  (finally, or GC)      v
                                     Sink.update(done, total): tqdm / rich / your callable

* **Tracker** counts finished work in *completion* order (one done-callback per
  future), whatever order the front door yields results in; it is
  thread-safe, and keeps its sink's calls ordered, so ``done`` never goes
  back. It shows nothing until :meth:`Tracker.open` (``map``: once the tasks
  are queued, so the total is known; ``as_completed``: at the first
  ``__anext__``), and then what finished meanwhile.
* **Sink** is the display: a tqdm bar, a rich progress bar, or the caller's
  ``fn(done, total)``. Sinks are called under the tracker's lock (never the
  engine's), from the thread that settled the future: keep a callable quick.
  A sink that raises is logged and dropped; it never disturbs the queue.

Per-task progress (``procqueue.report_progress``, issue #10) plugs in at
:meth:`Tracker.note`: a line of text shown next to the bar (tqdm's postfix,
rich's description). Today it carries the failure count; a listener on
``TaskStatus.progress`` can feed it the running tasks' own progress.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, Protocol, TypeVar

from ._core.records import TaskProgress
from .errors import InvalidArgumentError, MissingExtraError, OptionTypeError

__all__ = ["ProgressOption", "SinkFactory", "Tracker", "progress_factory", "progress_map"]

_log = logging.getLogger("procqueue.progress")

#: What ``progress=`` takes: ``True`` (tqdm, else rich), ``"tqdm"``, ``"rich"``,
#: a callable ``fn(done, total)``, or ``None``/``False`` for no bar.
ProgressOption = bool | str | Callable[[int, int | None], object] | None


class _Settles(Protocol):
    """A ``concurrent.futures`` or asyncio future: all a tracker needs of it."""

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...


_F = TypeVar("_F", bound=_Settles)
_T = TypeVar("_T")

_INSTALL_HINT = 'pip install "procqueue[progress]"'


class Sink(Protocol):
    """Where progress is shown. ``total`` is ``None`` while unknown (a streaming
    ``map`` that has not drained its input)."""

    def update(self, done: int, total: int | None) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


#: Opens a sink: ``factory(description, total)``.
SinkFactory = Callable[[str, int | None], Sink]


def progress_factory(progress: ProgressOption) -> SinkFactory | None:
    """The sink factory ``progress=`` asks for, or ``None`` for no bar.

    Imports the display library now, so a missing one raises
    :class:`~procqueue.MissingExtraError` at the call, before any task is
    queued. Raises ``InvalidArgumentError``/``OptionTypeError`` for a value it
    does not understand.
    """
    if progress is None or progress is False:
        return None
    if progress is True:
        for make in (_tqdm_factory, _rich_factory):
            try:
                return make()
            except MissingExtraError:
                continue
        raise MissingExtraError(
            "progress=True needs tqdm or rich, and neither is installed: "
            f"{_INSTALL_HINT} (or pip install rich)"
        )
    if isinstance(progress, str):
        if progress == "tqdm":
            return _tqdm_factory()
        if progress == "rich":
            return _rich_factory()
        raise InvalidArgumentError(
            f'progress must be True, "tqdm", "rich" or a callable fn(done, total), got {progress!r}'
        )
    if callable(progress):
        fn = progress

        def callable_sink(desc: str, total: int | None) -> Sink:
            return _CallableSink(fn)

        return callable_sink
    raise OptionTypeError(
        f'progress must be True, "tqdm", "rich" or a callable fn(done, total), got {progress!r}'
    )


class Tracker:
    """Counts finished work for one ``map``/``as_completed`` call and drives
    its sink. ``watch`` may run in any thread; callbacks may arrive in any
    thread (the coordinator's for ``map``, the event loop's for
    ``as_completed``)."""

    def __init__(self, factory: SinkFactory, description: str, total: int | None = None) -> None:
        self._factory = factory
        self._description = description
        # RLock: a callable sink may settle another watched future in its own
        # thread (cancel it, say), which re-enters settled.
        self._lock = threading.RLock()
        # Invariants (under _lock): done <= watched; total is None or watched
        # once the input is drained; sink is None before open and after close.
        self._watched = 0
        self._done = 0
        self._failed = 0
        self._total = total
        self._sink: Sink | None = None
        self._closed = False
        #: The tasks whose own ``report_progress`` shows next to the bar.
        self.task_ids: set[int] = set()
        self._on_close: list[Callable[[], object]] = []

    def watch(self, fut: _F, weight: int = 1) -> _F:
        """Count ``fut`` (a ``concurrent.futures`` or asyncio future) as
        ``weight`` items once it is done; returns it."""
        with self._lock:
            self.expect(weight)
            tid = getattr(fut, "_task_id", -1)  # a ProcQueue future knows its task
            if type(tid) is int and tid >= 0:
                self.task_ids.add(tid)
        fut.add_done_callback(lambda f: self.settled(f, weight))
        return fut

    def expect(self, weight: int) -> None:
        """``weight`` more items, each to be counted by :meth:`settled` (what
        :meth:`watch` does for a future; a caller that must count one at a
        time of its own choosing calls these two)."""
        with self._lock:
            self._watched += weight

    def note_report(self, task_id: int, progress: TaskProgress) -> None:
        """A task's ``report_progress``: shown next to the bar if it is one of
        ours (``Engine.watch_progress`` calls this for every report)."""
        if task_id not in self.task_ids:
            return
        text = f"#{task_id} {progress.done:g}"
        if progress.total is not None:
            text += f"/{progress.total:g}"
        if progress.message:
            text += f" {progress.message}"
        self.note(text[:60])

    def on_close(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` once the bar closes (to stop watching reports)."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._on_close.append(fn)
        if closed:
            fn()

    def input_done(self) -> None:
        """Everything is watched now: the total is what was watched."""
        with self._lock:
            self._total = self._watched
            self._push()

    def open(self) -> None:
        """Show the bar, with what finished so far."""
        with self._lock:
            if self._sink is not None or self._closed:
                return
            try:
                self._sink = self._factory(self._description, self._total)
            except Exception:
                _log.exception("progress: the bar could not be opened; going on without it")
                self._closed = True
                return
            self._push()

    def note(self, text: str) -> None:
        """Show ``text`` next to the bar (the seam for per-task progress)."""
        with self._lock:
            if self._sink is not None:
                self._call(self._sink.note, text)

    def close(self, *, complete: bool = False) -> None:
        """Close the bar (idempotent); later completions are ignored.
        ``complete``: every watched item is known to have ended (``map``'s
        caller has taken every result), so the ones whose done-callbacks
        have not run yet are counted now: a result is readable as soon as
        its future turns finished, before the thread that settled it runs
        the callbacks, and the last one could otherwise be shown missing."""
        with self._lock:
            if complete and not self._closed and self._done < self._watched:
                self._done = self._watched
                self._push()
            self._closed = True
            sink, self._sink = self._sink, None
            if sink is not None:
                self._call(sink.close)
            hooks, self._on_close = self._on_close, []
        for fn in hooks:
            self._call(fn)

    def settled(self, fut: Any, weight: int = 1) -> None:
        """``fut`` is done: count its ``weight`` items (failed, if it did)."""
        failed = fut.cancelled() or fut.exception() is not None
        with self._lock:
            self._done += weight
            if failed:
                self._failed += weight
                if self._sink is not None:
                    self._call(self._sink.note, f"{self._failed} failed")
            self._push()

    def _push(self) -> None:
        # Under _lock: the sink sees (done, total) in the order they happened.
        if self._sink is not None:
            self._call(self._sink.update, self._done, self._total)

    def _call(self, method: Callable[..., object], *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            # A display (or the caller's callable) must not break the results.
            _log.exception("progress: the bar raised; it is switched off")
            self._sink = None


def progress_map(
    executor: Executor,
    fn: Callable[..., _T],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    progress: ProgressOption,
) -> Iterator[_T]:
    """``Executor.map`` (eager, results in input order) with ``progress=``, for
    a front door whose futures come from ``submit`` alone: the broker client's
    ``map`` is ``return progress_map(self, fn, iterables, timeout, progress)``."""
    factory = progress_factory(progress)
    if factory is None:
        return Executor.map(executor, fn, *iterables, timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    tracker = Tracker(factory, getattr(fn, "__name__", "map"))
    futures = [tracker.watch(executor.submit(fn, *args)) for args in zip(*iterables)]
    tracker.input_done()
    results = _in_order(futures, deadline, tracker)
    tracker.open()
    weakref.finalize(results, tracker.close)  # dropped without being started
    return results


def _in_order(futures: list[Future[_T]], deadline: float | None, tracker: Tracker) -> Iterator[_T]:
    # As CPython's Executor.map: on early exit the rest is cancelled.
    futures.reverse()
    try:
        while futures:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            got = [futures.pop().result(timeout)]  # no local holds it while yielded
            if not futures:  # the last one: every item has ended (see Tracker.close)
                tracker.close(complete=True)
            yield got.pop()
    finally:
        tracker.close()
        for fut in futures:
            fut.cancel()


class _CallableSink:
    """``progress=fn``: ``fn(done, total)`` on every change."""

    def __init__(self, fn: Callable[[int, int | None], object]) -> None:
        self._fn = fn
        self._last: tuple[int, int | None] | None = None

    def update(self, done: int, total: int | None) -> None:
        if (done, total) != self._last:
            self._last = (done, total)
            self._fn(done, total)

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _tqdm_factory() -> SinkFactory:
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise MissingExtraError(
            f'progress="tqdm" needs the optional tqdm package: {_INSTALL_HINT}'
        ) from e

    class TqdmSink:
        def __init__(self, desc: str, total: int | None) -> None:
            # stderr (tqdm's default): results printed on stdout stay clean.
            self._bar = tqdm(total=total, desc=desc, unit="task", dynamic_ncols=True)

        def update(self, done: int, total: int | None) -> None:
            bar = self._bar
            if total != bar.total:
                bar.total = total
                bar.refresh()
            if done > bar.n:
                bar.update(done - bar.n)

        def note(self, text: str) -> None:
            self._bar.set_postfix_str(text)

        def close(self) -> None:
            self._bar.close()

    return TqdmSink


def _rich_factory() -> SinkFactory:
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text
    except ImportError as e:
        raise MissingExtraError(
            f'progress="rich" needs the optional rich package: pip install rich '
            f'(or "procqueue[top]"); for tqdm: {_INSTALL_HINT}'
        ) from e

    class RateColumn(ProgressColumn):
        """Tasks per second (rich's own speed column counts bytes)."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("? tasks/s" if speed is None else f"{speed:.1f} tasks/s", "cyan")

    class RichSink:
        def __init__(self, desc: str, total: int | None) -> None:
            self._desc = desc
            self._progress = Progress(
                # Plain text: a task's message ("[/tmp] step") is no markup.
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                RateColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task(desc, total=total)

        def update(self, done: int, total: int | None) -> None:
            self._progress.update(self._task, completed=done, total=total)

        def note(self, text: str) -> None:
            self._progress.update(self._task, description=f"{self._desc} ({text})")

        def close(self) -> None:
            self._progress.stop()

    return RichSink
