"""Smoke tests of the benchmark suite (``procqueue.bench``): it imports, runs a
tiny workload end to end, checks answers and writes its report. Never a speed
assertion: benchmarks are not tests (``BENCHMARKS.md`` rule 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from procqueue.bench import BenchConfig, run_suite
from procqueue.bench import _tasks as bench_tasks
from procqueue.bench.__main__ import parse_args


def _tiny_config(out: Path, only: tuple[str, ...]) -> BenchConfig:
    return BenchConfig.quick().with_overrides(
        workloads=("tiny",),
        only=only,
        tiny_tasks=50,
        extra_start_methods=(),
        out=out,
        plots=False,
        timeout=30.0,
    )


def test_import_procqueue_leaves_bench_alone() -> None:
    code = "import sys, procqueue; sys.exit('procqueue.bench' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_tiny_workload_two_contestants(tmp_path: Path) -> None:
    result = run_suite(_tiny_config(tmp_path, ("sequential", "ProcQueue")), ["pytest"])

    assert result.failed == []
    tiny = result.workloads["tiny"]
    assert set(tiny.cells) == {"sequential", "ProcQueue"}
    for cell in tiny.cells.values():
        assert cell.ok
        assert len(cell.values("tasks_per_s")) == 3  # the timed rounds, not the warm-up
        assert cell.warmup["tasks_per_s"] is not None
    assert tiny.cells["ProcQueue"].start_method == "fork"

    md, js = result.write()
    assert "procqueue ProcQueue [fork]" in md.read_text()
    data = json.loads(js.read_text())
    assert data["failed"] == []
    assert data["context"]["command"] == "pytest"
    assert {"date", "python", "nproc", "packages", "git"} <= set(data["context"])


def test_wrong_answer_is_a_fail_not_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_tasks, "add_one", lambda x: x + 2)  # sequential runs in-process
    result = run_suite(_tiny_config(tmp_path, ("sequential",)), ["pytest"])

    assert result.failed == ["tiny/sequential"]
    cell = result.workloads["tiny"].cells["sequential"]
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
    with pytest.raises(SystemExit):
        parse_args(["--reps", "2"])
