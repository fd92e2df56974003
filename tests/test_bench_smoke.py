"""Smoke tests of the benchmark suite (``procqueue.bench``): it imports, runs a
tiny workload end to end, checks answers and writes its report. Never a speed
assertion: benchmarks are not tests (``BENCHMARKS.md`` rule 7)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from procqueue.bench import BenchConfig, run_suite
from procqueue.bench import _tasks as bench_tasks
from procqueue.bench._cli import parse_args
from procqueue.bench._task_fns import task_fns


def _tiny_config(out: Path, only: tuple[str, ...], **changes: Any) -> BenchConfig:
    settings: dict[str, Any] = {
        "workloads": ("tiny",),
        "only": only,
        "tiny_tasks": 50,
        "extra_start_methods": (),
        "out": out,
        "plots": False,
        "timeout": 30.0,
    }
    return BenchConfig.quick().with_overrides(**{**settings, **changes})


def test_import_procqueue_leaves_bench_alone() -> None:
    code = "import sys, procqueue; sys.exit('procqueue.bench' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_tiny_workload_two_contestants(tmp_path: Path) -> None:
    result = run_suite(_tiny_config(tmp_path, ("sequential", "ProcQueue")), ["pytest"])

    assert result.failed == []
    # The __main__ function's rows and the importable one's, each a workload.
    assert {"tiny:main", "tiny:importable"} <= set(result.workloads)
    for key in ("tiny:main", "tiny:importable"):
        tiny = result.workloads[key]
        assert set(tiny.cells) == {"sequential", "ProcQueue"}
        for cell in tiny.cells.values():
            assert cell.ok
            assert len(cell.values("tasks_per_s")) == 3  # the timed rounds, not the warm-up
            assert cell.warmup["tasks_per_s"] is not None
        assert tiny.cells["ProcQueue"].start_method == "fork"
    assert "`__main__` fn" in result.workloads["tiny:main"].title

    md, js = result.write()
    assert "procqueue ProcQueue [fork]" in md.read_text()
    data = json.loads(js.read_text())
    assert data["failed"] == []
    assert data["context"]["command"] == "pytest"
    assert {"date", "python", "nproc", "packages", "git"} <= set(data["context"])


def test_wrong_answer_is_a_fail_not_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_tasks, "add_one", lambda x: x + 2)  # sequential runs in-process
    cfg = _tiny_config(tmp_path, ("sequential",), task_fns=("importable",))
    result = run_suite(cfg, ["pytest"])

    assert result.failed == ["tiny:importable/sequential"]
    cell = result.workloads["tiny:importable"].cells["sequential"]
    assert cell.median("tasks_per_s") is None
    assert "AnswerError" in (cell.error or "")
    assert "| FAIL |" in result.markdown()


def test_command_line() -> None:
    cfg = parse_args(["--quick", "--workloads", "tiny,kill", "--only", "ppe,ProcQueue",
                      "--tiny-tasks", "20", "--scale-sizes", "10,100"])  # fmt: skip
    assert cfg.quick_mode
    assert cfg.workloads == ("tiny", "kill")
    assert cfg.only == ("ppe", "ProcQueue")
    assert (cfg.tiny_tasks, cfg.scale_sizes, cfg.reps) == (20, (10, 100), 3)
    assert cfg.task_fns == ("main", "importable")
    assert parse_args(["--task-fns", "importable"]).task_fns == ("importable",)
    with pytest.raises(SystemExit):
        parse_args(["--reps", "2"])
    with pytest.raises(SystemExit):
        parse_args(["--task-fns", "lambda"])


def test_main_fn_travels_as_a_scripts_does() -> None:
    """Under pytest the suite's ``__main__`` is pytest's: the tiny task is compiled
    into it, so cloudpickle sends it by value and pickle by reference to
    ``__main__``, exactly as for a function a script defines."""
    main, importable = task_fns(("main", "importable"))
    fn = main.add_one
    assert fn.__module__ == "__main__"
    assert getattr(sys.modules["__main__"], fn.__name__) is fn
    assert fn(41) == 42
    assert not main.reimportable  # not the suite's own script: see the n/a test below
    assert pickle.loads(pickle.dumps(fn)) is fn  # by reference
    assert pickle.loads(cloudpickle.dumps(fn)) is not fn  # by value: a new function
    assert pickle.loads(cloudpickle.dumps(importable.add_one)) is importable.add_one
    assert task_fns(("main",))[0].add_one is fn  # defined once, reused


def test_injected_main_fn_sits_out_where_workers_cannot_see_it(tmp_path: Path) -> None:
    """A forkserver worker runs the real main module again (pytest's), which lacks
    the compiled-in task: a pool that pickles by reference shows n/a there, not
    FAIL; procqueue (by value) and any forked pool run it."""
    cfg = _tiny_config(tmp_path, ("ppe", "ppe/forkserver", "ProcQueue/forkserver"),
                       extra_start_methods=("forkserver",), tiny_tasks=20)  # fmt: skip
    result = run_suite(cfg, ["pytest"])

    assert result.failed == []
    main = result.workloads["tiny:main"].cells
    assert main["ppe"].ok and main["ProcQueue/forkserver"].ok
    assert main["ppe/forkserver"].status == "n/a"
    assert "re-imports the main module" in (main["ppe/forkserver"].error or "")
    assert result.workloads["tiny:importable"].cells["ppe/forkserver"].ok


@pytest.mark.timeout(240)
def test_script_main_fn_on_forkserver_and_spawn(tmp_path: Path) -> None:
    """``python -m procqueue.bench`` runs its own script as ``__main__``: pools that
    pickle by reference find the tiny task by running it again (forkserver,
    spawn), so every ``__main__`` row runs, and the targets table judges both
    start methods."""
    only = "ppe,mp.Pool,ProcQueue,TaskQueue,ppe/spawn,mp.Pool/spawn,ProcQueue/spawn"
    cmd = [sys.executable, "-m", "procqueue.bench", "--quick", "--workloads", "tiny,map",
           "--only", only, "--start-method", "forkserver", "--extra-start-methods", "spawn",
           "--tiny-tasks", "30", "--map-tasks", "30", "--chunksizes", "1,1000",
           "--timeout", "60", "--no-plots", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=220, check=False)

    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert data["failed"] == []
    for key in ("tiny:main", "map1:main", "map1000:main"):
        wl = data["workloads"][key]
        assert "procqueue/bench/_cli.py" in wl["params"]["fn_where"]
        status = {c["contestant"]: c["status"] for c in wl["results"]}
        expected = {k: "ok" for k in only.split(",")}
        if key != "tiny:main":
            expected["TaskQueue"] = "n/a"  # no map
        assert status == expected, key
    judged = {(t["name"], t["start_method"]) for t in data["targets"] if t["met"] is not None}
    for method in ("forkserver", "spawn"):
        assert ("tiny tasks one by one, `__main__` fn", method) in judged
        assert ("map, chunksize 1000, `__main__` fn", method) in judged
