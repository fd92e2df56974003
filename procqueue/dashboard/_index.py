"""An incremental index of the task table for the tasks page: which ids are in
which state and of which name, one byte each, so that "the newest 50 failed
tasks named ``load``" is a reverse ``bytearray.rfind`` (C speed, no lock)
rather than a walk over a million records under the engine lock.

How it stays current without a hook in the engine: a *refresh* (at most every
``min_interval`` seconds, only while someone looks at the tasks page) asks the
engine, in chunks of :data:`CHUNK` ids per lock round, about

* ids admitted since the last refresh (up to the newest id);
* ids it last saw unfinished (a final state is never left, so only those can
  change), up to ``open_budget`` of them per refresh, round-robin;
* ids missing near the top (admitted late by a submitter that blocked on
  ``max_pending`` between taking its id and admitting it);
* a rotating sweep of final ids, to learn which retention has dropped.

Rows are always read afresh when a page is built, so a stale index byte costs
at most a row that no longer matches (dropped, and the byte fixed) - never a
wrong row shown.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from .._core.records import TaskState

__all__ = ["TaskIndex"]

#: Ids per lock round: ~0.2 ms under the lock on our 2-core box.
CHUNK = 2048
ABSENT = 0xFF
#: Name code for names past the first :data:`MAX_NAMES` (matched by reading records).
OTHER = 0xFE
MAX_NAMES = 254
_FINAL = frozenset(s.ordinal for s in TaskState if s.is_final)
_STATES = tuple(TaskState)
#: Ids below the newest that are re-probed while absent (late admissions).
LATE_WINDOW = 4096
#: Reverse dependency edges kept for task detail ("dependencies down").
MAX_EDGES = 100_000


class Prober(Protocol):
    """The engine reads the index needs (``ReadSide``)."""

    def newest_task_id(self) -> int: ...

    def probe_tasks(self, ids: Iterable[int]) -> list[tuple[int, str, tuple[int, ...]] | None]: ...


class TaskIndex:
    """State and name code per task id, for ids ``base .. base+len-1``.

    Thread-safe: one refresh at a time (``_refresh_lock``); queries read the
    arrays under ``_lock`` (never the engine's)."""

    def __init__(
        self,
        engine: Prober,
        *,
        min_interval: float = 0.25,
        open_budget: int = 65_536,
        sweep_budget: int = 16_384,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._min_interval = min_interval
        self._open_budget = open_budget
        self._sweep_budget = sweep_budget
        self._clock = clock
        self._refreshed_at = float("-inf")
        self.base = 1
        self.states = bytearray()
        self.names = bytearray()
        self.name_table: list[str] = []
        self._codes: dict[str, int] = {}
        # Ids last seen unfinished (insertion-ordered: round-robin by rotation).
        self._open: OrderedDict[int, None] = OrderedDict()
        self._sweep = 0  # offset of the eviction sweep's cursor
        #: upstream id -> dependent ids (bounded, oldest edges dropped first).
        self.down: OrderedDict[int, list[int]] = OrderedDict()
        self._edges = 0

    # ------------------------------------------------------------------ refresh

    def refresh(self, force: bool = False) -> None:
        """Bring the index up to date (rate-limited unless ``force``)."""
        now = self._clock()
        if not force and now - self._refreshed_at < self._min_interval:
            return
        with self._refresh_lock:
            if not force and self._clock() - self._refreshed_at < self._min_interval:
                return  # another thread just did it
            self._refresh()
            self._refreshed_at = self._clock()

    def _refresh(self) -> None:
        newest = self._engine.newest_task_id()
        top = self.base + len(self.states)  # first id never probed
        if newest >= top:
            grow = newest + 1 - top
            with self._lock:
                self.states.extend(b"\xff" * grow)
                self.names.extend(b"\xff" * grow)
        opened = self._take_open(self._open_budget)  # before the new ones join them
        # Newest first: the ids a tasks page shows first are known soonest.
        self._probe(range(newest, top - 1, -1))
        late_lo = max(self.base, top - LATE_WINDOW)
        self._probe([i for i in range(late_lo, top) if self.states[i - self.base] == ABSENT])
        self._probe(opened)
        self._sweep_final()

    def _take_open(self, budget: int) -> list[int]:
        out = []
        open_ids = self._open
        for _ in range(min(budget, len(open_ids))):
            tid, _ = open_ids.popitem(last=False)
            out.append(tid)
        return out

    def _probe(self, ids: Sequence[int]) -> None:
        engine = self._engine
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            rows = engine.probe_tasks(chunk)
            self._apply(chunk, rows)
            time.sleep(0)  # let the coordinator have the GIL between rounds

    def _apply(
        self, ids: Sequence[int], rows: list[tuple[int, str, tuple[int, ...]] | None]
    ) -> None:
        with self._lock:
            base = self.base
            states, names, open_ids = self.states, self.names, self._open
            for tid, row in zip(ids, rows):
                i = tid - base
                if i < 0:
                    continue
                if row is None:
                    states[i] = ABSENT
                    continue
                state, name, upstream = row
                known = states[i] != ABSENT
                states[i] = state
                names[i] = self._code(name)
                if state not in _FINAL:
                    open_ids[tid] = None
                if upstream and not known:
                    self._add_edges(tid, upstream)

    def _code(self, name: str) -> int:
        code = self._codes.get(name)
        if code is None:
            if len(self.name_table) >= MAX_NAMES:
                return OTHER
            code = self._codes[name] = len(self.name_table)
            self.name_table.append(name)
        return code

    def _add_edges(self, tid: int, upstream: tuple[int, ...]) -> None:
        down = self.down
        for up in upstream:
            down.setdefault(up, []).append(tid)
            self._edges += 1
        while self._edges > MAX_EDGES and down:
            _, lost = down.popitem(last=False)
            self._edges -= len(lost)

    def _sweep_final(self) -> None:
        """Probe a window of final ids for eviction; drop an evicted prefix."""
        n = len(self.states)
        if not n:
            return
        start = self._sweep if self._sweep < n else 0
        stop = min(n, start + self._sweep_budget)
        ids = [
            self.base + i
            for i in range(start, stop)
            if self.states[i] != ABSENT and self.states[i] in _FINAL
        ]
        self._sweep = stop
        self._probe(ids)
        self._trim()

    def _trim(self) -> None:
        """Forget the leading run of absent ids (evicted long ago), in steps of
        at least 64 Ki ids so the arrays are not shifted on every refresh."""
        states = self.states
        n = len(states)
        if not n or states[0] != ABSENT:
            return
        first = n - len(states.lstrip(b"\xff"))
        keep_late = max(0, n - LATE_WINDOW)
        cut = min(first, keep_late)
        if cut >= 65_536:
            with self._lock:
                del self.states[:cut]
                del self.names[:cut]
                self.base += cut
                self._sweep = max(0, self._sweep - cut)

    # ------------------------------------------------------------------ queries

    def name_code(self, name: str) -> int | None:
        """The code of ``name`` (``OTHER`` for a name past the table; ``None``:
        never seen)."""
        code = self._codes.get(name)
        if code is None and len(self.name_table) >= MAX_NAMES:
            return OTHER
        return code

    def candidates(
        self, state: TaskState | None, name: str | None, before: int | None, limit: int
    ) -> list[int]:
        """Up to ``limit`` ids, newest first, below ``before``, whose indexed
        state and name match (``OTHER`` names match any name past the table:
        the caller checks the record)."""
        with self._lock:
            states, names, base = self.states, self.names, self.base
            end = len(states) if before is None else max(0, min(len(states), before - base))
            want_state = None if state is None else state.ordinal
            code = None if name is None else self.name_code(name)
            if name is not None and code is None:
                return []
            out: list[int] = []
            if want_state is None and code is None:
                i = end - 1
                while i >= 0 and len(out) < limit:
                    if states[i] != ABSENT:
                        out.append(base + i)
                    i -= 1
                return out
            # Search the rarer key's array; check the other per hit.
            by_state = want_state is not None and (
                code is None or states.count(want_state, 0, end) <= names.count(code, 0, end)
            )
            first, second = (states, names) if by_state else (names, states)
            key = want_state if by_state else code
            other = code if by_state else want_state
            assert key is not None
            while len(out) < limit:
                end = first.rfind(key, 0, end)
                if end < 0:
                    break
                if other is None or second[end] == other:
                    out.append(base + end)
        return out

    def count(self, state: TaskState | None, name: str | None) -> int | None:
        """How many indexed ids match (``None`` when both filters are set:
        not counted)."""
        with self._lock:
            if name is not None and state is not None:
                return None
            if name is not None:
                code = self.name_code(name)
                return 0 if code is None else self.names.count(code)
            if state is not None:
                return self.states.count(state.ordinal)
            return len(self.states) - self.states.count(ABSENT)

    def forget(self, task_id: int) -> None:
        """``task_id`` is no longer in the table."""
        with self._lock:
            i = task_id - self.base
            if 0 <= i < len(self.states):
                self.states[i] = ABSENT

    def correct(self, task_id: int, state: TaskState, name: str) -> None:
        """A row read afresh: fix its bytes (and watch it if unfinished)."""
        with self._lock:
            i = task_id - self.base
            if 0 <= i < len(self.states):
                self.states[i] = state.ordinal
                self.names[i] = self._code(name)
                if not state.is_final:
                    self._open[task_id] = None

    def dependents(self, task_id: int) -> list[int]:
        with self._lock:
            return list(self.down.get(task_id, ()))

    def __len__(self) -> int:
        return len(self.states)


def state_of(ordinal: int) -> TaskState:
    return _STATES[ordinal]
