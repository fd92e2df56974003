"""The standalone scripts in ``benchmarks/``: their bookkeeping (FAIL, targets,
rotation, context), on fakes or in-process pools, in seconds. Never a speed
assertion."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from procqueue.bench._context import command_line, footer
from procqueue.bench._stdlib_pools import SequentialPool

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- payload_shm.py --------------------------------------------------------------------


class _WrongAnswers(SequentialPool):
    """In-process, but every result comes back as ``None``."""

    def run_all(self, fn: Any, calls: Any, timeout: float) -> list[Any]:
        return [None if fn.__name__ != "worker_pid" else p for p in super().run_all(fn, calls, 1)]


def test_payload_shm_fail_shows_no_figure_and_other_contestants_go_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shm = _script("payload_shm")

    def open_pool(kind: str, method: str, workers: int) -> Any:
        if kind == "mp.Pool":
            raise OSError("no pool here")  # an exception: FAIL, and the run goes on
        return _WrongAnswers() if kind == "ppe" else SequentialPool()

    monkeypatch.setattr(shm, "open_pool", open_pool)
    argv = ["--mb", "0.001", "--tasks", "3", "--workers", "1", "--reps", "3",
            "--only", "ProcQueue/fork,ppe/fork,mp.Pool/fork"]  # fmt: skip
    assert shm.main(argv) == 1
    out = capsys.readouterr().out

    rows = {line.split(" | ")[0]: line for line in out.splitlines() if line.startswith("| ")}
    assert rows["| ppe/fork"].count("FAIL") == 3  # args, results, echo
    assert rows["| mp.Pool/fork"].count("FAIL") == 3
    assert "FAIL" not in rows["| ProcQueue/fork"]
    assert "x**" not in rows["| ProcQueue/fork"]  # no ratio to a FAILed baseline
    assert "mp.Pool/fork args: round 0: OSError: no pool here" in out
    assert "ppe/fork results: round 0: result 0 is wrong" in out
    assert "git " in out and "cloudpickle " in out and "Command: " in out  # the context


def test_payload_shm_results_are_built_before_the_timing() -> None:
    shm = _script("payload_shm")
    size = 64
    wl = shm.Workload(shm.result, [(0, size, "bytes")], [(0, shm.make(1, size), False)], size)
    wl.payload = (size, "bytes")
    first = [shm.result(0, size, "bytes")]  # in a fresh process: this call builds it
    assert shm.verify(wl, first) is not None and "inside the timed run" in shm.verify(wl, first)
    assert shm.verify(wl, [shm.result(0, size, "bytes")]) is None  # built once, kept
    assert shm.verify(wl, [(0, bytes(size), False)]) == "result 0 is wrong"  # zeros: not it


@pytest.mark.parametrize("script", ["payload_shm", "rate_limit_precision"])
def test_scripts_refuse_fewer_than_three_reps(script: str) -> None:
    module = _script(script)
    for reps in ("2", "0"):
        with pytest.raises(SystemExit) as e:
            module.main(["--reps", reps])
        assert e.value.code == 2  # argparse's usage error, before anything runs


# --- dag_overhead.py ---------------------------------------------------------------------


def test_dag_overhead_prints_not_measured_targets_when_the_baseline_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dag = _script("dag_overhead")

    async def rounds(args: Any, names: tuple[str, ...], run: Any, unit: str) -> Any:
        reps = {v: [100.0, 100.0, 100.0] for v in names}
        return reps, {names[0]: "round 1: AssertionError: wrong"}  # the baseline FAILed

    monkeypatch.setattr(dag, "rounds", rounds)
    args = dag.main.__globals__["argparse"].Namespace(
        tasks=100, chains=10, workers=2, reps=3, mem_tasks=10, method="fork",
        fn=dag.add_one, importable=False,
    )  # fmt: skip
    assert asyncio.run(dag.report(args, datetime.now(timezone.utc))) == 1
    out = capsys.readouterr().out
    assert "Target: `after` DAG >= 80 % of no-dependency throughput: not measured" in out
    assert "Target: `result_of` DAG" in out
    assert out.count("Target: <= 1 KB per waiting task beyond a pending one") == 2
    assert "`none` FAILed, so there is nothing to compare with" in out
    assert "`pending` FAILed" in out


# --- observer_overhead.py ---------------------------------------------------------------


def test_observer_overhead_rotates_every_variant_to_the_front(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    obs = _script("observer_overhead")
    firsts: list[str] = []

    class FakePool:
        start_method = "fork"

        def __enter__(self) -> FakePool:
            firsts.append("")
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def map(self, fn: Any, items: Any) -> Any:
            return map(fn, items)

        def get_stats(self) -> None:
            pass

    def run_variant(pool: Any, fn: Any, variant: str, args: Any) -> dict[str, float]:
        if not firsts[-1]:
            firsts[-1] = variant
        return {"tasks_per_s": 1.0}

    monkeypatch.setattr(obs, "ProcQueue", lambda **kw: FakePool())
    monkeypatch.setattr(obs, "run_variant", run_variant)
    args = obs.main.__globals__["argparse"].Namespace(
        reps=len(obs.VARIANTS) - 1, workers=1, start_method=None, importable=False
    )
    _reps, failed, _method = obs.measure(args)
    assert failed == {}
    assert firsts == list(obs.VARIANTS)  # round k starts with variant k: every one leads once


# --- redis_peers.py: issue #9's target lines -----------------------------------------


def _redis_targets(**changes: Any) -> list[str]:
    rp = _script("redis_peers")
    titles = {"procqueue": "procqueue", "saq": "SAQ", "arq": "arq"}
    values: dict[str, dict[str, list[float]]] = {k: {m: [] for m in rp.METRICS} for k in titles}
    for m in rp.TARGET_METRICS:
        higher = rp.METRICS[m][2]
        values["procqueue"][m] = [300.0] * 3 if higher else [1.0] * 3
        values["saq"][m] = [100.0] * 3 if higher else [2.0] * 3
        values["arq"][m] = [200.0] * 3 if higher else [1.5] * 3
    failed: dict[str, dict[str, str]] = {k: {} for k in titles}
    not_run: dict[str, str] = {}
    for k, per_metric in changes.get("values", {}).items():
        values[k].update(per_metric)
    for k, why in changes.get("failed", {}).items():
        failed[k].update(why)
    not_run.update(changes.get("not_run", {}))
    shown = [m for m in rp.METRICS if m not in ("reclaim", "reclaim_leases")]
    lines: list[str] = rp.target_lines(values, failed, not_run, titles, shown)
    return lines


def test_redis_peers_target_lines() -> None:
    lines = _redis_targets()
    assert len(lines) == 6  # five rows ahead of every peer, and 2x SAQ end to end
    assert all(" met (" in line for line in lines), lines
    assert lines[-1] == "Target: end to end on no-op jobs >= 2x SAQ: met (3.00x)."

    behind = _redis_targets(values={"arq": {"enqueue": [], "e2e": [400.0] * 3}})
    e2e = next(line for line in behind if "end to end, no-op jobs:" in line)
    assert "NOT met" in e2e and "0.75x vs arq" in e2e
    enqueue = next(line for line in behind if "enqueue" in line)
    assert "not measured" in enqueue and "arq has no figure" in enqueue

    saq_failed = _redis_targets(failed={"saq": {"e2e": "round 1: Fail: lost"}})
    assert saq_failed[-1].startswith("Target: end to end on no-op jobs >= 2x SAQ: not measured")
    e2e = next(line for line in saq_failed if "end to end, no-op jobs:" in line)
    assert "not measured" in e2e and "SAQ FAILed" in e2e

    arq_not_run = _redis_targets(not_run={"arq": "not installed"})
    assert all(" met (" in line for line in arq_not_run)
    assert "arq not run" in arq_not_run[0]


def test_redis_peers_celery_and_dramatiq_keys_carry_the_queue() -> None:
    """Every key Celery and Dramatiq make starts with the queue's name, which
    carries the run's token: the script's cleanup by that token finds them all.
    Nothing here connects to Redis."""
    pytest.importorskip("celery")
    pytest.importorskip("dramatiq")
    jobs = _script("redis_peers").jobs
    url, queue = "redis://127.0.0.1:1/0", "pqpeers-abc123-celery-1-run"
    app = jobs.celery_app_for(url, queue)
    try:
        assert {f"pqpeers.{name}" for name in jobs.PLAIN_JOBS} <= set(app.tasks)
        assert app.conf.task_default_queue == queue
        assert app.conf.broker_transport_options["global_keyprefix"] == f"{queue}:"
        assert app.backend.get_key_for_task("some-id").startswith(queue.encode())
    finally:
        app.close()
    broker, backend, actors = jobs.dramatiq_broker_for(url, queue)
    assert set(actors) == set(jobs.PLAIN_JOBS)
    assert all(a.queue_name == queue and a.options["max_retries"] == 0 for a in actors.values())
    assert broker.namespace.startswith(queue) and backend.namespace.startswith(queue)
    broker.close()


# --- the recorded command ----------------------------------------------------------------


def test_command_line_is_the_one_typed() -> None:
    assert command_line()[0] == sys.executable
    assert command_line()[1:] == sys.orig_argv[1:]
    assert "Command: " in footer(datetime.now(timezone.utc), ("numpy",))


def test_bench_core_wrapper_records_its_own_command(tmp_path: Path) -> None:
    script = str(BENCHMARKS / "bench_core.py")
    cmd = [sys.executable, script, "--quick", "--workloads", "io", "--only", "sequential",
           "--io-tasks", "4", "--no-plots", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert data["context"]["command"].split()[1:4] == [cmd[1], "--quick", "--workloads"]
