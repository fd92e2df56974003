"""Sizing a workload by time: the timed rounds run as many items as the
fastest process pool's warm-up rate needs for a run of at least a given
length (tiny tasks one by one, map at every chunk size). One mechanism for
every workload that needs it; :mod:`._workloads` says which do and how.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._measure import Cell

#: A workload sized by time aims at this many times its minimum at the fastest
#: warm-up rate: noise only ever slows a run, so a warm-up rate errs low.
SIZE_MARGIN = 1.25


@dataclass(frozen=True)
class TimeSize:
    """The size :func:`size_by_time` chose for the timed rounds, and why."""

    #: Items (tasks) each timed run gets.
    items: int
    #: The run the fastest process pool should last at least (seconds).
    min_s: float
    #: The most items allowed; ``capped``: the time asked for more.
    max_items: int
    capped: bool
    #: The fastest process pool in the warm-up round (its label), its tasks/s,
    #: and the warm-up round's items.
    fastest: str
    rate: float
    base: int

    def params(self) -> dict[str, Any]:
        """What ``params["sized_by_time"]`` records (and the report reads)."""
        return {
            "min_s": self.min_s,
            "max_tasks": self.max_items,
            "capped": self.capped,
            "fastest": self.fastest,
            "warmup_tasks_per_s": self.rate,
            "warmup_tasks": self.base,
        }

    def title(self) -> str:
        """The end of the workload's title."""
        cap = f"; capped at {self.max_items:,} items" if self.capped else ""
        return (
            f"; sized so that the fastest process pool's run lasts {self.min_s:g} s or more "
            f"({self.fastest} ran {self.rate:,.0f} tasks/s in the warm-up round, at "
            f"{self.base:,}){cap}"
        )


def size_by_time(
    cells: Mapping[str, Cell],
    pools: frozenset[str],
    *,
    base: int,
    min_s: float,
    max_items: int,
    step: int = 1,
) -> TimeSize | None:
    """The items a workload's timed rounds run so that the fastest process pool
    (the highest warm-up ``tasks_per_s`` among ``pools`` whose cell is ok) lasts
    ``min_s`` seconds or more: it aims at :data:`SIZE_MARGIN` times that, in
    steps of ``step`` items, at most ``max_items`` and never fewer than ``base`` (the
    warm-up round's). ``None`` (keep the size by count) when ``min_s`` is 0 or
    no process pool has a warm-up rate."""
    if min_s <= 0:
        return None
    rates = [
        (rate, cell.label)
        for key, cell in cells.items()
        if key in pools and cell.ok and (rate := cell.warmup.get("tasks_per_s"))
    ]
    if not rates:
        return None
    rate, label = max(rates)
    want = math.ceil(rate * min_s * SIZE_MARGIN / step) * step
    n = max(base, min(want, max_items))
    # Capped: the cap, not the warm-up's size, is what stopped it short.
    return TimeSize(n, min_s, max_items, n == max_items < want, label, rate, base)
