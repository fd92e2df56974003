"""``/metrics``: Prometheus exposition of a queue, parsed back with
``prometheus_client.parser``; one registry per queue."""

from __future__ import annotations

import builtins
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _tasks import add, crash_times, fail_times, raise_value_error

from procqueue import MissingExtraError, ProcQueue, task_id

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from procqueue.dashboard import metrics_registry


def scrape(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and s.labels == labels:
            return float(s.value)
    raise KeyError((sample, labels))


def test_metrics_follow_the_work(tmp_path: Path) -> None:
    with ProcQueue(max_workers=2, dashboard={"port": 0}) as pool:
        assert pool.dashboard is not None
        url = pool.dashboard.base_url
        before = scrape(url)
        assert value(before, "procqueue_tasks_submitted", "procqueue_tasks_submitted_total") == 0
        oks = [pool.submit(add, i) for i in range(40)]
        retried = pool.submit_task(fail_times, str(tmp_path / "c1"), 1, max_retries=1)
        bad = [pool.submit(raise_value_error, "no") for _ in range(3)]
        crashed = pool.submit_task(crash_times, str(tmp_path / "c2"), 5, max_retries=0)
        for f in [*oks, retried]:
            f.result()
        for f in bad:
            with pytest.raises(ValueError):
                f.result()
        with pytest.raises(Exception, match="died"):
            crashed.result()
        m = scrape(url)
        assert value(m, "procqueue_tasks_submitted", "procqueue_tasks_submitted_total") == 45
        assert value(m, "procqueue_tasks_completed", "procqueue_tasks_completed_total") == 41
        failed = "procqueue_tasks_failed_total"
        assert value(m, "procqueue_tasks_failed", failed, exception="builtins.ValueError") == 3
        crash_type = "procqueue.errors.WorkerCrashedError"
        assert value(m, "procqueue_tasks_failed", failed, exception=crash_type) == 1
        labels = {s.labels["exception"] for s in m["procqueue_tasks_failed"].samples}
        assert labels == {"builtins.ValueError", crash_type}  # exact: counted by the core
        assert value(m, "procqueue_tasks_retried", "procqueue_tasks_retried_total") == 1
        assert value(m, "procqueue_tasks_dead_lettered", "procqueue_tasks_dead_lettered_total") == 4
        assert value(m, "procqueue_tasks", "procqueue_tasks", state="completed") == 41
        assert value(m, "procqueue_tasks", "procqueue_tasks", state="pending") == 0
        assert value(m, "procqueue_dead_letters", "procqueue_dead_letters") == 4
        workers = sum(s.value for s in m["procqueue_workers"].samples)
        assert workers == 2
        restarts = "procqueue_worker_restarts_total"
        assert value(m, "procqueue_worker_restarts", restarts, reason="crash_or_kill") == 1
        # Every attempt that returned or raised: 40 + 2 + 3 (the crash is none).
        hist = "procqueue_task_duration_seconds"
        assert value(m, hist, hist + "_count") == 45
        assert value(m, hist, hist + "_bucket", le="+Inf") == 45
        assert (
            value(m, "procqueue_task_queue_wait_seconds", "procqueue_task_queue_wait_seconds_count")
            == 45
        )
        # Counters only grow: a second scrape counts nothing twice.
        again = scrape(url)
        assert value(again, hist, hist + "_count") == 45
        assert (
            value(again, "procqueue_tasks_dead_lettered", "procqueue_tasks_dead_lettered_total")
            == 4
        )
        # No label is a task id.
        for family in m.values():
            for s in family.samples:
                assert str(task_id(oks[0])) not in s.labels.values()


def test_schedule_and_limit_metrics() -> None:
    from procqueue import RateLimit

    with ProcQueue(max_workers=1, key_limits={"api": RateLimit("1/h")}) as pool:
        dash = pool.serve_dashboard(port=0)
        sched = pool.schedule(add, 1, every=3600, name="hourly")
        pool.future(sched.run_now()).result()
        first = pool.submit_task(add, 1, limit_key="api")
        first.result()
        waiting = [pool.submit_task(add, i, limit_key="api") for i in range(3)]
        m = scrape(dash.base_url)
        runs = "procqueue_schedule_runs_total"
        assert value(m, "procqueue_schedule_runs", runs, schedule="hourly", outcome="fired") == 1
        assert value(m, "procqueue_schedule_runs", runs, schedule="hourly", outcome="overlap") == 0
        wait = value(
            m, "procqueue_rate_limit_wait_seconds", "procqueue_rate_limit_wait_seconds", key="api"
        )
        assert wait == pytest.approx(3 * 3600, rel=0.01)
        sched.cancel()
        pool.shutdown(cancel_futures=True)
        assert all(f.cancelled() for f in waiting)


def test_each_queue_has_its_own_registry() -> None:
    with ProcQueue(max_workers=1) as a, ProcQueue(max_workers=1) as b:
        a.submit(add, 1).result()
        from prometheus_client.exposition import generate_latest

        ra, rb = metrics_registry(a), metrics_registry(b)
        assert ra is not rb
        ta = {f.name: f for f in text_string_to_metric_families(generate_latest(ra).decode())}
        tb = {f.name: f for f in text_string_to_metric_families(generate_latest(rb).decode())}
        submitted = "procqueue_tasks_submitted_total"
        assert value(ta, "procqueue_tasks_submitted", submitted) == 1
        assert value(tb, "procqueue_tasks_submitted", submitted) == 0


def test_missing_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_prometheus(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("prometheus_client"):
            raise ImportError("No module named 'prometheus_client'")
        return real_import(name, *args, **kwargs)

    with ProcQueue(max_workers=1) as pool:
        monkeypatch.setattr(builtins, "__import__", no_prometheus)
        with pytest.raises(MissingExtraError, match=r"procqueue\[metrics\]"):
            metrics_registry(pool)
        dash = pool.serve_dashboard(port=0)  # the dashboard itself needs nothing
        monkeypatch.undo()
        try:
            urllib.request.urlopen(dash.base_url + "metrics", timeout=10)
        except urllib.error.HTTPError as e:
            assert e.code == 501
            assert b"procqueue[metrics]" in e.read()
        else:
            pytest.fail("/metrics answered without prometheus-client")


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    from procqueue.dashboard._metrics import BUCKETS, _Histogram

    h = _Histogram()
    h.observe_many([0.0005, 0.0006, 1.0, 1e9])
    h.observe_many([0.0])
    cum = dict(h.cumulative())
    assert cum["0.0005"] == 2  # le is inclusive
    assert cum["0.001"] == 3
    assert cum["1.0"] == 4
    assert cum[str(BUCKETS[-1])] == 4
    assert cum["+Inf"] == 5
    assert h.sum == pytest.approx(1e9 + 1.0011)
