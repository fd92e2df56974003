"""The dashboard in a real browser: Debian's Chromium driven by Playwright
(no browser download). Skipped when either is missing, except with
``PROCQUEUE_REQUIRE_SERVICES=1`` (CI), where their absence fails the run.

No sleeps: every wait is on a condition (Playwright's ``expect`` polls the
page; gated tasks announce themselves through FIFOs)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _tasks import Gate, add, fail_times, gated, ident, raise_value_error

from procqueue import ProcQueue, task_id

CHROMIUM = os.environ.get("PROCQUEUE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT = 15_000  # ms, for expect()
DASH = "\u2013"  # the pager's en dash


def _unavailable(why: str) -> None:
    if os.environ.get("PROCQUEUE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"the browser tests need {why} (PROCQUEUE_REQUIRE_SERVICES=1)")
    pytest.skip(f"no {why}")


@pytest.fixture
def page() -> Iterator[Any]:
    """A fresh headless Chromium page (one browser per test: the suite's leak
    check allows no child process to outlive a test)."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("Playwright for Python (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"Chromium at {CHROMIUM} (apt-get install -y chromium)")
    expect.set_options(timeout=TIMEOUT)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.set_default_timeout(TIMEOUT)
            yield pg
        finally:
            browser.close()


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as _expect

    return _expect(target)


def test_overview_counts_change_live(page: Any, gate: Gate) -> None:
    with ProcQueue(max_workers=2, dashboard={"port": 0}) as pool:
        assert pool.dashboard is not None
        page.goto(pool.dashboard.url)
        expect(page.locator("#live")).to_have_attribute("data-mode", "live")
        completed = page.get_by_test_id("count-completed")
        running = page.get_by_test_id("count-running")
        expect(completed).to_have_text("0")
        futures = [pool.submit(gated, gate.paths, i) for i in range(2)]
        gate.wait_started()
        gate.wait_started()
        expect(running).to_have_text("2")
        expect(page.locator("#ov-workers tbody tr")).to_have_count(2)
        gate.release(2)
        assert [f.result() for f in futures] == [0, 1]
        more = [pool.submit(add, i) for i in range(25)]
        for f in more:
            f.result()
        expect(completed).to_have_text("27")
        expect(running).to_have_text("0")
        expect(page.locator("#ov-chart svg")).to_be_visible()


def test_failed_task_in_dead_letters_retry_runs_it_again(page: Any, tmp_path: Path) -> None:
    counter = str(tmp_path / "calls")
    with ProcQueue(max_workers=1, dashboard={"port": 0}) as pool:
        assert pool.dashboard is not None
        fut = pool.submit_task(fail_times, counter, 1, "fixed")
        with pytest.raises(ValueError):
            fut.result()
        old = task_id(fut)
        page.goto(pool.dashboard.url + "#/dead-letters")
        row = page.locator(f"tr[data-letter='{old}']")
        expect(row).to_contain_text("builtins.ValueError")
        expect(page.locator("#nav-dlq")).to_have_text("1")
        row.locator("summary").click()
        expect(row.get_by_test_id("traceback")).to_contain_text("planned failure 1 of 1")
        page.get_by_test_id(f"retry-{old}").click()
        # The retry opens the new task, which runs again and completes.
        expect(page).to_have_url(re.compile(r"#/task/\d+$"))
        new = int(page.url.rsplit("/", 1)[1])
        assert new != old
        assert pool.future(new).result() == "fixed"
        expect(page.locator("#task-body .page-head .badge")).to_have_text("completed")
        assert len(pool.dlq) == 0


def test_task_filters_and_paging(page: Any) -> None:
    with ProcQueue(max_workers=2, dashboard={"port": 0}) as pool:
        assert pool.dashboard is not None
        futures = [pool.submit(add, i) for i in range(60)]
        bad = [pool.submit(raise_value_error, f"no {i}") for i in range(5)]
        named = [pool.submit(ident, i) for i in range(3)]
        for f in futures + named:
            f.result()
        for f in bad:
            with pytest.raises(ValueError):
                f.result()
        url = pool.dashboard.url
        page.goto(url + "#/tasks")
        rows = page.locator("#tasks-list tbody tr")
        expect(rows).to_have_count(50)
        expect(page.locator("#page-info")).to_have_text(f"1{DASH}50 of 68")
        newest = int(rows.first.get_attribute("data-task"))
        assert newest == task_id(named[-1])
        page.locator("#page-older").click()
        expect(page.locator("#page-info")).to_have_text(f"51{DASH}68 of 68")
        expect(rows).to_have_count(18)
        assert int(rows.first.get_attribute("data-task")) < newest
        expect(page.locator("#page-older")).to_be_disabled()
        page.locator("#page-newer").click()
        expect(page.locator("#page-info")).to_have_text(f"1{DASH}50 of 68")

        page.locator("#filter-state").select_option("failed")
        expect(rows).to_have_count(5)
        expect(page.locator("#tasks-list tbody .badge[data-state=failed]")).to_have_count(5)
        expect(rows.first).to_contain_text("builtins.ValueError: no 4")

        page.goto(url + "#/tasks")
        expect(rows).to_have_count(50)
        page.locator("#filter-name").select_option("ident")
        expect(rows).to_have_count(3)
        ids = [int(r.get_attribute("data-task")) for r in rows.all()]
        assert ids == sorted((task_id(f) for f in named), reverse=True)

        page.locator("#search-id").fill(str(task_id(futures[7])))
        page.locator("#search-id").press("Enter")
        expect(page.locator("#task-body h1")).to_have_text(f"Task #{task_id(futures[7])}")


def test_token_required_on_a_non_loopback_bind(page: Any) -> None:
    token = "browser-test-token-1234"
    with ProcQueue(max_workers=1) as pool:
        dash = pool.serve_dashboard(port=0, host="0.0.0.0", token=token)
        response = page.goto(dash.base_url)
        assert response.status == 401
        expect(page.locator("body")).to_contain_text("needs its token")
        wrong = page.goto(dash.base_url + "?token=not-the-token")
        assert wrong.status == 403
        page.goto(dash.url)  # ?token=... once: a cookie, then the token leaves the URL
        expect(page).to_have_url(dash.base_url)
        expect(page.get_by_test_id("count-completed")).to_have_text("0")
        expect(page.locator("#live")).to_have_attribute("data-mode", "live")


def test_read_only_hides_actions(page: Any) -> None:
    with ProcQueue(max_workers=1) as pool:
        dash = pool.serve_dashboard(port=0, read_only=True)
        fut = pool.submit(raise_value_error, "boom")
        with pytest.raises(ValueError):
            fut.result()
        page.goto(dash.url + "#/dead-letters")
        expect(page.locator("#readonly")).to_be_visible()
        expect(page.locator(f"tr[data-letter='{task_id(fut)}']")).to_contain_text("boom")
        expect(page.locator("#retry-all")).to_have_count(0)
        expect(page.locator("#purge-all")).to_have_count(0)
        expect(page.locator("button", has_text="Retry")).to_have_count(0)
        page.goto(dash.url + f"#/task/{task_id(fut)}")
        expect(page.get_by_test_id("traceback")).to_contain_text("boom")
        expect(page.get_by_test_id("detail-retry")).to_have_count(0)
