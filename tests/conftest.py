"""Shared fixtures: gates for synchronising with tasks, and a leak check that
runs after every test (no worker, grandchild or zombie may outlive a queue)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _tasks import Gate


def _helper(proc: psutil.Process) -> bool:
    """multiprocessing's own long-lived helpers (forkserver, resource tracker)."""
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return True
    return "forkserver" in cmd or "resource_tracker" in cmd


def stray_processes() -> list[psutil.Process]:
    """Our descendants other than multiprocessing's helpers. The helpers are
    our direct children; a forkserver's own children (workers) carry its
    command line too, so they are judged by their parent, not their name."""
    me = psutil.Process()
    out = []
    for child in me.children(recursive=True):
        try:
            helper = child.ppid() == me.pid and _helper(child)
            if child.status() == psutil.STATUS_ZOMBIE or not helper:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="session", autouse=True)
def _warm_multiprocessing_helpers() -> None:
    """Start the forkserver once, up front, so its fds are not taken for a leak."""
    from multiprocessing import forkserver

    forkserver.ensure_running()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    yield
    strays = stray_processes()
    for p in strays:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not strays, f"processes left behind: {strays}"
    extra = [
        t
        for t in threading.enumerate()
        if t.ident not in threads_before and t.name.startswith("procqueue")
    ]
    assert not extra, f"threads left behind: {extra}"
    if fds_before is not None:
        fds_after = len(os.listdir("/proc/self/fd"))
        assert fds_after <= fds_before, f"fds leaked: {fds_before} -> {fds_after}"


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path)
    yield g
    g.close()


@pytest.fixture
def counter(tmp_path: Path) -> str:
    return str(tmp_path / "calls")


#: The Redis the broker tests use (each test takes its own queue name).
REDIS_URL = os.environ.get("PROCQUEUE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def require_redis() -> object:
    """A connected redis-py client, or skip; with ``PROCQUEUE_REQUIRE_SERVICES=1``
    (CI) a missing Redis fails the test instead."""
    from procqueue.redis._protocol import connect

    try:
        client = connect(REDIS_URL)
        client.ping()
        return client
    except Exception as e:
        if os.environ.get("PROCQUEUE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Redis is required (PROCQUEUE_REQUIRE_SERVICES=1) but {REDIS_URL}: {e}")
        pytest.skip(f"no Redis at {REDIS_URL}: {e}")


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A ``Broker`` on a queue of its own (deleted afterwards), signing with the
    test module's ``SECRET``; skips (or, in CI, fails) without Redis."""
    import uuid

    from procqueue.redis._protocol import Broker
    from procqueue.redis._signing import Signer

    client: Any = require_redis()
    b = Broker(client, f"t-{uuid.uuid4().hex[:12]}", Signer([request.module.SECRET]), result_ttl=60)
    yield b
    keys = list(client.scan_iter(match=f"{b.keys.tag}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
