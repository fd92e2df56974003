"""The dashboard of a Redis cluster (``procqueue dashboard --broker ...``):
real Redis, real ``procqueue worker`` nodes started through the CLI, the JSON
API, ``/metrics``, the security rules, the CLI itself and one browser test.

Each test has its own queue (``Cluster`` from ``test_redis_nodes``) and
deletes its keys. No sleeps as synchronisation: gated tasks announce
themselves through FIFOs, results come through the client's futures, and
what the sampler shows is awaited with :func:`until` (a deadline). Without
Redis the tests skip, unless ``PROCQUEUE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _tasks import Gate, add, fail_times, gated
from conftest import REDIS_URL as URL
from test_dashboard import call
from test_redis_nodes import SECRET, TESTS, Cluster, _kill_tree

from procqueue import InsecureDashboardError, ProcQueue
from procqueue.dashboard import Dashboard, DashboardOptions, serve_cluster
from procqueue.dashboard._redis_serve import redact
from procqueue.redis import ClusterStats

T = TypeVar("T")


def until(probe: Callable[[], T | None], timeout: float = 20.0, what: str = "a condition") -> T:
    """``probe()``'s first truthy value, asked until ``timeout`` (the
    dashboard samples Redis on its own clock: there is nothing to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {got!r}")
        time.sleep(0.05)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    from conftest import require_redis

    c = Cluster(require_redis())
    yield c
    c.close()


@pytest.fixture
def dash(cluster: Cluster) -> Iterator[Dashboard]:
    d = serve_cluster(URL, queue=cluster.queue, options=DashboardOptions(port=0), secret=SECRET)
    yield d
    d.close()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[ProcQueue]:
    pool = ProcQueue(broker=URL, queue=cluster.queue, secret=SECRET)
    yield pool
    pool.shutdown(wait=False)


def get(dash: Dashboard, path: str) -> Any:
    status, _, body = call(dash.base_url + path)
    assert status == 200, (status, body)
    return json.loads(body)


def post(dash: Dashboard, path: str, body: object = None) -> tuple[int, Any]:
    csrf = get(dash, "api/session")["csrf"]
    status, _, raw = call(dash.base_url + path, "POST", body or {}, {"X-CSRF-Token": csrf})
    return status, json.loads(raw)


def wait_for_node(dash: Dashboard, n: int = 1) -> dict[str, Any]:
    def up() -> dict[str, Any] | None:
        stats = get(dash, "api/stats")["stats"]
        return stats if len(stats["nodes"]) == n else None

    return until(up, 30, f"{n} node(s) to beat")


# ---------------------------------------------------------------- API


def test_stats_is_the_cluster_stats_contract_and_top_reads_it(
    cluster: Cluster, dash: Dashboard, client: ProcQueue
) -> None:
    cluster.node(workers=2)
    stats = wait_for_node(dash)
    data = get(dash, "api/stats")
    assert set(data) == {"kind", "stats"} and data["kind"] == "cluster"
    assert set(data["stats"]) == {f.name for f in dataclasses.fields(ClusterStats)}
    (node,) = stats["nodes"]
    assert node["host"] == socket.gethostname() and node["workers"] == 2
    assert len(node["processes"]) == 2 and node["heartbeat_age"] < 30
    assert get(dash, "api/session")["kind"] == "cluster"

    # procqueue top --url renders it (the same shape as top --broker).
    from rich.console import Console

    from procqueue._top import HttpSource, render

    snapshot = HttpSource(dash.base_url).fetch()
    console = Console(width=120, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    with console.file:
        console.print(render(snapshot, source=dash.base_url))
    screen = console.export_text()
    assert "(cluster)" in screen and node["host"] in screen and str(node["pid"]) in screen

    # Counts since the dashboard started, from the done channel.
    assert [f.result(timeout=30) for f in [client.submit(add, i, 1) for i in range(6)]] == [
        1, 2, 3, 4, 5, 6,
    ]  # fmt: skip
    overview = until(
        lambda: (ov := get(dash, "api/overview"))["totals"][0] == 6 and ov,
        what="6 completions counted",
    )
    assert overview["success_rate"] == 1.0 and overview["queue"] == cluster.queue
    assert overview["history"] and overview["history"][-1][1] == 6


def test_tasks_by_state_paging_search_and_detail(
    cluster: Cluster, dash: Dashboard, client: ProcQueue, gate: Gate
) -> None:
    cluster.node(workers=1, prefetch=0)
    wait_for_node(dash)
    blocker = client.submit(gated, gate.paths, "done")
    gate.wait_started()
    queued = [client.submit_task(add, i, 100, priority=i % 2) for i in range(5)]
    ids = [fut._task_id for fut in queued]  # type: ignore[attr-defined]

    running = get(dash, "api/tasks?state=running")
    assert running["total"] == 1 and running["tasks"][0]["state"] == "running"
    assert running["tasks"][0]["node"]  # the node's owner id: host:pid:nonce
    blocker_id = running["tasks"][0]["id"]

    # Pending in claim order (priority first, then FIFO), paged by position.
    first = get(dash, "api/tasks?state=pending&limit=3")
    assert first["total"] == 5 and first["next_before"] == 3
    second = get(dash, f"api/tasks?state=pending&limit=3&before={first['next_before']}")
    assert second["next_before"] is None
    order = [t["id"] for t in first["tasks"] + second["tasks"]]
    assert order == [ids[1], ids[3], ids[0], ids[2], ids[4]]
    assert {t["name"] for t in first["tasks"]} == {"add"}

    every = get(dash, "api/tasks?limit=50")
    assert every["total"] == 6 and every["tasks"][0]["id"] == blocker_id
    assert "add" in every["names"] and "gated" in every["names"]
    named = get(dash, "api/tasks?name=gated")
    assert named["total"] is None and [t["id"] for t in named["tasks"]] == [blocker_id]
    status, _, body = call(dash.base_url + "api/tasks?state=completed")
    assert status == 400 and b"search them by id" in body

    detail = get(dash, f"api/tasks/{ids[0]}")
    assert detail["state"] == "pending" and detail["call"]["args"] == ["0", "100"]
    assert detail["in_dead_letters"] is False and detail["errors"] == []

    gate.release()
    assert blocker.result(timeout=30) == "done"
    assert [f.result(timeout=30) for f in queued] == [100, 101, 102, 103, 104]
    # A finished task is found by id (its result key), with its result.
    found = get(dash, f"api/tasks?id={ids[4]}")
    assert [t["state"] for t in found["tasks"]] == ["completed"]
    detail = get(dash, f"api/tasks/{ids[4]}")
    assert detail["result"] == "104" and detail["attempts"] == 1
    assert call(dash.base_url + "api/tasks/987654321")[0] == 404


def test_dead_letter_detail_and_retry_with_csrf(
    cluster: Cluster, dash: Dashboard, client: ProcQueue, tmp_path: Path
) -> None:
    cluster.node(workers=1)
    counter = str(tmp_path / "calls")
    fut = client.submit_task(fail_times, counter, 1, "fixed")
    with pytest.raises(ValueError, match="planned failure 1 of 1"):
        fut.result(timeout=30)
    old = fut._task_id  # type: ignore[attr-defined]

    letters = get(dash, "api/dead-letters")
    assert letters["total"] == letters["size"] == 1
    (letter,) = letters["dead_letters"]
    assert letter["id"] == old and letter["name"] == "fail_times"
    assert letter["error"]["exc_type"] == "ValueError"
    assert letter["error"]["message"] == "planned failure 1 of 1"
    assert letters["names"] == ["fail_times"] and letters["exceptions"] == ["ValueError"]
    assert get(dash, "api/dead-letters?exception=KeyError")["total"] == 0
    assert get(dash, "api/dead-letters?exception=Value")["total"] == 1

    detail = get(dash, f"api/tasks/{old}")
    assert detail["state"] == "failed" and detail["in_dead_letters"] is True
    assert [e["message"] for e in detail["errors"]] == ["planned failure 1 of 1"]
    assert detail["call"]["args"] == [repr(counter), "1", "'fixed'"]
    (row,) = get(dash, "api/tasks?state=failed")["tasks"]
    assert row["id"] == old and row["error"] == "ValueError: planned failure 1 of 1"
    assert get(dash, f"api/tasks?id={old}")["tasks"][0]["error"] == row["error"]
    # Counted once the sampler reads the ended id (before the retry takes it away).
    until(lambda: get(dash, "api/overview")["totals"][:2] == [0, 1], what="1 failure counted")

    # Actions need the CSRF token.
    status, _, _ = call(dash.base_url + f"api/dead-letters/{old}/retry", "POST", {})
    assert status == 403
    status, body = post(dash, f"api/dead-letters/{old}/retry")
    assert status == 200 and body["old"] == old
    new = body["new"]
    assert client._remote.waiter(new).result(timeout=30) == "fixed"  # type: ignore[attr-defined]
    assert get(dash, f"api/tasks/{new}")["state"] == "completed"
    assert get(dash, "api/dead-letters")["total"] == 0
    assert post(dash, f"api/dead-letters/{old}/retry")[0] == 404
    until(lambda: get(dash, "api/overview")["totals"][:2] == [1, 1], what="1 failure, 1 success")

    # Retry all matching and purge, by filter.
    futs = [client.submit_task(fail_times, str(tmp_path / f"c{i}"), 1, i) for i in range(3)]
    for f in futs:
        with pytest.raises(ValueError):
            f.result(timeout=30)
    dead = [f._task_id for f in futs]  # type: ignore[attr-defined]
    status, body = post(dash, "api/dead-letters/purge", {"ids": [dead[0]]})
    assert (status, body) == (200, {"purged": 1})
    status, body = post(dash, "api/dead-letters/retry", {"exception": "KeyError"})
    assert body == {"requeued": {}}
    status, body = post(dash, "api/dead-letters/retry", {"name": "fail_times"})
    assert sorted(int(k) for k in body["requeued"]) == sorted(dead[1:])
    waiter = client._remote.waiter  # type: ignore[attr-defined]
    assert sorted(waiter(n).result(timeout=30) for n in body["requeued"].values()) == [1, 2]


def test_schedules_and_limits(cluster: Cluster, dash: Dashboard) -> None:
    from procqueue import Concurrency, RateLimit

    limits = {"api": RateLimit("5/s"), "db*": Concurrency(2)}
    pool = ProcQueue(broker=URL, queue=cluster.queue, secret=SECRET, key_limits=limits)
    try:
        pool.schedule(add, 1, 2, every=3600, name="hourly")
        (row,) = get(dash, "api/schedules")["schedules"]
        assert row["name"] == "hourly" and row["paused"] is False and row["next_run"] > time.time()
        assert post(dash, "api/schedules/hourly/pause")[0] == 200
        assert get(dash, "api/schedules")["schedules"][0]["paused"] is True
        assert post(dash, "api/schedules/hourly/resume")[0] == 200
        status, body = post(dash, "api/schedules/hourly/run-now")
        assert status == 200 and body["op"] == "run_now"
        cluster.node(workers=1)
        assert pool._remote.waiter(body["task_id"]).result(timeout=30) == 3  # type: ignore[attr-defined]
        assert post(dash, "api/schedules/nope/pause")[0] == 404
        until(lambda: get(dash, "api/overview")["features"]["schedules"], what="features")

        configured = {r["key"]: r for r in get(dash, "api/limits")["limits"]}
        assert configured["api"]["limits"] == ["5/s"]
        assert configured["db*"]["pattern"] and configured["db*"]["limits"] == ["Concurrency(2)"]
    finally:
        pool.shutdown(wait=False)


def test_metrics_parse(cluster: Cluster, dash: Dashboard, client: ProcQueue) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    cluster.node(workers=2)
    wait_for_node(dash)
    assert client.submit(add, 1, 2).result(timeout=30) == 3
    status, headers, body = call(dash.base_url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }
    assert samples[("procqueue_nodes", ())] == 1
    workers = [v for (name, _), v in samples.items() if name == "procqueue_workers"]
    assert sum(workers) == 2  # their states as of the node's last heartbeat
    for state in ("pending", "scheduled", "running", "waiting"):
        assert samples[("procqueue_tasks", (("state", state),))] == 0
    assert samples[("procqueue_dead_letters", ())] == 0
    assert ("procqueue_tasks_completed_total", ()) in samples


# ---------------------------------------------------------------- security and the CLI


def test_a_non_loopback_bind_needs_a_token(cluster: Cluster) -> None:
    with pytest.raises(InsecureDashboardError):
        serve_cluster(URL, queue=cluster.queue, options=DashboardOptions(port=0, host="0.0.0.0"))
    token = "cluster-token-for-tests"
    options = DashboardOptions(port=0, host="0.0.0.0", token=token)
    with serve_cluster(URL, queue=cluster.queue, options=options, secret=SECRET) as dash:
        assert call(dash.base_url + "api/stats")[0] == 401
        assert call(dash.base_url + "metrics")[0] == 401
        ok = call(dash.base_url + "api/stats", headers={"Authorization": f"Bearer {token}"})
        assert ok[0] == 200 and json.loads(ok[2])["kind"] == "cluster"
    read_only = DashboardOptions(port=0, read_only=True)
    with serve_cluster(URL, queue=cluster.queue, options=read_only, secret=SECRET) as dash:
        assert post(dash, "api/dead-letters/retry")[0] == 403


def test_cli_serves_until_sigterm_and_refuses_an_open_bind(cluster: Cluster) -> None:
    env = dict(os.environ, PROCQUEUE_SECRET=SECRET, PYTHONPATH=TESTS)
    env.pop("PROCQUEUE_DASHBOARD_TOKEN", None)
    base = [sys.executable, "-m", "procqueue", "dashboard", "--broker", URL]
    refused = subprocess.run(
        [*base, "--host", "0.0.0.0"], env=env, capture_output=True, timeout=60, check=False
    )
    assert refused.returncode == 2 and b"without a token" in refused.stderr
    no_secret = dict(env)
    del no_secret["PROCQUEUE_SECRET"]
    refused = subprocess.run(base, env=no_secret, capture_output=True, timeout=60, check=False)
    assert refused.returncode == 2 and b"no secret" in refused.stderr

    cmd = [*base, "--queue", cluster.queue, "--port", "0", "--read-only"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("procqueue dashboard: http://127.0.0.1:"), line
        url = line.split()[2]
        status, _, body = call(url + "api/stats")
        assert status == 200 and json.loads(body)["kind"] == "cluster"
        assert json.loads(call(url + "api/session")[2])["read_only"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_redact_hides_the_password() -> None:
    assert redact("redis://:hunter2@db:6379/0") == "redis://:***@db:6379/0"
    assert redact("rediss://app:hunter2@db/1") == "rediss://app:***@db/1"
    assert redact("redis://db:6379/0") == "redis://db:6379/0"


# ---------------------------------------------------------------- in a browser


def test_browser_overview_shows_the_node_and_live_counts(
    cluster: Cluster, dash: Dashboard, client: ProcQueue, gate: Gate
) -> None:
    from test_dashboard_browser import ARGS, CHROMIUM, TIMEOUT, _unavailable, expect

    try:
        from playwright.sync_api import expect as pw_expect
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"Chromium at {CHROMIUM} (apt-get install -y chromium)")
    pw_expect.set_options(timeout=TIMEOUT)
    cluster.node(workers=1, prefetch=0)
    (node,) = wait_for_node(dash)["nodes"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT)
            page.goto(dash.url)
            expect(page.locator("#live")).to_have_attribute("data-mode", "live")
            row = page.locator(f"#ov-nodes tr[data-node='{node['node']}']")
            expect(row).to_contain_text(node["host"])
            expect(row).to_contain_text(str(node["pid"]))
            running = page.get_by_test_id("count-running")
            pending = page.get_by_test_id("count-pending")
            expect(running).to_have_text("0")
            blocker = client.submit(gated, gate.paths, "done")
            gate.wait_started()
            queued = [client.submit(add, i, 1) for i in range(3)]
            expect(running).to_have_text("1")
            expect(pending).to_have_text("3")
            gate.release()
            assert blocker.result(timeout=30) == "done"
            assert [f.result(timeout=30) for f in queued] == [1, 2, 3]
            expect(running).to_have_text("0")
            expect(pending).to_have_text("0")
            expect(page.get_by_test_id("count-completed")).to_have_text("4")
            expect(page.locator("#ov-workers tbody tr")).to_have_count(1)
            # The tasks page offers what a cluster can list.
            page.goto(dash.base_url + "#/tasks")
            options = page.locator("#filter-state option")
            expect(options).to_have_text(["all states", *CLUSTER_STATES])
        finally:
            browser.close()


CLUSTER_STATES = ["pending", "scheduled", "running", "waiting", "failed"]
