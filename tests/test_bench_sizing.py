"""The per-task workloads (tiny tasks one by one, map with chunk size 1) are
sized by time from the warm-up round, like map with a larger chunk size: on
fake warm-up rates, plus one short run end to end. Never a speed assertion."""

from __future__ import annotations

from pathlib import Path

import pytest

from procqueue.bench import BenchConfig, run_suite
from procqueue.bench._cli import parse_args
from procqueue.bench._measure import Cell, WorkloadResult
from procqueue.bench._report import table_map, table_tiny
from procqueue.bench._sizing import SIZE_MARGIN, size_by_time
from procqueue.bench._stdlib_pools import SequentialPool
from procqueue.bench._task_fns import task_fns
from procqueue.bench._workloads import MapChunks, Tiny

#: Warm-up tasks/s, as a 2-core box shows them for tiny tasks one by one.
WARM = {
    "sequential": 2e6,  # in-process: never the yardstick
    "threads": 1e6,  # the same
    "ProcQueue": 70e3,
    "mp.Pool": 30e3,
    "ppe": 15e3,
    "pebble": 4e3,
}
POOLS = frozenset(WARM) - {"sequential", "threads"}


def _cells(rates: dict[str, float]) -> dict[str, Cell]:
    cells = {}
    for key, rate in rates.items():
        cells[key] = Cell(key, f"label of {key}")
        cells[key].warmup["tasks_per_s"] = rate
    return cells


# --- the one mechanism: size_by_time ------------------------------------------------------


def test_size_by_time_follows_the_fastest_process_pool() -> None:
    size = size_by_time(_cells(WARM), POOLS, base=10_000, min_s=0.5, max_items=100_000)
    assert size is not None
    assert size.fastest == "label of ProcQueue" and size.rate == 70e3  # not sequential's 2M
    assert size.items == round(70e3 * 0.5 * SIZE_MARGIN)
    assert size.items / 70e3 >= 0.5 and not size.capped
    assert size.params()["warmup_tasks"] == 10_000


def test_size_by_time_skips_a_failed_pool_and_keeps_whole_steps() -> None:
    cells = _cells(WARM)
    cells["ProcQueue"].fail("round 0, tiny:main", RuntimeError("boom"))
    size = size_by_time(cells, POOLS, base=10, min_s=0.5, max_items=10**6, step=4)
    assert size is not None and size.fastest == "label of mp.Pool"
    assert size.items % 4 == 0 and size.items / 30e3 >= 0.5


def test_size_by_time_is_capped_and_never_below_the_warm_up() -> None:
    cells = _cells(WARM)
    capped = size_by_time(cells, POOLS, base=10_000, min_s=10.0, max_items=100_000)
    assert capped is not None and capped.items == 100_000 and capped.capped
    assert "capped at 100,000 items" in capped.title()
    small = size_by_time(cells, POOLS, base=10_000, min_s=0.005, max_items=100_000)
    assert small is not None and small.items == 10_000 and not small.capped
    # A warm-up already past the cap runs whole: the cap did not stop it short.
    big = size_by_time(cells, POOLS, base=150_000, min_s=10.0, max_items=100_000)
    assert big is not None and big.items == 150_000 and not big.capped
    assert "capped" not in big.title()


def test_size_by_time_off_or_without_a_process_pool() -> None:
    cells = _cells(WARM)
    assert size_by_time(cells, POOLS, base=10, min_s=0.0, max_items=100) is None
    assert size_by_time(cells, frozenset(), base=10, min_s=0.5, max_items=100) is None


# --- tiny tasks one by one ---------------------------------------------------------------


def test_tiny_is_sized_by_time_and_every_contestant_runs_the_same_tasks() -> None:
    cfg = BenchConfig()
    assert (cfg.tiny_min_s, cfg.tiny_max_tasks) == (0.5, 100_000)
    wl = Tiny(cfg, task_fns(("importable",))[0])
    assert len(wl.items) == cfg.tiny_tasks  # the warm-up round: by count
    wl.after_warm_up(_cells(WARM), POOLS)

    n = len(wl.items)
    assert n > cfg.tiny_tasks and n / 70e3 >= cfg.tiny_min_s
    assert wl.params["tasks"] == n
    sized = wl.params["sized_by_time"]
    assert sized["fastest"] == "label of ProcQueue" and sized["min_s"] == 0.5
    assert f"{n:,} x add_one" in wl.title and "sized so that" in wl.title

    # Every contestant, fast or slow, runs all n tasks.
    for key in ("ProcQueue", "pebble"):
        pool = SequentialPool()
        pool.contestant = key
        assert wl.run(pool)["tasks"] == n

    r = WorkloadResult(wl.key, wl.title, dict(wl.params))
    for key, wall in (("ProcQueue", 0.62), ("pebble", 11.0), ("sequential", 0.02)):
        r.cells[key] = Cell(key, f"label of {key}")
        r.cells[key].reps = {"tasks_per_s": [n / wall] * 3, "wall_s": [wall] * 3}
    text = table_tiny(r)
    assert f"Sized by time: {n:,} items for every contestant" in text
    assert "fastest process pool's run lasts 0.5 s or more" in text
    assert "median run here: label of ProcQueue" in text  # not sequential's
    assert "wall median" in text


def test_tiny_by_count_when_sizing_is_off() -> None:
    wl = Tiny(BenchConfig().with_overrides(tiny_min_s=0.0), task_fns(("importable",))[0])
    wl.after_warm_up(_cells(WARM), POOLS)
    assert len(wl.items) == 10_000 and "sized_by_time" not in wl.params
    r = WorkloadResult(wl.key, wl.title, dict(wl.params))
    assert "Sized by time" not in table_tiny(r)


def test_tiny_capped() -> None:
    wl = Tiny(BenchConfig().with_overrides(tiny_max_tasks=20_000), task_fns(("importable",))[0])
    wl.after_warm_up(_cells(WARM), POOLS)
    assert len(wl.items) == 20_000 and wl.params["sized_by_time"]["capped"]
    r = WorkloadResult(wl.key, wl.title, dict(wl.params))
    assert "capped at 20,000 items" in table_tiny(r)


def test_quick_keeps_the_per_task_workloads_small() -> None:
    cfg = BenchConfig.quick()
    assert 0 < cfg.tiny_min_s <= 0.01 and 0 < cfg.map_min_s <= 0.01
    tiny = Tiny(cfg, task_fns(("importable",))[0])
    map1 = MapChunks(cfg, 1, task_fns(("importable",))[0])
    for wl in (tiny, map1):
        before = len(wl.items)
        wl.after_warm_up(_cells(WARM), POOLS)
        assert len(wl.items) == before  # the warm-up's size: 70k tasks/s x 5 ms is less


# --- map with chunk size 1 ---------------------------------------------------------------


def test_map_chunksize_1_is_sized_by_time_and_nobody_runs_fewer() -> None:
    cfg = BenchConfig()
    wl = MapChunks(cfg, 1, task_fns(("importable",))[0])
    base = len(wl.items)
    assert base == cfg.map_tasks
    wl.after_warm_up(_cells(WARM), POOLS)

    n = len(wl.items)
    assert n > base and n / 70e3 >= cfg.map_min_s and n <= cfg.map1_max_tasks
    assert n % cfg.workers == 0  # the same number per worker
    assert wl.fewer == {}  # pebble would take 4 s or more, and runs them all the same
    assert wl.params["tasks"] == n and "sized so that" in wl.title
    pool = SequentialPool()
    pool.contestant = "pebble"
    assert wl.run(pool)["tasks"] == n

    r = WorkloadResult(wl.key, wl.title, dict(wl.params))
    r.cells["ProcQueue"] = Cell("ProcQueue", "label of ProcQueue")
    r.cells["ProcQueue"].reps = {"tasks_per_s": [1.0] * 3, "wall_s": [0.4] * 3, "tasks": [n] * 3}
    text = table_map(r)
    assert f"Sized by time: {n:,} items for every contestant" in text
    assert "items a run" not in text and "whole chunks instead" not in text


def test_map_chunksize_1_capped_by_its_own_cap() -> None:
    cfg = BenchConfig().with_overrides(map1_max_tasks=12_000)
    wl = MapChunks(cfg, 1, task_fns(("importable",))[0])
    wl.after_warm_up(_cells(WARM), POOLS)
    assert len(wl.items) == 12_000 and wl.params["sized_by_time"]["capped"]


def test_command_line_sizing_options() -> None:
    full = parse_args([])
    assert (full.tiny_min_s, full.map_min_s) == (0.5, 0.3)
    cfg = parse_args(["--tiny-min-s", "0.8", "--map-min-s", "0"])
    assert (cfg.tiny_min_s, cfg.map_min_s) == (0.8, 0.0)
    assert parse_args(["--quick"]).tiny_min_s == BenchConfig.quick().tiny_min_s


# --- end to end: a short run --------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sized_run_gives_every_contestant_the_same_items(tmp_path: Path) -> None:
    cfg = BenchConfig.quick().with_overrides(
        workloads=("tiny", "map"),
        only=("sequential", "ProcQueue"),
        extra_start_methods=(),
        task_fns=("importable",),
        chunksizes=(1,),
        tiny_tasks=50,
        map_tasks=50,
        tiny_min_s=0.02,
        map_min_s=0.02,
        out=tmp_path,
        plots=False,
        timeout=30.0,
    )
    result = run_suite(cfg, ["pytest"])
    assert result.failed == []
    for key in ("tiny:importable", "map1:importable"):
        r = result.workloads[key]
        n = r.params["tasks"]
        assert n > 50 and r.params["sized_by_time"]["fastest"] == "procqueue ProcQueue [fork]"
        for cell in r.cells.values():
            assert cell.values("tasks") == [n] * 3, cell.contestant
    md = result.markdown()
    assert md.count("Sized by time: ") == 2
