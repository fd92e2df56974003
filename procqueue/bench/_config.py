"""What one run of the suite measures: sizes, repetitions, contestants, workloads."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

#: Every workload, in the order the report shows them.
WORKLOADS = (
    "latency",
    "startup",
    "tiny",
    "map",
    "payload",
    "io",
    "cpu",
    "sweep",
    "scale",
    "memory",
    "kill",
)

WORKLOAD_TITLES = {
    "latency": "round trip of one task on an idle pool, p50 and p99 (a __main__ fn and an "
    "importable fn)",
    "startup": "start-up to first result, and shutdown",
    "tiny": "tiny tasks submitted one by one (a __main__ fn and an importable fn)",
    "map": "tiny tasks through map, with a chunk size (a __main__ fn and an importable fn)",
    "payload": "large arguments and results: both ways, arguments only, results only",
    "io": "I/O-bound tasks (sleeping)",
    "cpu": "CPU-bound tasks of ~20 ms",
    "sweep": "throughput against task size",
    "scale": "throughput at growing task counts",
    "memory": "coordinator memory per pending task",
    "kill": "a worker SIGKILLed mid-run",
}


def workload_group(key: str) -> str:
    """The workload a results key belongs to: ``map1000:main`` -> ``map``,
    ``sweep@1ms`` -> ``sweep``, ``payload:args`` -> ``payload``."""
    base = key.split(":", 1)[0].split("@", 1)[0]
    return "map" if base.startswith("map") else base


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides what a run measures. :meth:`full` and
    :meth:`quick` give the two standard sizes; ``dataclasses.replace`` (or
    :meth:`with_overrides`) adjusts one of them.

    >>> cfg = BenchConfig.quick().with_overrides(workloads=("tiny",), tiny_tasks=50)
    """

    quick_mode: bool = False
    workers: int = 2
    #: Start method of every process pool that lets you choose.
    start_method: str = "fork"
    #: ProcessPoolExecutor and ProcQueue also run on these (their own rows).
    extra_start_methods: tuple[str, ...] = ("forkserver",)
    #: Timed repetitions after the warm-up round (at least 3).
    reps: int = 3
    #: Contestant keys to run (``None``: every one that is installed).
    only: tuple[str, ...] | None = None
    workloads: tuple[str, ...] = WORKLOADS
    #: Seconds one run may take before it counts as hung (FAIL).
    timeout: float = 300.0
    #: The tiny task of the latency, tiny and map workloads: ``main`` (defined in the
    #: script's ``__main__``, the default case of BENCHMARKS.md rule 5) and
    #: ``importable`` (``procqueue.bench._tasks.add_one``), each its own rows.
    task_fns: tuple[str, ...] = ("main", "importable")
    #: Tiny tasks one by one: the warm-up round's size (and the timed rounds'
    #: when ``tiny_min_s`` is 0).
    tiny_tasks: int = 10_000
    #: Tiny tasks one by one: the timed rounds run as many tasks as the fastest
    #: process pool's warm-up rate needs for a run of at least this many seconds
    #: (0: no sizing by time), never fewer than ``tiny_tasks`` and at most
    #: ``tiny_max_tasks``; every contestant of a row runs the same tasks. Why
    #: 0.5 s: at 10,000 tasks the fastest pool's run lasted ~0.15 s (~70k
    #: tasks/s) and its rounds swung up to 1.8x, since a few scheduler slices
    #: lost to another program on a 2-core box are a large share of 0.15 s;
    #: 0.5 s spreads such a hiccup over 3-4x the work, while the slowest
    #: yardstick (ProcessPoolExecutor, ~15k tasks/s, the ">= 4x PPE" target's)
    #: runs the same tasks for ~3 s, not ~10.
    tiny_min_s: float = 0.5
    #: At ~70k tasks/s ``tiny_min_s`` asks ~45k tasks: twice that leaves room
    #: for a faster machine, and bounds what a misleading warm-up rate costs
    #: the slowest pools (~7 s a run for PPE), which run the same tasks.
    tiny_max_tasks: int = 100_000
    map_tasks: int = 10_000
    chunksizes: tuple[int, ...] = (1, 1000)
    #: With a chunk size above 1, at least this many chunks per worker:
    #: ``max(map_tasks, chunks x chunksize x workers)``, the warm-up round's size.
    map_chunks_per_worker: int = 20
    #: At every chunk size, the timed rounds run as many items as the fastest
    #: process pool's warm-up rate needs for a run of at least this many seconds
    #: (0: no sizing by time), never fewer than the warm-up's, and at most
    #: ``map_max_tasks`` (chunk size above 1) or ``map1_max_tasks`` (chunk size
    #: 1). Chunk size 1 shares it: it is per-task overhead like the tiny
    #: workload, and at 10,000 items its fastest run lasted ~0.15 s (~65k
    #: tasks/s) and swung run to run; 0.3 s (0.375 s aimed) is 2.5x that, while
    #: PPE, ~4x slower at chunk size 1 and running the same items, takes ~2 s.
    map_min_s: float = 0.3
    map_max_tasks: int = 4_000_000
    #: Chunk size 1: every contestant runs the same items (no ``map_max_s``
    #: cut), so the cap is low: ~25k are wanted at ~65k tasks/s, and 100k
    #: keep PPE (~15k tasks/s) under ~7 s a run.
    map1_max_tasks: int = 100_000
    #: ... except that, with a chunk size above 1, a contestant whose warm-up
    #: rate says that many items would take it longer than this runs fewer
    #: (whole chunks, about this many
    #: seconds' worth, never fewer than the warm-up's): pebble and mpire map
    #: ~0.25M items/s, ProcQueue ~5-9M. The table shows each one's items.
    map_max_s: float = 1.5
    cpu_tasks_per_worker: int = 20
    task_ms: float = 20.0
    io_tasks: int = 100
    io_ms: float = 10.0
    payload_mb: float = 4.0
    payload_tasks: int = 24
    #: Round trips per round: 1000, so that p99 (nearest rank) has 10 samples
    #: above it. A pool whose trips have taken ``latency_max_s`` stops after
    #: 200 (or ``latency_trips``, if fewer): joblib takes ~11 ms a trip.
    latency_trips: int = 1000
    latency_max_s: float = 3.0
    #: Sequential seconds of work behind each sized point of the sweep.
    sweep_work_s: float = 0.4
    sweep_task_ms: tuple[float, ...] = (0.0, 0.1, 1.0, 10.0)
    scale_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    #: The largest scale size for the stdlib pools (procqueue runs every size).
    scale_peer_max: int = 100_000
    memory_tasks: int = 100_000
    kill_tasks: int = 40
    kill_task_ms: float = 20.0
    #: procqueue's ``prefetch`` (``None``: its adaptive default).
    prefetch: int | None = None
    out: Path = Path("bench-results")
    plots: bool = True

    @classmethod
    def full(cls) -> BenchConfig:
        return cls()

    @classmethod
    def quick(cls) -> BenchConfig:
        """Small sizes for a CI smoke run: well under two minutes on two cores."""
        return cls(
            quick_mode=True,
            tiny_tasks=1_000,
            # Sizing by time stays on, but tiny: the warm-up's size wins.
            tiny_min_s=0.005,
            map_tasks=2_000,
            map_chunks_per_worker=5,
            map_min_s=0.005,
            cpu_tasks_per_worker=4,
            io_tasks=20,
            payload_tasks=4,
            latency_trips=50,
            sweep_work_s=0.05,
            sweep_task_ms=(0.0, 1.0),
            scale_sizes=(1_000, 5_000),
            scale_peer_max=5_000,
            memory_tasks=5_000,
            kill_tasks=12,
        )

    def with_overrides(self, **changes: Any) -> BenchConfig:
        return replace(self, **changes)

    def pq_options(self) -> dict[str, Any]:
        """Constructor keywords for both procqueue front doors."""
        return {} if self.prefetch is None else {"prefetch": self.prefetch}

    def wants(self, workload: str) -> bool:
        return workload in self.workloads

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = str(value) if isinstance(value, Path) else value
        return out
