"""The suite's judgement, on synthetic cells: targets, ratios, the JSON of a
FAIL, and the sizes decided from the warm-up. No pool is opened here, except
in the last test (a short latency run); never a speed assertion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from procqueue.bench import BenchConfig, run_suite
from procqueue.bench._measure import Cell, WorkloadResult
from procqueue.bench._report import _ratio, table_map
from procqueue.bench._targets import Target, evaluate
from procqueue.bench._task_fns import task_fns
from procqueue.bench._workloads import MapChunks


def _cell(key: str, **reps: list[float | None]) -> Cell:
    cell = Cell(key, f"label of {key}")
    for name, values in reps.items():
        cell.reps[name] = list(values)
    return cell


def _failed(key: str) -> Cell:
    cell = _cell(key, mb_per_s=[1.0, 2.0, 3.0])
    cell.fail("round 2, payload:args", AssertionError("wrong bytes"))
    return cell


def _workload(key: str, *cells: Cell, **params: Any) -> WorkloadResult:
    return WorkloadResult(key, key, params, {c.contestant: c for c in cells})


def _targets(results: dict[str, WorkloadResult], **cfg: Any) -> dict[tuple[str, str], Target]:
    config = BenchConfig().with_overrides(**cfg)
    return {(t.name, t.start_method): t for t in evaluate(results, config)}


# --- recovery (issue #4): every result kept, a re-run in every round ---------------------

RECOVERY = ("recovery after SIGKILL", "fork")


def _kill(survived: list[float | None], recovery: list[float | None]) -> dict[str, Any]:
    cell = _cell("ProcQueue", survived=survived, recovery_ms=recovery)
    return {"kill": _workload("kill", cell)}


def test_recovery_met_only_with_every_result_and_a_rerun_in_every_round() -> None:
    t = _targets(_kill([40, 40, 40], [20, 30, 25]), kill_tasks=40)[RECOVERY]
    assert t.met is True
    assert "every result kept in all 3 rounds" in t.measured


def test_recovery_a_round_that_lost_a_result_is_not_met_though_the_median_kept_all() -> None:
    t = _targets(_kill([40, 39, 40], [20, 30, 25]), kill_tasks=40)[RECOVERY]
    assert t.met is False
    assert "only 39 of 40 results kept" in t.measured


def test_recovery_a_round_without_a_rerun_is_not_measured_and_says_why() -> None:
    t = _targets(_kill([40, 40, 40], [20, None, 25]), kill_tasks=40)[RECOVERY]
    assert t.met is None
    assert "no re-run seen in 1 of 3 rounds" in t.measured
    none_seen = _targets(_kill([40, 40, 40], [None, None, None]), kill_tasks=40)[RECOVERY]
    assert none_seen.met is None
    assert "no re-run of the killed task seen" in none_seen.measured


# --- memory (issue #11): the measured size is named -----------------------------------------


def test_memory_verdict_says_when_it_is_not_the_target_size() -> None:
    def memory(n: int) -> Target:
        cells = (_cell("ProcQueue", bytes_per_task=[900.0]), _cell("ppe", bytes_per_task=[2e3]))
        results = {"memory": _workload("memory", *cells, tasks=n)}
        return _targets(results, memory_tasks=n)[("memory per pending task", "fork")]

    small = memory(5_000)
    assert small.met is True
    assert small.measured.startswith("5,000 pending (not the target size): ProcQueue 900 B")
    full = memory(1_000_000)
    assert "not the target size" not in full.measured
    assert "1,000,000 pending" in full.goal


# --- "ahead of every peer": peers not measured are named; a FAILed one blocks "met" ----

ARGS = ("4 MB arguments (in only)", "fork")


def test_ahead_of_peers_names_the_peers_not_measured() -> None:
    na = _cell("pebble")
    na.not_applicable("no such API")
    results = {
        "payload:args": _workload(
            "payload:args",
            _cell("ppe", mb_per_s=[100.0]),
            _cell("mp.Pool", mb_per_s=[150.0]),
            _cell("ProcQueue", mb_per_s=[300.0]),
            na,
        )
    }
    t = _targets(results, extra_start_methods=())[ARGS]
    assert t.met is True
    assert "label of pebble (n/a)" in t.measured
    assert "loky, joblib, mpire (not run on fork)" in t.measured
    assert "best peer label of mp.Pool" in t.measured


def test_ahead_of_peers_is_not_met_while_a_peer_failed() -> None:
    cells = [_cell("ppe", mb_per_s=[100.0]), _cell("ProcQueue", mb_per_s=[300.0])]
    results = {"payload:args": _workload("payload:args", *cells, _failed("loky"))}
    t = _targets(results, extra_start_methods=())[ARGS]
    assert t.met is None  # not "met": nobody can say procqueue beat a FAILed peer
    assert "label of loky (FAIL)" in t.measured
    # Behind the PPE goal, it is a miss whatever the FAILed peer did.
    cells[1] = _cell("ProcQueue", mb_per_s=[150.0])
    results = {"payload:args": _workload("payload:args", *cells, _failed("loky"))}
    assert _targets(results, extra_start_methods=())[ARGS].met is False


# --- latency: the targets read the __main__ rows ------------------------------------------


def test_latency_targets_judge_the_main_fn_rows() -> None:
    def latency(kind: str, pq: float) -> WorkloadResult:
        return _workload(
            f"latency:{kind}",
            _cell("ppe", p50_ms=[0.2], p99_ms=[0.3]),
            _cell("ProcQueue", p50_ms=[pq], p99_ms=[pq * 1.5]),
        )

    results = {"latency:main": latency("main", 0.2), "latency:importable": latency("x", 0.1)}
    t = _targets(results, extra_start_methods=())[
        ("idle round trip p50, ProcQueue, `__main__` fn", "fork")
    ]
    assert t.ratio == 1.0 and t.met is False  # 0.2 vs 0.2 ms: the importable 0.1 is not read


# --- the report's ratio column: no other start method's baseline -------------------------


def test_ratio_is_taken_against_the_same_start_method_only() -> None:
    r = _workload(
        "tiny:main",
        _cell("ppe", tasks_per_s=[100.0]),
        _cell("ProcQueue/forkserver", tasks_per_s=[300.0]),
        _cell("joblib", tasks_per_s=[50.0]),
    )
    assert _ratio(r, r.cells["ProcQueue/forkserver"], "tasks_per_s") == "—"
    assert _ratio(r, r.cells["joblib"], "tasks_per_s") == "0.50x"  # no start-method choice
    r.cells["ppe/forkserver"] = _cell("ppe/forkserver", tasks_per_s=[150.0])
    assert _ratio(r, r.cells["ProcQueue/forkserver"], "tasks_per_s") == "2.00x"


# --- the JSON of a FAILed cell has no statistics --------------------------------------


def test_failed_cell_summary_has_null_stats() -> None:
    stats = _failed("ppe").summary()["metrics"]["mb_per_s"]
    assert (stats["median"], stats["min"], stats["max"]) == (None, None, None)
    assert stats["reps"] == [1.0, 2.0, 3.0]  # the raw record stays
    ok = _cell("ppe", mb_per_s=[1.0, 2.0, 3.0]).summary()["metrics"]["mb_per_s"]
    assert (ok["median"], ok["min"], ok["max"]) == (2.0, 1.0, 3.0)


# --- map with a chunk size above 1 is sized by time, from the warm-up -------------------


def test_map_is_sized_from_the_fastest_warm_up_and_slow_contestants_run_fewer() -> None:
    cfg = BenchConfig().with_overrides(map_min_s=0.3, map_max_s=1.5)
    wl = MapChunks(cfg, 1000, task_fns(("importable",))[0])
    base = len(wl.items)
    assert base == cfg.map_chunks_per_worker * 1000 * cfg.workers
    warm = {
        "sequential": 50e6,  # in-process: never the yardstick
        "ProcQueue": 5e6,
        "mp.Pool": 4e6,
        "pebble": 0.25e6,
        "ppe": 2e6,
    }
    cells = {}
    for key, rate in warm.items():
        cells[key] = _cell(key)
        cells[key].warmup["tasks_per_s"] = rate
    wl.after_warm_up(cells, frozenset(warm) - {"sequential"})

    n = len(wl.items)
    assert n % (1000 * cfg.workers) == 0
    assert n / 5e6 >= 0.3  # the fastest process pool's run lasts 0.3 s or more
    assert n > base and wl.params["tasks"] == n
    assert wl.params["sized_by_time"]["fastest"] == "label of ProcQueue"
    assert set(wl.fewer) == {"pebble"}  # 1.5M+ items would take it 6 s
    assert wl.fewer["pebble"] / 0.25e6 <= 1.5
    assert f"{n:,} x add_one" in wl.title and "sized so that" in wl.title

    # The table shows each contestant's items and says how the size was chosen.
    r = WorkloadResult(wl.key, wl.title, dict(wl.params))
    for key, items in (("ProcQueue", n), ("pebble", wl.fewer["pebble"])):
        r.cells[key] = _cell(key, tasks_per_s=[1.0] * 3, wall_s=[0.5] * 3, tasks=[items] * 3)
    text = table_map(r)
    assert "Sized by time" in text and f"| {wl.fewer['pebble']:,} |" in text


def test_map_by_count_when_sizing_by_time_is_off() -> None:
    cfg = BenchConfig().with_overrides(map_min_s=0.0)
    wl = MapChunks(cfg, 1000, task_fns(("importable",))[0])
    cell = _cell("ProcQueue")
    cell.warmup["tasks_per_s"] = 5e6
    before = len(wl.items)
    wl.after_warm_up({"ProcQueue": cell}, frozenset({"ProcQueue"}))
    assert len(wl.items) == before and "sized_by_time" not in wl.params


# --- the latency workload, both task functions, end to end --------------------------------


def test_latency_runs_both_task_fns(tmp_path: Path) -> None:
    cfg = BenchConfig.quick().with_overrides(
        workloads=("latency",),
        only=("ppe", "ProcQueue", "TaskQueue"),
        extra_start_methods=(),
        latency_trips=20,
        out=tmp_path,
        plots=False,
        timeout=30.0,
    )
    result = run_suite(cfg, ["pytest"])

    assert result.failed == []
    for kind in ("main", "importable"):
        r = result.workloads[f"latency:{kind}"]
        assert r.params["fn"] == kind
        for cell in r.cells.values():
            assert cell.ok, cell.error
            assert cell.values("trips") == [20.0, 20.0, 20.0]
    judged = {t.name for t in result.targets if t.met is not None}
    assert "idle round trip p50, TaskQueue, `__main__` fn" in judged
    assert "trips a round" in result.markdown()
