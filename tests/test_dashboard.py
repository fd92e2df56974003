"""The dashboard's JSON API, security and life cycle, over real queues (the
browser tests are in ``test_dashboard_browser.py``; ``/metrics`` in
``test_metrics.py``)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _tasks import Gate, add, fail_times, gated, ident, raise_value_error

from procqueue import InsecureDashboardError, ProcQueue, RateLimit, TaskQueue, result_of, task_id
from procqueue.dashboard import Dashboard, DashboardOptions
from procqueue.dashboard._index import TaskIndex
from procqueue.dashboard._options import is_loopback, resolve_options

# ---------------------------------------------------------------- helpers


def call(
    url: str,
    method: str = "GET",
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def get_json(dash: Dashboard, path: str, **headers: str) -> Any:
    status, _, body = call(dash.base_url + path, headers=headers)
    assert status == 200, (status, body)
    return json.loads(body)


def post_json(dash: Dashboard, path: str, body: object = None) -> tuple[int, Any]:
    csrf = get_json(dash, "api/session")["csrf"]
    status, _, raw = call(dash.base_url + path, "POST", body or {}, {"X-CSRF-Token": csrf})
    return status, json.loads(raw)


@pytest.fixture
def pool() -> Iterator[ProcQueue]:
    with ProcQueue(max_workers=2, dashboard={"port": 0}) as p:
        yield p


def dash_of(pool: ProcQueue) -> Dashboard:
    assert pool.dashboard is not None
    return pool.dashboard


# ---------------------------------------------------------------- API


def test_stats_keeps_its_contract(pool: ProcQueue) -> None:
    assert [f.result() for f in [pool.submit(add, i, 1) for i in range(5)]] == [1, 2, 3, 4, 5]
    data = get_json(dash_of(pool), "api/stats")
    assert set(data) == {"kind", "stats"}
    assert data["kind"] == "local"
    stats = data["stats"]
    assert stats["submitted"] == 5 and stats["completed"] == 5
    assert set(stats["queue_wait"]) == {"p50", "p95", "p99", "samples"}
    assert all(isinstance(w["state"], str) for w in stats["workers"])


def test_overview_carries_history_and_flags(pool: ProcQueue) -> None:
    pool.submit(add, 1).result()
    data = get_json(dash_of(pool), "api/overview")
    assert data["kind"] == "local" and data["state"] == "running"
    assert data["num_workers"] == 2
    assert isinstance(data["history"], list)
    assert data["features"] == {"schedules": False, "limits": False}


def test_tasks_filter_search_and_paging(pool: ProcQueue, tmp_path: Path) -> None:
    oks = [pool.submit(add, i) for i in range(130)]
    bads = [pool.submit_task(raise_value_error, f"no {i}") for i in range(7)]
    idents = [pool.submit(ident, i) for i in range(5)]
    for f in oks + idents:
        f.result()
    for f in bads:
        with pytest.raises(ValueError):
            f.result()
    dash = dash_of(pool)

    failed = get_json(dash, "api/tasks?state=failed")
    assert [t["id"] for t in failed["tasks"]] == sorted((task_id(f) for f in bads), reverse=True)
    assert failed["total"] == 7
    assert failed["tasks"][0]["error"].startswith("builtins.ValueError: no 6")

    by_name = get_json(dash, "api/tasks?name=ident")
    assert [t["id"] for t in by_name["tasks"]] == sorted((task_id(f) for f in idents), reverse=True)
    assert set(by_name["names"]) == {"add", "raise_value_error", "ident"}

    both = get_json(dash, "api/tasks?state=completed&name=add&limit=200")
    assert len(both["tasks"]) == 130 and both["next_before"] is None

    # Newest first, 50 a page, every task once, through the cursor.
    seen: list[int] = []
    before = ""
    for _ in range(10):
        page = get_json(dash, f"api/tasks?limit=50{before}")
        seen += [t["id"] for t in page["tasks"]]
        if page["next_before"] is None:
            break
        before = f"&before={page['next_before']}"
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) == 142

    one = get_json(dash, f"api/tasks?id={task_id(oks[3])}")
    assert [t["id"] for t in one["tasks"]] == [task_id(oks[3])]
    assert get_json(dash, "api/tasks?id=999999")["tasks"] == []
    status, _, _ = call(dash.base_url + "api/tasks?state=bogus")
    assert status == 400


def test_task_detail_attempts_reprs_and_dependencies(tmp_path: Path) -> None:
    async def main() -> None:
        async with TaskQueue(num_workers=2, dashboard=0) as queue:
            dash = queue.dashboard
            assert dash is not None
            counter = str(tmp_path / "calls")
            flaky = await queue.submit(fail_times, counter, 1, "x" * 5000, max_retries=2)
            await queue.result(flaky)
            top = await queue.submit(ident, {"secret": "hunter2", "n": list(range(100))})
            down = await queue.submit(ident, result_of(top))
            await queue.result(down)
            loop = asyncio.get_running_loop()
            detail = await loop.run_in_executor(None, get_json, dash, f"api/tasks/{flaky}")
            assert detail["state"] == "completed" and detail["attempts"] == 2
            (err,) = detail["errors"]
            assert err["exc_type"] == "builtins.ValueError"
            assert "planned failure 1 of 1" in err["traceback"]
            assert len(detail["result"]) <= 2000 and detail["result"].startswith("'xxx")
            assert detail["run_time"] >= 0 and detail["queue_wait"] >= 0
            up = await loop.run_in_executor(None, get_json, dash, f"api/task/{top}")
            assert up["dependents"] == [down]
            assert up["linked_states"] == {str(down): "completed"}
            low = await loop.run_in_executor(None, get_json, dash, f"api/tasks/{down}")
            assert low["after"] == [top]
            status, _, _ = await loop.run_in_executor(None, call, dash.base_url + "api/tasks/99999")
            assert status == 404

    asyncio.run(main())


def test_pending_task_shows_arguments_unless_hidden(gate: Gate) -> None:
    with ProcQueue(max_workers=1) as pool:
        shown = pool.serve_dashboard(port=0)
        hidden = pool.serve_dashboard(port=0, show_args=False)
        blocker = pool.submit(gated, gate.paths, 1)
        gate.wait_started()
        waiting = pool.submit(ident, {"password": "hunter2"})
        tid = task_id(waiting)
        detail = get_json(shown, f"api/tasks/{tid}")
        assert detail["state"] == "pending"
        assert detail["call"] == {"args": ["{'password': 'hunter2'}"], "kwargs": {}}
        secret = get_json(hidden, f"api/tasks/{tid}")
        assert secret["show_args"] is False and "call" not in secret
        assert "hunter2" not in json.dumps(secret)
        gate.release()
        assert blocker.result() == 1 and waiting.result() == {"password": "hunter2"}


def test_dead_letters_retry_and_purge(pool: ProcQueue, tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    f1 = pool.submit_task(fail_times, counter, 1, "second time lucky")
    f2 = pool.submit_task(raise_value_error, "always")
    f3 = pool.submit_task(raise_value_error, "again")
    for f in (f1, f2, f3):
        with pytest.raises(ValueError):
            f.result()
    dash = dash_of(pool)
    letters = get_json(dash, "api/dead-letters")
    assert letters["total"] == 3
    rows = letters["dead_letters"]
    assert {d["id"] for d in rows} == {task_id(f1), task_id(f2), task_id(f3)}
    assert [d["failed_at"] for d in rows] == sorted((d["failed_at"] for d in rows), reverse=True)
    first = next(d for d in rows if d["id"] == task_id(f1))
    assert "planned failure" in first["error"]["traceback"]
    assert get_json(dash, "api/dead-letters?name=fail_times")["total"] == 1
    assert get_json(dash, "api/dead-letters?exception=ValueError")["total"] == 3

    status, _, _ = call(dash.base_url + f"api/dead-letters/{task_id(f1)}/retry", "POST", {})
    assert status == 403  # no CSRF token
    status, body = post_json(dash, f"api/dead-letters/{task_id(f1)}/retry")
    assert status == 200 and body["old"] == task_id(f1)
    assert pool.future(body["new"]).result() == "second time lucky"

    status, body = post_json(dash, "api/dead-letters/purge", {"ids": [task_id(f2)]})
    assert status == 200 and body == {"purged": 1}
    status, body = post_json(dash, "api/dead-letters/retry", {"name": "raise_value_error"})
    assert status == 200 and list(body["requeued"]) == [str(task_id(f3))]
    with pytest.raises(ValueError, match="again"):
        pool.future(body["requeued"][str(task_id(f3))]).result()
    status, body = post_json(dash, "api/dead-letters/purge", {})
    assert status == 200 and body == {"purged": 1}
    assert get_json(dash, "api/dead-letters")["total"] == 0
    status, body = post_json(dash, "api/dead-letters/12345/retry")
    assert status == 404


def test_schedules_and_limits(tmp_path: Path) -> None:
    with ProcQueue(max_workers=1, key_limits={"api": RateLimit("50/s")}) as pool:
        dash = pool.serve_dashboard(port=0)
        sched = pool.schedule(add, 1, 2, every=3600, name="hourly")
        rows = get_json(dash, "api/schedules")["schedules"]
        assert [r["name"] for r in rows] == ["hourly"] and rows[0]["paused"] is False
        assert post_json(dash, "api/schedules/hourly/pause")[0] == 200
        assert sched.paused
        status, body = post_json(dash, "api/schedules/hourly/run-now")
        assert status == 200 and pool.future(body["task_id"]).result() == 3
        assert post_json(dash, "api/schedules/hourly/resume")[0] == 200
        assert not sched.paused
        assert post_json(dash, "api/schedules/nope/pause")[0] == 404
        pool.submit_task(add, 1, limit_key="api").result()
        limits = get_json(dash, "api/limits")
        assert limits["keys_total"] == 1
        keys = [r for r in limits["limits"] if r.get("concrete")]
        assert keys[0]["key"] == "api" and keys[0]["rates"] == [50.0]
        sched.cancel()


# ---------------------------------------------------------------- security


def test_non_loopback_bind_needs_a_token() -> None:
    with ProcQueue(max_workers=1) as pool:
        with pytest.raises(InsecureDashboardError):
            pool.serve_dashboard(port=0, host="0.0.0.0")
        with pytest.raises(InsecureDashboardError):
            ProcQueue(max_workers=1, dashboard={"port": 0, "host": "0.0.0.0"})


def test_token_is_required_on_every_request() -> None:
    token = "s3cret-token-for-tests"
    with ProcQueue(max_workers=1) as pool:
        dash = pool.serve_dashboard(port=0, host="0.0.0.0", token=token)
        base = dash.base_url
        assert dash.url == f"{base}?token={token}"
        assert call(base + "api/stats")[0] == 401
        assert call(base + "metrics")[0] == 401
        assert call(base)[0] == 401
        assert call(base + "api/stats", headers={"Authorization": "Bearer wrong-token!"})[0] == 403
        ok = call(base + "api/stats", headers={"Authorization": f"Bearer {token}"})
        assert ok[0] == 200
        assert call(base + "api/stats", headers={"X-Procqueue-Token": token})[0] == 200
        status, headers, _ = call(f"{base}?token={token}")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        assert call(base, headers={"Cookie": cookie})[0] == 200
        assert call(base + "api/stats", headers={"Cookie": cookie})[0] == 200


def test_loopback_refuses_foreign_host_headers(pool: ProcQueue) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under a name of its own."""
    dash = dash_of(pool)
    assert call(dash.base_url + "api/stats", headers={"Host": "evil.example:80"})[0] == 403
    assert call(dash.base_url + "api/stats", headers={"Host": f"localhost:{dash.port}"})[0] == 200


def test_read_only_refuses_actions() -> None:
    with ProcQueue(max_workers=1) as pool:
        dash = pool.serve_dashboard(port=0, read_only=True)
        f = pool.submit(raise_value_error, "x")
        with pytest.raises(ValueError):
            f.result()
        assert get_json(dash, "api/session")["read_only"] is True
        status, body = post_json(dash, f"api/dead-letters/{task_id(f)}/retry")
        assert status == 403 and "read-only" in body["error"]
        assert len(pool.dlq) == 1


def test_cross_origin_action_refused(pool: ProcQueue) -> None:
    dash = dash_of(pool)
    csrf = get_json(dash, "api/session")["csrf"]
    headers = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert call(dash.base_url + "api/dead-letters/purge", "POST", {}, headers)[0] == 403


@pytest.mark.parametrize("length", ["-5", "abc"])
def test_a_bad_content_length_is_refused(pool: ProcQueue, length: str) -> None:
    """A negative length would read the request stream to its end (unbounded)."""
    import http.client
    from urllib.parse import urlsplit

    dash = dash_of(pool)
    csrf = get_json(dash, "api/session")["csrf"]
    url = urlsplit(dash.base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.putrequest("POST", url.path + "api/dead-letters/purge")
        for name, value in (
            ("Content-Type", "application/json"),
            ("Content-Length", length),
            ("X-CSRF-Token", csrf),
        ):
            conn.putheader(name, value)
        conn.endheaders()
        assert conn.getresponse().status == 400
    finally:
        conn.close()


def test_security_headers(pool: ProcQueue) -> None:
    status, headers, body = call(dash_of(pool).base_url)
    assert status == 200 and b"/static/app.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_options() -> None:
    assert resolve_options(9000) == DashboardOptions(port=9000)
    assert resolve_options({"port": 0, "read_only": True}, host="::1").host == "::1"
    assert resolve_options(True, port=None).port == 8765
    with pytest.raises(TypeError):
        resolve_options("8765")
    with pytest.raises(TypeError):
        resolve_options({"prot": 1})
    with pytest.raises(ValueError):
        DashboardOptions(port=70000)
    with pytest.raises(ValueError):
        DashboardOptions(token="short")
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


# ---------------------------------------------------------------- live and life cycle


def _read_event(resp: http.client.HTTPResponse) -> tuple[int, dict[str, Any]]:
    fields: dict[str, str] = {}
    while True:
        line = resp.readline().decode().rstrip("\n")
        if not line:
            if "data" in fields:
                return int(fields["id"]), json.loads(fields["data"])
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        fields[key] = value


def test_events_stream_snapshots(pool: ProcQueue) -> None:
    dash = dash_of(pool)
    conn = http.client.HTTPConnection(dash.host, dash.port, timeout=10)
    try:
        conn.request("GET", "/api/events")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        first, data = _read_event(resp)
        assert data["overview"]["kind"] == "local"
        done = [pool.submit(add, i) for i in range(20)]
        for f in done:
            f.result()
        version = first
        while data["overview"]["stats"]["completed"] < 20:
            version, data = _read_event(resp)
        assert version > first
    finally:
        conn.close()


def test_closes_with_the_queue() -> None:
    pool = ProcQueue(max_workers=1, dashboard=0)
    dash = pool.dashboard
    assert dash is not None
    extra = pool.serve_dashboard(port=0)
    conn = http.client.HTTPConnection(dash.host, dash.port, timeout=10)
    conn.request("GET", "/api/events")  # a live stream must not hold the close up
    assert conn.getresponse().status == 200
    pool.shutdown()
    conn.close()
    for d in (dash, extra):
        with pytest.raises(OSError), socket.create_connection((d.host, d.port), timeout=2):
            pass
    assert not [t for t in threading.enumerate() if t.name.startswith("procqueue-dashboard")]


def test_taskqueue_dashboard_follows_start_and_stop() -> None:
    async def main() -> None:
        queue = TaskQueue(num_workers=1, dashboard={"port": 0})
        assert queue.dashboard is None
        await queue.start()
        dash = queue.dashboard
        assert dash is not None
        await queue.result(await queue.submit(add, 2, 3))
        loop = asyncio.get_running_loop()
        stats = await loop.run_in_executor(None, get_json, dash, "api/stats")
        assert stats["stats"]["completed"] == 1
        await queue.stop()
        assert dash.closing

    asyncio.run(main())


def test_two_queues_two_dashboards() -> None:
    with ProcQueue(max_workers=1, dashboard=0) as a, ProcQueue(max_workers=1, dashboard=0) as b:
        a.submit(add, 1).result()
        assert get_json(dash_of(a), "api/stats")["stats"]["submitted"] == 1
        assert get_json(dash_of(b), "api/stats")["stats"]["submitted"] == 0


# ---------------------------------------------------------------- the index at scale


class FakeEngine:
    """A task table of ``n`` records (ids 1..n): ``probe_tasks`` as the engine
    answers it, counting the ids asked about."""

    def __init__(self, n: int) -> None:
        # 1M finished tasks: every 1000th failed, names alternate.
        self.rows: dict[int, tuple[int, str, tuple[int, ...]]] = {
            i: (6 if i % 1000 == 0 else 5, "load" if i % 2 else "save", ()) for i in range(1, n + 1)
        }
        self.probed = 0

    def newest_task_id(self) -> int:
        return next(reversed(self.rows), 0)

    def probe_tasks(self, ids: Any) -> list[tuple[int, str, tuple[int, ...]] | None]:
        ids = list(ids)
        self.probed += len(ids)
        return [self.rows.get(i) for i in ids]


def test_index_pages_a_million_tasks_without_rescanning() -> None:
    from procqueue import TaskState

    engine = FakeEngine(1_000_000)
    index = TaskIndex(engine, min_interval=0.0, sweep_budget=1000)
    index.refresh()
    first = engine.probed
    assert first >= 1_000_000
    t0 = time.perf_counter()
    page = index.candidates(TaskState.FAILED, None, None, 50)
    named = index.candidates(TaskState.FAILED, "save", None, 50)
    elapsed = time.perf_counter() - t0
    assert page == list(range(1_000_000, 950_000, -1000))
    assert named == page  # every 1000th id is even: "save"
    assert index.candidates(TaskState.FAILED, None, page[-1], 1) == [950_000]
    assert index.count(TaskState.FAILED, None) == 1000
    assert elapsed < 0.5  # C-speed rfind, not a Python walk (typically ~1 ms)
    # New tasks: the next refresh asks about those (and a bounded sweep), not the million.
    for i in range(1_000_001, 1_000_101):
        engine.rows[i] = (3, "load", ())  # running
    engine.probed = 0
    index.refresh()
    assert engine.probed <= 100 + 1000 + 10
    assert index.candidates(TaskState.RUNNING, None, None, 5) == list(
        range(1_000_100, 1_000_095, -1)
    )
    # They finish: only the open ones are asked about again.
    for i in range(1_000_001, 1_000_101):
        engine.rows[i] = (5, "load", ())
    engine.probed = 0
    index.refresh()
    assert engine.probed <= 100 + 1000 + 10
    assert index.candidates(TaskState.RUNNING, None, None, 5) == []


def test_an_unreachable_backend_is_one_warning_not_a_traceback_per_request(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from procqueue.dashboard import _source

    class Source:
        unavailable = (ConnectionRefusedError,)

    monkeypatch.setattr(_source, "_unreachable_logged", [float("-inf")])
    with caplog.at_level("WARNING", logger="procqueue.dashboard"):
        for _ in range(5):
            assert _source.unreachable(Source(), ConnectionRefusedError("redis is down"))
        assert not _source.unreachable(Source(), KeyError("a bug"))  # still a 500, logged
        assert not _source.unreachable(object(), ConnectionRefusedError("no list: a bug"))
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "redis is down" in warnings[0].getMessage()
