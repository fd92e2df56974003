"""Log records emitted inside tasks reach the coordinator's handlers."""

from __future__ import annotations

import logging
import os

import pytest
from _tasks import log_warning

from procqueue import ProcQueue


def test_worker_log_records_reach_the_coordinator(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with ProcQueue(max_workers=1) as pool:
        assert pool.submit(log_warning, "hello from the worker").result() == "hello from the worker"
    records = [r for r in caplog.records if r.name == "tests.in_worker"]
    assert [r.getMessage() for r in records] == ["from task: hello from the worker"]
    assert records[0].process != os.getpid()  # the record keeps the worker's pid


def test_forwarding_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with ProcQueue(max_workers=1, forward_logs=False) as pool:
        pool.submit(log_warning, "quiet").result()
    assert not [r for r in caplog.records if r.name == "tests.in_worker"]


def test_retries_are_logged_at_info(caplog: pytest.LogCaptureFixture, counter: str) -> None:
    from _tasks import fail_times

    from procqueue import RetryPolicy

    caplog.set_level(logging.INFO, logger="procqueue")
    with ProcQueue(max_workers=1, retry=RetryPolicy(backoff_base=0)) as pool:
        assert pool.submit_task(fail_times, counter, 1, max_retries=1).result() == "ok"
    retry_lines = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retry_lines) == 1 and retry_lines[0].levelno == logging.INFO
