"""Nodes started through the CLI (``python -m procqueue worker``) serving one
Redis queue, and ``TaskQueue(broker=...)`` clients: results, global priority
order, a node SIGKILLed mid-run, cancel of a running task, the secret rule.

Real Redis and real processes; each test has its own queue and deletes its
keys. Without Redis the tests skip, unless ``PROCQUEUE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from _tasks import (
    Gate,
    add,
    fail_times,
    gated,
    gated_pid,
    hang,
    raise_value_error,
    record_order,
    report_then_gate,
)
from conftest import REDIS_URL as URL
from conftest import require_redis

from procqueue import (
    InvalidArgumentError,
    ProcQueue,
    RateLimit,
    RemoteTraceback,
    TaskCancelledError,
    TaskNotFoundError,
    TaskQueue,
    task_id,
)
from procqueue.redis._client import ClusterStats

SECRET = "n" * 40
TESTS = str(Path(__file__).parent)


class Cluster:
    """Nodes of one queue, as processes; stopped and cleaned up at the end."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.queue = f"n-{uuid.uuid4().hex[:10]}"
        self.nodes: list[subprocess.Popen[bytes]] = []

    def node(
        self, workers: int = 1, lease: float = 5.0, prefetch: int = 0, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PROCQUEUE_SECRET=SECRET, PYTHONPATH=TESTS)
        cmd = [sys.executable, "-m", "procqueue", "worker", "--broker", URL, "--queue", self.queue]
        cmd += ["--workers", str(workers), "--lease", str(lease), "--prefetch", str(prefetch)]
        if log is None:
            proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        else:
            with log.open("wb") as err:
                proc = subprocess.Popen(cmd, env=env, stderr=err)
        self.nodes.append(proc)
        return proc

    def queue_client(self) -> TaskQueue:
        return TaskQueue(broker=URL, queue=self.queue, secret=SECRET)

    def close(self) -> None:
        for proc in self.nodes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
                proc.wait()
        keys = list(self.client.scan_iter(match=f"{{pq:{self.queue}}}*", count=1000))
        if keys:
            self.client.delete(*keys)
        self.client.close()


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster(require_redis())
    yield c
    c.close()


def test_three_nodes_serve_one_queue_and_report_in_stats(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.node(workers=1, prefetch=2)

    async def main() -> None:
        async with cluster.queue_client() as q:
            ids = [await q.submit(add, i, 1000) for i in range(30)]
            assert [await q.result(t, timeout=30) for t in ids] == [i + 1000 for i in range(30)]
            stats = q.get_stats()
            assert isinstance(stats, ClusterStats)
            assert len(stats.nodes) == 3 and all(n.workers == 1 for n in stats.nodes)
            assert all(len(n.processes) == 1 and n.heartbeat_age < 60 for n in stats.nodes)
            assert stats.pending == stats.running == 0
            st = q.get_task_status(ids[0])
            assert st.state == "completed" and st.attempts == 1
            # Once ended, the status still says what it was submitted with,
            # when it ran and on which node (as while it was queued).
            tid = await q.submit(add, 1, 2, priority=5, max_retries=3)
            assert await q.result(tid, timeout=30) == 3
            st = q.get_task_status(tid)
            assert (st.priority, st.max_retries, st.attempts) == (5, 3, 1)
            assert st.started_at is not None and st.finished_at is not None
            assert 0 < st.submitted_at <= st.started_at <= st.finished_at
            assert st.worker_pid in {node.pid for node in cluster.nodes}

    asyncio.run(main())


def test_priority_then_fifo_holds_across_the_queue(cluster: Cluster) -> None:
    async def main() -> None:
        async with cluster.queue_client() as q:
            prios = [0, 3, 1, 3, 0, 2, 1]
            ids = [await q.submit(record_order, n, priority=p) for n, p in enumerate(prios)]
            cluster.node(workers=1, prefetch=0)  # starts after everything is queued
            results = [await q.result(t, timeout=30) for t in ids]
            ran = [tag for tag, _ in sorted(results, key=lambda r: r[1])]
            assert ran == [1, 3, 5, 2, 6, 0, 4]

    asyncio.run(main())


def test_a_failure_comes_back_as_the_task_s_own_exception_after_its_retries(
    cluster: Cluster,
) -> None:
    cluster.node(workers=1)

    async def main() -> None:
        async with cluster.queue_client() as q:
            tid = await q.submit(raise_value_error, "nope", max_retries=1)
            with pytest.raises(ValueError, match="nope") as info:
                await q.result(tid, timeout=30)
            # The worker's traceback rides along, as on a local queue.
            assert isinstance(info.value.__cause__, RemoteTraceback)
            assert "raise_value_error" in str(info.value.__cause__)
            st = q.get_task_status(tid)
            assert st.state == "failed" and st.attempts == 2
            assert st.worker_pid == cluster.nodes[0].pid  # the node it last ran on
            assert st.error is not None and st.error.message == "ValueError: nope"
            assert "raise_value_error" in st.error.traceback

    asyncio.run(main())


def test_a_node_killed_mid_run_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    first = cluster.node(workers=2, lease=1.0)

    async def main() -> None:
        async with cluster.queue_client() as q:
            ids = [await q.submit(gated, gate.paths, n, max_retries=2) for n in range(2)]
            for _ in ids:
                gate.wait_started()
            _kill_tree(first.pid)  # SIGKILL: the node and its workers, mid-run
            cluster.node(workers=2, lease=1.0)  # reclaims the expired leases
            for _ in ids:
                gate.wait_started()  # each ran again on the new node
            gate.release(2)
            assert [await q.result(t, timeout=30) for t in ids] == [0, 1]
            assert [q.get_task_status(t).attempts for t in ids] == [2, 2]

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_cancel_kills_a_running_task_on_its_node(cluster: Cluster, tmp_path: Path) -> None:
    cluster.node(workers=1, lease=1.0)
    gate = Gate(tmp_path)

    async def main() -> None:
        async with cluster.queue_client() as q:
            running = await q.submit(gated, gate.paths)
            pid = gate.wait_started()
            queued = await q.submit(hang)
            assert q.cancel(queued) and q.cancel(running)
            for tid in (queued, running):
                with pytest.raises(TaskCancelledError):
                    await q.result(tid, timeout=30)
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            assert await q.result(await q.submit(add, 1, 1), timeout=30) == 2  # serves on

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_no_secret_no_broker(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROCQUEUE_SECRET", raising=False)
    with pytest.raises(InvalidArgumentError, match="PROCQUEUE_SECRET"):
        TaskQueue(broker=URL, queue=cluster.queue)
    env = {k: v for k, v in os.environ.items() if k != "PROCQUEUE_SECRET"}
    cmd = [sys.executable, "-m", "procqueue", "worker", "--broker", URL, "--queue", cluster.queue]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, timeout=60)
    assert done.returncode == 2 and b"PROCQUEUE_SECRET" in done.stderr


def test_a_frozen_node_s_late_result_is_fenced_off(cluster: Cluster, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    log = tmp_path / "frozen.log"
    frozen = cluster.node(workers=1, lease=1.0, log=log)

    async def main() -> None:
        async with cluster.queue_client() as q:
            tid = await q.submit(gated_pid, gate.paths, max_retries=2)
            first_pid = gate.wait_started()
            os.kill(frozen.pid, signal.SIGSTOP)  # the node stops renewing; its worker runs on
            cluster.node(workers=1, lease=1.0)
            second_pid = gate.wait_started()  # reclaimed and run again elsewhere
            gate.release(2)
            assert await q.result(tid, timeout=30) == second_pid != first_pid
            os.kill(frozen.pid, signal.SIGCONT)  # it wakes up with a stale result
            deadline = asyncio.get_running_loop().time() + 20
            while b"dropped: its lease was lost" not in log.read_bytes():
                assert asyncio.get_running_loop().time() < deadline, log.read_text()
                await asyncio.sleep(0.05)
            assert await q.result(tid) == second_pid  # one recorded outcome: the fresh one
            assert q.get_task_status(tid).attempts == 2

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_a_task_longer_than_its_lease_is_not_redelivered(cluster: Cluster, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    cluster.node(workers=2, lease=0.6)

    async def main() -> None:
        async with cluster.queue_client() as q:
            tid = await q.submit(gated, gate.paths, "done", max_retries=3)
            gate.wait_started()
            await asyncio.sleep(3.0)  # the scenario itself: five leases pass while it runs
            with pytest.raises(TimeoutError):
                gate.wait_started(timeout=0.2)  # nobody started it a second time
            gate.release()
            assert await q.result(tid, timeout=30) == "done"
            assert q.get_task_status(tid).attempts == 1

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_procqueue_broker_client_and_idempotency_keys(cluster: Cluster) -> None:
    cluster.node(workers=2, prefetch=4)
    with ProcQueue(broker=URL, queue=cluster.queue, secret=SECRET) as pool:
        assert list(pool.map(add, range(20), range(20))) == [2 * i for i in range(20)]
        first = pool.submit_task(add, 1, 2, key="order-17")
        again = pool.submit_task(add, 100, 200, key="order-17")
        assert task_id(first) == task_id(again)
        assert again.result(timeout=30) == 3
        with pytest.raises(ValueError, match="bad"):
            pool.submit(raise_value_error, "bad").result(timeout=30)


class PrivateRedis:
    """A redis-server of this test's own (AOF, fsync always), to restart."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
        cmd += ["--save", ""]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from procqueue.redis._protocol import connect

        client = connect(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "redis-server did not come up"
                time.sleep(0.02)  # polling a server that is starting, with a deadline
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


def test_redis_restarted_mid_run_loses_nothing(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        require_redis()  # fails under PROCQUEUE_REQUIRE_SERVICES=1, skips otherwise
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    gate = Gate(tmp_path)
    env = dict(os.environ, PROCQUEUE_SECRET=SECRET, PYTHONPATH=TESTS)
    cmd = [sys.executable, "-m", "procqueue", "worker", "--broker", server.url, "--queue", "r"]
    node = subprocess.Popen(
        [*cmd, "--workers", "3", "--lease", "10", "--prefetch", "0"],
        env=env,
        stderr=subprocess.DEVNULL,
    )

    async def main() -> None:
        async with TaskQueue(broker=server.url, queue="r", secret=SECRET) as q:
            held = [await q.submit(gated, gate.paths, n) for n in range(2)]
            gate.wait_started()
            gate.wait_started()
            delayed = await q.submit(add, 1, 100, delay=1.0)
            # Mid-run: two workers busy, the third idle in BLPOP, a delayed
            # task in Redis. The AOF brings every key back.
            server.stop()
            server.start()
            after = [await q.submit(add, n, 200) for n in range(3)]  # the node must recover
            gate.release(2)
            assert [await q.result(t, timeout=60) for t in held] == [0, 1]
            assert await q.result(delayed, timeout=60) == 101
            assert [await q.result(t, timeout=60) for t in after] == [200, 201, 202]

    try:
        asyncio.run(main())
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_tree(node.pid)
            node.wait()
        gate.close()
        server.stop()


def test_a_cron_tick_runs_once_across_three_nodes(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.node(workers=1)

    async def main() -> None:
        async with cluster.queue_client() as q:
            sched = await q.schedule(add, 1, 1, cron="* * * * * *", tz="UTC")
            t0 = time.time()
            deadline = t0 + 30
            while len(sched.task_ids) < 3:
                assert time.time() < deadline, sched.skipped
                await asyncio.sleep(0.05)
            ids = sched.task_ids
            elapsed = time.time() - t0
            assert len(ids) == len(set(ids)) and len(ids) <= elapsed + 1  # one run per tick
            assert [await q.result(t, timeout=30) for t in ids] == [2] * len(ids)
            assert sched.runs >= len(ids) and sched.next_run is not None
            assert [s.name for s in q.schedules()] == ["add"]
            sched.cancel()
            assert q.schedules() == []

    asyncio.run(main())


def test_dead_letters_on_the_broker_list_requeue_and_purge(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.node(workers=1)

    async def main() -> None:
        async with cluster.queue_client() as q:
            flaky = await q.submit(fail_times, str(tmp_path / "c"), 1, "second time", max_retries=0)
            doomed = await q.submit(raise_value_error, "never", max_retries=0)
            for tid in (flaky, doomed):
                with pytest.raises(ValueError):
                    await q.result(tid, timeout=30)
            letters = {d.task_id: d for d in q.dlq.list()}
            assert set(letters) == {flaky, doomed} and len(q.dlq) == 2
            assert letters[doomed].error is not None
            assert letters[doomed].error.message == "ValueError: never"
            assert "raise_value_error" in letters[doomed].error.traceback
            new = q.dlq.requeue(flaky)
            assert new != flaky and await q.result(new, timeout=30) == "second time"
            assert q.dlq.purge() == 1 and len(q.dlq) == 0
            with pytest.raises(TaskNotFoundError):
                q.dlq.requeue(doomed)

    asyncio.run(main())


def test_a_task_whose_module_is_missing_on_the_node_fails_cleanly(
    cluster: Cluster, tmp_path: Path
) -> None:
    (tmp_path / "client_only_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))  # importable here, not on the node
    try:
        import client_only_mod

        cluster.node(workers=1)

        async def main() -> None:
            async with cluster.queue_client() as q:
                tid = await q.submit(client_only_mod.triple, 2, max_retries=1)
                with pytest.raises(Exception, match="client_only_mod"):
                    await q.result(tid, timeout=30)
                assert q.get_task_status(tid).attempts == 2  # retried, then dead-lettered
                assert await q.result(await q.submit(add, 2, 2), timeout=30) == 4  # serves on

        asyncio.run(main())
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("client_only_mod", None)


def test_a_rate_limit_holds_across_nodes(cluster: Cluster) -> None:
    for _ in range(2):
        cluster.node(workers=2, prefetch=2)

    async def main() -> None:
        limits = {"api": RateLimit("10/s")}
        async with TaskQueue(
            broker=URL, queue=cluster.queue, secret=SECRET, key_limits=limits
        ) as q:
            # Both nodes serving first: a worker still booting would make the
            # free tasks late for reasons that have nothing to do with limits.
            for tid in [await q.submit(os.getpid) for _ in range(8)]:
                await q.result(tid, timeout=30)
            before = time.time()  # no slot can come earlier than the first submit
            keyed = [await q.submit(time.time, limit_key="api") for _ in range(12)]
            free = [await q.submit(time.time) for _ in range(4)]
            starts = [await q.result(t, timeout=30) for t in keyed]
            free_done = max([await q.result(t, timeout=30) for t in free])
            # Slots are 0.1 s apart from the first claim on: the i-th start
            # cannot come before the i-th slot (starts may be late, as a
            # worker boots, never early).
            assert all(s - before >= i * 0.1 - 0.005 for i, s in enumerate(sorted(starts)))
            assert free_done < max(starts)  # other work did not queue behind the key
            with pytest.raises(InvalidArgumentError, match="no limit"):
                await q.submit(time.time, limit_key="nope")

    asyncio.run(main())


def test_wait_as_completed_and_join_on_a_broker_client(cluster: Cluster) -> None:
    cluster.node(workers=2, prefetch=2)

    async def main() -> None:
        async with cluster.queue_client() as q:
            ids = [await q.submit(add, i, 1) for i in range(6)]
            done, not_done = await q.wait(ids[:3], timeout=30)
            assert done == set(ids[:3]) and not not_done
            seen = [tid async for tid in q.as_completed(ids[3:], timeout=30)]
            assert sorted(seen) == sorted(ids[3:])
            more = [await q.submit(add, i, 2) for i in range(4)]
            await asyncio.wait_for(q.join(), 30)
            assert all(q.get_task_status(t).state == "completed" for t in more)

    asyncio.run(main())


def test_report_progress_on_a_node_reaches_the_client_s_task_status(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.node(workers=1)
    gate = Gate(tmp_path)

    async def main() -> None:
        async with cluster.queue_client() as q:
            tid = await q.submit(report_then_gate, gate.paths, 3)
            gate.wait_started()  # its first report was sent before this
            assert q.get_task_status(tid).state == "running"
            # Worker -> node's engine -> node's reporter -> Redis: poll the
            # observable status, with a deadline.
            deadline = time.monotonic() + 30
            while (progress := q.get_task_status(tid).progress) is None:
                assert time.monotonic() < deadline, "no progress reached the client"
                await asyncio.sleep(0.01)
            assert (progress.done, progress.total, progress.message) == (1.0, 3, "first")
            assert progress.fraction == pytest.approx(1 / 3)
            gate.release()
            sent = await q.result(tid, timeout=30)
            assert sent >= 1
            final = q.get_task_status(tid)
            assert final.state == "completed"
            # The final report (done >= total) is always sent ahead of the
            # result, and the node writes progress before it reports outcomes.
            assert final.progress is not None and final.progress.done == 3

    try:
        asyncio.run(main())
    finally:
        gate.close()
