"""procqueue on Redis against SAQ, arq, RQ, Celery and Dramatiq on one Redis, side by side.

Four rows (``../shared/BENCHMARKS.md``, "on Redis"), each system on fresh queues of
its own, one system's workers alive at a time:

1. **enqueue**: ``--jobs`` no-op jobs enqueued one by one by one client, no worker
   running (jobs/s); checked: that many jobs wait in Redis afterwards;
2. **end to end**: ``--jobs`` no-op jobs with ``--workers`` worker processes, from
   the first enqueue to the last result seen by the client (jobs/s);
3. **round trip**: ``--trips`` jobs one after another on an idle cluster (p50, p99);
4. **CPU-bound**: ``--cpu-jobs`` jobs of ~``--cpu-ms`` ms of pure-Python work with
   ``--workers`` worker processes (jobs/s; efficiency = sequential time / (wall x
   workers), the sequential time per job the fastest of 10 runs in this process in
   the same round).
5. **reclaim** (procqueue only): two nodes with ``--lease`` s leases; node A holds
   up to ``2 x --workers`` jobs (``--prefetch`` = workers) that block there (and
   only there: ``PQPEERS_BLOCK``), node B idles; A and its workers are SIGKILLed,
   and the row times the kill to the last of A's jobs answered by B (s, and in
   leases). Checked: each answer, that no process of A gave it, and that each of
   A's jobs ran twice (attempts = 2: on A, killed, then on B), the others once.
   The peers' recovery is not comparable knob for knob (SAQ sweeps jobs by their
   own heartbeat timeouts, arq re-runs a job only once its ``in-progress`` key
   expires after the job's timeout, RQ moves jobs of dead workers to a failed
   registry, Celery's Redis transport redelivers an unacknowledged job after its
   visibility timeout, one hour by default, and only with late acks, Dramatiq
   requeues a dead worker's jobs once its heartbeat is older than the broker's
   ``heartbeat_timeout``, 60 s by default), so they are not run on this row.

The peers (``--systems``; all but ``rq-simple`` by default): SAQ, arq, RQ (and
``rq-simple``, its SimpleWorker) with ``--workers`` worker processes each; Celery
one prefork worker with ``--concurrency`` = ``--workers``; Dramatiq one ``dramatiq
--processes`` = ``--workers`` ``--threads 1``. Beside arq (redis-py < 6) pip
resolves ``celery[redis]`` to Celery 5.6 and kombu 5.6: kombu 5.7's Redis
transport needs redis-py >= 6.1, and where it meets an older one Celery is "not
run" with that reason.

``--rows`` picks rows (``enqueue,rt,e2e,cpu,reclaim``), e.g. ``--rows e2e
--systems procqueue,saq`` for a quick comparison.

Every answer is checked (``x + 1``, the CPU loop's value, the count queued): a
wrong or missing one is FAIL, never a time. Workers are the systems' own CLIs,
started as subprocesses (each in its own session, so stopping them kills every
process they started) with ``benchmarks/`` on their ``PYTHONPATH`` for the job
functions in ``_redis_peer_workers.py``. Every key a run makes contains its token
and is deleted at the end. Exit status 1 only for a FAIL or an error, never for
speed; a peer that is not installed, or whose workers cannot start here, is
"not run" with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import math
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from procqueue.bench._context import footer, loadavg
from procqueue.bench._measure import percentile
from procqueue.bench._workloads import calibrate

_log = logging.getLogger("redis_peers")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _redis_peer_workers as jobs  # noqa: E402  (benchmarks/ is not a package)

#: What each metric is, its unit, and whether more is better.
METRICS = {
    "enqueue": ("enqueue, no workers", "jobs/s", True),
    "e2e": ("end to end, no-op jobs", "jobs/s", True),
    "rt_p50": ("round trip p50, idle", "ms", False),
    "rt_p99": ("round trip p99, idle", "ms", False),
    "cpu": ("CPU-bound jobs", "jobs/s", True),
    "cpu_eff": ("CPU-bound efficiency", "%", True),
    "reclaim": ("reclaim after a node's SIGKILL", "s", False),
    "reclaim_leases": ("reclaim after a node's SIGKILL", "leases", False),
}
#: The metrics each row produces (a row fails as a whole).
ROWS = {
    "enqueue": ("enqueue",),
    "e2e": ("e2e",),
    "rt": ("rt_p50", "rt_p99"),
    "cpu": ("cpu", "cpu_eff"),
    "reclaim": ("reclaim", "reclaim_leases"),
}
#: Rows only procqueue runs (see the module's docstring).
PROCQUEUE_ONLY = ("reclaim",)
#: Issue #9's "ahead of every peer on each row": the metrics judged (the CPU
#: row's efficiency is its jobs/s ratio again).
TARGET_METRICS = ("enqueue", "e2e", "rt_p50", "rt_p99", "cpu")
#: Issue #9: end to end on no-op jobs, at least this many times SAQ's rate.
E2E_VS_SAQ = 2.0
#: Keys the peers create outside any queue's names: sets we remove our members
#: from, and a lock key that RQ's workers set (deleted only if the run made it).
SHARED_SETS = ("rq:queues", "rq:workers")
LOCK_KEYS = ("rq:clean_groups",)


class NotRun(Exception):
    """The system cannot run here (not installed, its workers do not start)."""


class Fail(Exception):
    """A wrong or missing answer, or an error: reported as FAIL."""


# ---------------------------------------------------------------------- systems


class System(ABC):
    """One contestant: how its workers start, and a client bound to one queue."""

    key: str  # the --systems name
    title: str
    package: str  # its distribution, for the version
    by_pid = False  # workers told apart by pid (one process with a pool) or by $PQPEERS_WORKER

    def __init__(self, args: argparse.Namespace, run: Run) -> None:
        self.args, self.run = args, run
        self.queue = ""

    def check_installed(self) -> None:
        """Raise :class:`NotRun` when the client library does not import."""
        try:
            __import__(self.package)
        except ImportError as e:
            raise NotRun(f"not installed ({e}); pip install {self.package}") from e

    @abstractmethod
    def worker_commands(self) -> list[list[str]]:
        """The commands that start this system's workers on ``self.queue``."""

    def worker_env(self) -> dict[str, str]:
        return {}

    @abstractmethod
    async def connect(self, queue: str) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def enqueue(self, job: str, *args: Any) -> Any:
        """Enqueue ``_redis_peer_workers.<job>(*args)``; returns the handle."""

    @abstractmethod
    async def result(self, handle: Any, deadline: float) -> Any:
        """Wait for one job's value, until ``deadline`` (``time.monotonic``)."""

    @abstractmethod
    async def queued(self) -> int:
        """Jobs waiting in Redis for a worker."""

    @abstractmethod
    def describe(self) -> str:
        """How it ran, for the report."""


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Fail("no result before the row's --timeout")
    return left


class ProcqueueSystem(System):
    key, title, package, by_pid = "procqueue", "procqueue", "procqueue", True

    def worker_commands(self) -> list[list[str]]:
        cmd = [sys.executable, "-m", "procqueue", "worker", "--broker", self.run.url]
        cmd += ["--queue", self.queue, "--workers", str(self.args.workers)]
        if self.args.pq_prefetch is not None:
            cmd += ["--prefetch", str(self.args.pq_prefetch)]
        return [cmd]

    def reclaim_node(self) -> list[str]:
        """A node of the reclaim row: ``--lease``, and a fixed prefetch (one
        job per worker) so that it holds a known number of jobs."""
        cmd = [sys.executable, "-m", "procqueue", "worker", "--broker", self.run.url]
        cmd += ["--queue", self.queue, "--workers", str(self.args.workers)]
        return [*cmd, "--lease", str(self.args.lease), "--prefetch", str(self.args.workers)]

    def worker_env(self) -> dict[str, str]:
        return {"PROCQUEUE_SECRET": self.run.secret}

    async def connect(self, queue: str) -> None:
        from procqueue import TaskQueue

        self.queue = queue
        self.q = TaskQueue(broker=self.run.url, queue=queue, secret=self.run.secret)
        await self.q.start()

    async def close(self) -> None:
        await self.q.stop()

    async def enqueue(self, job: str, *args: Any) -> Any:
        return await self.q.submit(getattr(jobs, job), *args)

    async def result(self, handle: Any, deadline: float) -> Any:
        return await self.q.result(handle, timeout=_left(deadline))

    async def queued(self) -> int:
        from procqueue.redis._keys import Keys

        return int(self.run.redis.zcard(Keys(self.queue).ready))

    def describe(self) -> str:
        prefetch = self.args.pq_prefetch
        prefetch_s = (
            f"`--prefetch {prefetch}`"
            if prefetch is not None
            else "adaptive prefetch: ~20 ms of work at its completion rate, at least one per worker"
        )
        return (
            f"one node, `python -m procqueue worker --workers {self.args.workers}` ({prefetch_s}, "
            "start method forkserver, the node's default); client `TaskQueue(broker=...)`: "
            "`await submit`, `await result` (pub/sub `done` channel, 1 s re-read fallback)"
        )


class SaqSystem(System):
    key, title, package = "saq", "SAQ", "saq"
    FUNCS = {"noop": ("saq_noop", ("x",)), "cpu_task": ("saq_cpu", ("index", "iterations"))}
    FUNCS["hello"] = ("saq_hello", ("seconds",))

    def worker_commands(self) -> list[list[str]]:
        cmd = [sys.executable, "-m", "saq", "_redis_peer_workers.saq_settings"]
        return [cmd] * self.args.workers

    async def connect(self, queue: str) -> None:
        from saq import Queue

        self.queue = queue
        self.q = Queue.from_url(self.run.url, name=queue)
        await self.q.connect()

    async def close(self) -> None:
        await self.q.disconnect()

    async def enqueue(self, job: str, *args: Any) -> Any:
        name, params = self.FUNCS[job]
        handle = await self.q.enqueue(name, **dict(zip(params, args)))
        if handle is None:
            raise Fail(f"enqueue of {name}{args} returned None")
        return handle

    async def result(self, handle: Any, deadline: float) -> Any:
        from saq.job import Status

        # refresh(until_complete) listens on the queue's pub/sub; a status
        # published between its read and its subscription would be missed,
        # so it waits at most 1 s before reading again.
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await handle.refresh(until_complete=min(1.0, _left(deadline)))
            if handle.completed:
                break
        if handle.status != Status.COMPLETE:
            raise Fail(f"job {handle.key} ended {handle.status}: {handle.error}")
        return handle.result

    async def queued(self) -> int:
        return int(await self.q.count("queued"))

    def describe(self) -> str:
        return (
            f"{self.args.workers} x `python -m saq _redis_peer_workers.saq_settings` "
            f"(concurrency {self.args.peer_jobs} each); client `Queue.enqueue`, "
            "`Job.refresh(until_complete=1.0)` (pub/sub) until the job is done: a status "
            "published between refresh's read and its subscription is missed, and costs "
            "the 1 s until the next read (~1,000 ms outliers in the round trip)"
        )

    def worker_env(self) -> dict[str, str]:
        return {"PQPEERS_JOBS": str(self.args.peer_jobs)}


class ArqSystem(System):
    key, title, package = "arq", "arq", "arq"
    FUNCS = {"noop": "arq_noop", "cpu_task": "arq_cpu", "hello": "arq_hello"}

    def worker_commands(self) -> list[list[str]]:
        cmd = [sys.executable, "-m", "arq", "_redis_peer_workers.ArqSettings"]
        return [cmd] * self.args.workers

    def worker_env(self) -> dict[str, str]:
        return {"PQPEERS_JOBS": str(self.args.peer_jobs), "PQPEERS_POLL": str(self.args.arq_poll)}

    async def connect(self, queue: str) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.queue, self.n = queue, 0
        settings = RedisSettings.from_dsn(self.run.url)
        self.pool = await create_pool(settings, default_queue_name=queue)

    async def close(self) -> None:
        await self.pool.aclose()

    async def enqueue(self, job: str, *args: Any) -> Any:
        self.n += 1
        handle = await self.pool.enqueue_job(
            self.FUNCS[job], *args, _job_id=f"{self.queue}-{self.n}"
        )
        if handle is None:
            raise Fail(f"enqueue of {job}{args} returned None (a duplicate id)")
        return handle

    async def result(self, handle: Any, deadline: float) -> Any:
        return await handle.result(timeout=_left(deadline), poll_delay=self.args.arq_poll)

    async def queued(self) -> int:
        return int(await self.pool.zcard(self.queue))

    def describe(self) -> str:
        return (
            f"{self.args.workers} x `python -m arq _redis_peer_workers.ArqSettings` (max_jobs "
            f"{self.args.peer_jobs} each, `poll_delay={self.args.arq_poll}`; arq's default is "
            f"0.5 s); client `enqueue_job`, `Job.result(poll_delay={self.args.arq_poll})` (polls)"
        )


class RqSystem(System):
    key, title, package = "rq", "RQ", "rq"
    worker_class: str | None = None  # None: RQ's default Worker (forks a work horse per job)
    forks = True  # its end-to-end row runs --rq-jobs, not --jobs

    def worker_commands(self) -> list[list[str]]:
        cmds = []
        for k in range(self.args.workers):
            cmd = [sys.executable, "-m", "rq.cli", "worker", "-u", self.run.url]
            cmd += ["-n", f"{self.queue}-w{k}"]
            if self.worker_class:
                cmd += ["-w", self.worker_class]
            cmds.append([*cmd, self.queue])
        return cmds

    async def connect(self, queue: str) -> None:
        from redis import Redis
        from rq import Queue

        self.queue, self.n = queue, 0
        self.conn = Redis.from_url(self.run.url)
        self.q = Queue(queue, connection=self.conn)

    async def close(self) -> None:
        self.conn.close()

    async def enqueue(self, job: str, *args: Any) -> Any:
        self.n += 1  # RQ's client is synchronous: it blocks this loop, as it would any
        return self.q.enqueue(getattr(jobs, job), *args, job_id=f"{self.queue}-{self.n}")

    async def result(self, handle: Any, deadline: float) -> Any:
        from rq.results import Result

        # latest_result(timeout) blocks on the job's result stream (XREAD);
        # short blocks, as redis-py 8's default socket timeout is 5 s.
        while True:
            res = handle.latest_result(timeout=max(1, min(2, math.ceil(_left(deadline)))))
            if res is not None:
                break
        if res.type != Result.Type.SUCCESSFUL:
            raise Fail(f"job {handle.id} ended {res.type.name}: {str(res.exc_string)[-200:]}")
        return res.return_value

    async def queued(self) -> int:
        return int(self.q.count)

    def describe(self) -> str:
        how = (
            f"`-w {self.worker_class}`"
            if self.worker_class
            else "the default `Worker`, which forks a work horse per job"
        )
        return (
            f"{self.args.workers} x `rq worker` ({how}); client `Queue.enqueue`, "
            "`Job.latest_result(timeout=...)` (blocking XREAD on the result stream)"
        )


class RqSimpleSystem(RqSystem):
    key, title = "rq-simple", "RQ SimpleWorker"
    worker_class = "rq.worker.SimpleWorker"
    forks = False


class CelerySystem(System):
    key, title, package, by_pid = "celery", "Celery", "celery", True

    def check_installed(self) -> None:
        """Also :class:`NotRun` when kombu's Redis transport refuses this
        redis-py: kombu 5.7 needs redis-py >= 6.1, which arq (< 6) excludes."""
        super().check_installed()
        from kombu.exceptions import VersionMismatch

        app = jobs.celery_app_for(self.run.url, f"{self.run.token}-celery-check")
        try:
            with app.connection_for_write() as conn:
                conn.default_channel  # noqa: B018  (kombu checks redis-py's version here)
        except VersionMismatch as e:
            raise NotRun(
                f"kombu {_version('kombu')}: {e} (beside arq, which needs redis<6: "
                "pip install 'celery[redis]<5.7')"
            ) from e
        finally:
            app.close()

    def worker_commands(self) -> list[list[str]]:
        cmd = [sys.executable, "-m", "celery", "-A", "_redis_peer_workers:celery_app", "worker"]
        cmd += ["-P", "prefork", "--concurrency", str(self.args.workers), "-Q", self.queue]
        cmd += ["-n", f"{self.queue}@%h", "--without-gossip", "--without-mingle"]
        return [[*cmd, "--without-heartbeat"]]

    async def connect(self, queue: str) -> None:
        self.queue = queue
        self.app = jobs.celery_app_for(self.run.url, queue)
        # Every handle of the session, kept until close(): Celery 5.6's
        # AsyncResult.__del__ unsubscribes from its result channel under
        # redis-py's pub/sub lock, and when the garbage collector runs it while
        # this thread holds that lock (inside another subscribe or
        # unsubscribe) the client deadlocks. Celery 5.7 defers that
        # unsubscribe, but needs a redis-py that arq excludes.
        self.handles: list[Any] = []

    async def close(self) -> None:
        app, self.app = getattr(self, "app", None), None
        if app is None:
            return
        consumer = app.backend.result_consumer
        with contextlib.suppress(Exception):
            consumer.stop()  # closes its pub/sub connection
        consumer._pubsub = None  # so the handles' __del__ unsubscribes nothing
        self.handles.clear()
        with contextlib.suppress(Exception):
            app.backend.client.connection_pool.disconnect()
        with contextlib.suppress(Exception):
            app.pool.force_close_all()
        app.close()

    async def enqueue(self, job: str, *args: Any) -> Any:
        # Celery's client is synchronous: it blocks this loop, as RQ's does.
        # send_task subscribes to the job's result channel before it publishes.
        handle = self.app.send_task(f"pqpeers.{job}", args=args, queue=self.queue)
        self.handles.append(handle)
        return handle

    async def result(self, handle: Any, deadline: float) -> Any:
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            value = handle.get(timeout=_left(deadline), propagate=False)
        except CeleryTimeout as e:
            raise Fail("no result before the row's --timeout") from e
        if handle.state != "SUCCESS":
            raise Fail(f"job {handle.id} ended {handle.state}: {str(value)[-200:]}")
        return value

    async def queued(self) -> int:
        # kombu's Redis transport keeps a queue's messages in a list named
        # after it (priority 0; none is set here), under the global key prefix.
        return int(self.run.redis.llen(f"{self.queue}:{self.queue}"))

    def describe(self) -> str:
        return (
            f"one `celery -A _redis_peer_workers:celery_app worker -P prefork --concurrency "
            f"{self.args.workers}` (kombu {_version('kombu')}; Celery's default prefetch "
            "multiplier 4, late acks off; "
            "`--without-gossip --without-mingle --without-heartbeat`, remote control off), "
            "broker and result backend on this Redis and db; client `send_task`, "
            "`AsyncResult.get(timeout=...)` (the result backend's pub/sub channel per job, "
            "subscribed before the job is sent; the client keeps every `AsyncResult` until "
            "the session ends, as Celery 5.6's `AsyncResult.__del__` can deadlock it when "
            "the garbage collector runs it inside a subscribe)"
        )


class DramatiqSystem(System):
    key, title, package, by_pid = "dramatiq", "Dramatiq", "dramatiq", True

    def worker_commands(self) -> list[list[str]]:
        cmd = [sys.executable, "-m", "dramatiq", "_redis_peer_workers:dramatiq_setup"]
        cmd += ["--processes", str(self.args.workers), "--threads", "1"]
        return [[*cmd, "--queues", self.queue]]

    def worker_env(self) -> dict[str, str]:
        # The prefetch: Dramatiq's default is its threads x 2, which with one
        # thread is 2 messages per process, and a consumer that has that many
        # outstanding sleeps a 5-10 ms back-off before it fetches again: the
        # end-to-end row measured that cap (~540 jobs/s for any job), not
        # Dramatiq. 16 is what its default worker (8 threads) prefetches.
        return {
            "dramatiq_worker_timeout": str(round(self.args.dramatiq_poll * 1000)),
            "dramatiq_queue_prefetch": str(self.args.dramatiq_prefetch),
        }

    async def connect(self, queue: str) -> None:
        self.queue = queue
        self.broker, self.backend, self.actors = jobs.dramatiq_broker_for(self.run.url, queue)

    async def close(self) -> None:
        broker, backend = getattr(self, "broker", None), getattr(self, "backend", None)
        self.broker = self.backend = None
        if broker is not None:
            broker.close()
        if backend is not None:
            backend.client.close()

    async def enqueue(self, job: str, *args: Any) -> Any:
        return self.actors[job].send(*args)  # synchronous, as RQ's and Celery's

    async def result(self, handle: Any, deadline: float) -> Any:
        from dramatiq.results import ResultFailure, ResultTimeout

        # A blocking BRPOPLPUSH on the job's result key, in whole seconds (the
        # backend's granularity); short blocks, so the row's deadline holds.
        while True:
            wait_ms = max(1000, min(2000, int(_left(deadline) * 1000)))
            try:
                return handle.get_result(backend=self.backend, block=True, timeout=wait_ms)
            except ResultTimeout:
                continue
            except ResultFailure as e:
                raise Fail(f"job {handle.message_id} failed: {str(e)[-200:]}") from e

    async def queued(self) -> int:
        return int(self.broker.client.llen(f"{self.broker.namespace}:{self.queue}"))

    def describe(self) -> str:
        poll_ms = self.args.dramatiq_poll * 1000
        return (
            f"one `dramatiq _redis_peer_workers:dramatiq_setup --processes {self.args.workers} "
            f"--threads 1` (`RedisBroker`; `dramatiq_queue_prefetch="
            f"{self.args.dramatiq_prefetch}`, its default worker's (8 threads x 2; with one "
            "thread its default would be 2, and a consumer holding that many backs off "
            f"5-10 ms before fetching more); `dramatiq_worker_timeout={poll_ms:g}` "
            "ms, the longest idle back-off of its consumers, which start at 5 ms and double "
            "while their queue is empty; Dramatiq's default is 1,000 ms; actors with "
            "`max_retries=0`); client `actor.send`, `Message.get_result(block=True)` (the "
            "Results middleware, `RedisBackend`: a blocking BRPOPLPUSH on the job's result key)"
        )


SYSTEMS: dict[str, type[System]] = {
    s.key: s
    for s in (
        ProcqueueSystem,
        SaqSystem,
        ArqSystem,
        RqSystem,
        RqSimpleSystem,
        CelerySystem,
        DramatiqSystem,
    )
}
DEFAULT_SYSTEMS = ("procqueue", "saq", "arq", "rq", "celery", "dramatiq")


# ---------------------------------------------------------------------- the run


@dataclass
class Run:
    """What one run shares: Redis, its token (in every key it makes), the secret."""

    url: str
    redis: Any
    token: str
    secret: str
    logdir: Path


class Workers:
    """A system's worker processes, each in its own session: :meth:`stop` ends
    every process they started (SIGTERM, then SIGKILL to the session)."""

    def __init__(self, cmds: list[list[str]], env: dict[str, str], logdir: Path, name: str):
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        for k, cmd in enumerate(cmds):
            log = logdir / f"{name}-w{k}.log"
            self.logs.append(log)
            with log.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        env={**env, "PQPEERS_WORKER": f"w{k}"},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        cwd=HERE,
                    )
                )

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs):
            if proc.poll() is not None:
                raise NotRun(f"worker exited with status {proc.returncode}: {_tail(log)}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (each system's graceful stop), then SIGKILL to every process
        left in the workers' sessions and trees after ``grace`` seconds."""
        tree: set[psutil.Process] = set()
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(proc.pid)
                tree.update([root, *root.children(recursive=True)])
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc, log in zip(self.procs, self.logs):
            if proc.poll() is None:
                _log.warning(
                    "worker %d ignored SIGTERM for %.0f s: %s", proc.pid, grace, _tail(log)
                )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the session: horses, forkservers, pools
            proc.wait()
        alive = _wait_gone(tree, 5.0)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if alive:
            _log.warning("killed %d leftover worker processes", len(alive))


def _wait_gone(procs: set[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``procs`` to end; returns those left. A
    zombie counts as ended: the orphans (forkservers, watchdogs) are PID 1's
    to reap, and on some hosts it reaps them 1.5 to 2 s late, which
    ``psutil.wait_procs`` sat out on every stop."""
    deadline = time.monotonic() + timeout
    left = list(procs)
    while True:
        still = []
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
        left = still
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)  # polling exits, as wait_procs does


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " / ".join(text[-lines:])[-400:].replace("|", "/") or "(empty log)"


def delete_keys(r: Any, pattern: str) -> int:
    keys = list(r.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])
    return len(keys)


@dataclass
class Sizes:
    jobs: int
    rq_jobs: int
    trips: int
    cpu_jobs: int


class Bench:
    """Rounds of sessions: per round, per system (order rotated), the enqueue row
    on a queue no worker serves, then workers on a fresh queue for the rest."""

    def __init__(self, args: argparse.Namespace, run: Run) -> None:
        self.args, self.run = args, run
        self.systems = {k: SYSTEMS[k](args, run) for k in args.systems}
        self.values: dict[str, dict[str, list[float]]] = {
            k: {m: [] for m in METRICS} for k in self.systems
        }
        self.failed: dict[str, dict[str, str]] = {k: {} for k in self.systems}
        self.not_run: dict[str, str] = {}
        self.iterations, self.cpu_ms = calibrate(args.cpu_ms)
        self.spin = jobs.cpu_task(0, self.iterations)
        self.job_seconds: list[float] = []  # the sequential time per CPU job, per round
        self.first_round = 0 if args.warm_up else 1  # round 0 is the warm-up

    async def main(self) -> None:
        for key, system in self.systems.items():
            try:
                system.check_installed()
            except NotRun as e:
                self.not_run[key] = str(e)
        a = self.args
        warm = Sizes(min(a.jobs, 200), min(a.rq_jobs, 100), min(a.trips, 20), min(a.cpu_jobs, 10))
        full = Sizes(a.jobs, a.rq_jobs, a.trips, a.cpu_jobs)
        keys = list(self.systems)
        for rnd in range(self.first_round, a.reps + 1):
            sizes = full if rnd else warm
            # The fastest of 10: on a shared machine noise only ever adds time.
            job_s = min(self._sequential_job() for _ in range(10))
            if rnd:
                self.job_seconds.append(job_s)
            order = keys[rnd % len(keys) :] + keys[: rnd % len(keys)]
            _log.info("round %d%s: %s", rnd, " (warm-up)" * (rnd == 0), ", ".join(order))
            for key in order:
                if key not in self.not_run:
                    await self._session(key, rnd, sizes, job_s)
            if rnd and "reclaim" in a.rows and "procqueue" in keys:
                await self._reclaim_row(rnd)  # slow (a lease or so): no warm-up

    def _sequential_job(self) -> float:
        t0 = time.perf_counter()
        jobs.cpu_task(0, self.iterations)
        return time.perf_counter() - t0

    def _record(self, key: str, rnd: int, row: str, values: dict[str, float]) -> None:
        shown = ", ".join(f"{m} {v:,.1f}" for m, v in values.items())
        _log.info("  %-10s round %d %-8s %s", key, rnd, row, shown)
        if rnd:
            for m, v in values.items():
                self.values[key][m].append(v)

    def _fail(self, key: str, rnd: int, row: str, e: BaseException) -> None:
        why = f"round {rnd}: {type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")[:300]
        _log.error("FAIL %s %s: %s", key, row, why)
        for m in ROWS[row]:
            self.failed[key][m] = why

    async def _session(self, key: str, rnd: int, sizes: Sizes, job_s: float) -> None:
        system, failed = self.systems[key], self.failed[key]
        deadline = time.monotonic() + self.args.timeout
        base = f"{self.run.token}-{key}-{rnd}"
        if "enqueue" not in failed and "enqueue" in self.args.rows:
            try:
                await system.connect(f"{base}-enq")
                try:
                    rate = await self._enqueue_row(system, sizes.jobs)
                finally:
                    await system.close()
                self._record(key, rnd, "enqueue", {"enqueue": rate})
            except Exception as e:
                self._fail(key, rnd, "enqueue", e)
            finally:
                delete_keys(self.run.redis, f"*{base}-enq*")
        rows = [r for r in ("rt", "e2e", "cpu") if r in self.args.rows and ROWS[r][0] not in failed]
        if not rows:
            return
        queue = f"{base}-run"
        workers: Workers | None = None
        try:
            await system.connect(queue)
            env = {**os.environ, **system.worker_env(), **self._env(queue)}
            workers = Workers(system.worker_commands(), env, self.run.logdir, f"{key}-{rnd}")
            t0 = time.monotonic()
            try:
                await self._ready(system, workers, deadline)
                _log.info(
                    "  %-10s round %d workers answered in %.1f s", key, rnd, time.monotonic() - t0
                )
            except NotRun as e:
                if key == "procqueue" or rnd > self.first_round:  # later rounds: FAIL
                    raise Fail(str(e)) from e
                self.not_run[key] = f"its workers do not start here: {e}"
                _log.warning("%s not run: %s", key, self.not_run[key])
                return
            for i, row in enumerate(rows):
                try:
                    values = await self._row(system, row, sizes, job_s, deadline)
                    workers.check_alive()
                except NotRun as e:  # a worker died: this row and the rest fail
                    for rest in rows[i:]:
                        self._fail(key, rnd, rest, e)
                    break
                except Exception as e:
                    self._fail(key, rnd, row, e)
                else:
                    self._record(key, rnd, row, values)
        except Exception as e:
            for row in rows:
                if ROWS[row][0] not in failed:
                    self._fail(key, rnd, row, e)
        finally:
            if workers is not None:
                t0 = time.monotonic()
                workers.stop()
                _log.info(
                    "  %-10s round %d workers stopped in %.1f s", key, rnd, time.monotonic() - t0
                )
            with contextlib.suppress(Exception):
                await system.close()
            delete_keys(self.run.redis, f"*{queue}*")

    def _env(self, queue: str) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
        return {"PYTHONPATH": path, "PQPEERS_URL": self.run.url, "PQPEERS_QUEUE": queue}

    async def _ready(self, system: System, workers: Workers, deadline: float) -> None:
        """Short sleeps until every worker process has answered (untimed)."""
        want = self.args.workers
        seen: set[Any] = set()
        limit = min(deadline, time.monotonic() + self.args.start_timeout)
        while len(seen) < want:
            workers.check_alive()
            if time.monotonic() > limit:
                raise NotRun(f"{len(seen)} of {want} workers answered within --start-timeout")
            handles = [await system.enqueue("hello", 0.05) for _ in range(12 * want)]
            for h in handles:
                try:
                    label, pid = await system.result(h, limit)
                except Exception as e:
                    # A job caught by a worker's start-up (SAQ's first sweep aborts
                    # jobs another worker has just taken) is not a verdict yet.
                    _log.info("  %s: a start-up job failed (%s); trying again", system.key, e)
                    continue
                seen.add(pid if system.by_pid else label)

    async def _row(
        self, system: System, row: str, sizes: Sizes, job_s: float, deadline: float
    ) -> dict[str, float]:
        enqueue, result = system.enqueue, system.result
        if row == "rt":
            trips = []
            for i in range(sizes.trips):
                t0 = time.perf_counter()
                got = await result(await enqueue("noop", i), deadline)
                trips.append(time.perf_counter() - t0)
                check(got == i + 1, f"round trip {i} answered {got!r}, expected {i + 1}")
            trips.sort()
            return {"rt_p50": percentile(trips, 50) * 1e3, "rt_p99": percentile(trips, 99) * 1e3}
        if row == "e2e":
            n = sizes.rq_jobs if getattr(system, "forks", False) else sizes.jobs
            t0 = time.perf_counter()
            handles = [await enqueue("noop", i) for i in range(n)]
            for i, h in enumerate(handles):
                got = await result(h, deadline)
                check(got == i + 1, f"job {i} answered {got!r}, expected {i + 1}")
            return {"e2e": n / (time.perf_counter() - t0)}
        n, iters = sizes.cpu_jobs, self.iterations
        t0 = time.perf_counter()
        handles = [await enqueue("cpu_task", i, iters) for i in range(n)]
        for i, h in enumerate(handles):
            got = await result(h, deadline)
            check(got == i + self.spin, f"CPU job {i} answered {got!r}, expected {i + self.spin}")
        wall = time.perf_counter() - t0
        return {"cpu": n / wall, "cpu_eff": 100 * n * job_s / (wall * self.args.workers)}

    async def _reclaim_row(self, rnd: int) -> None:
        """Two nodes; SIGKILL the one holding the jobs; time until the other
        has answered every one of them (see the module's docstring)."""
        system = self.systems["procqueue"]
        assert isinstance(system, ProcqueueSystem)
        if "reclaim" in self.failed["procqueue"]:
            return
        queue = f"{self.run.token}-reclaim-{rnd}"
        deadline = time.monotonic() + self.args.timeout
        nodes: list[Workers] = []
        try:
            await system.connect(queue)
            env = {**os.environ, **system.worker_env(), **self._env(queue)}
            logdir = self.run.logdir
            doomed = {**env, "PQPEERS_BLOCK": "1"}  # its jobs block until it is killed
            a = Workers([system.reclaim_node()], doomed, logdir, f"procqueue-{rnd}-reclaim-a")
            nodes.append(a)
            await self._ready(system, a, deadline)
            # A holds up to one running and one prefetched job per worker (it
            # claims in batches: maybe fewer); B takes whatever A left.
            n = 2 * self.args.workers
            handles = [await system.q.submit(jobs.reclaimed, i, max_retries=1) for i in range(n)]
            await self._leased_to(queue, handles, a.procs[0].pid, deadline)
            b = Workers([system.reclaim_node()], env, logdir, f"procqueue-{rnd}-reclaim-b")
            nodes.append(b)
            await self._ready(system, b, deadline)  # A's workers are busy: B answers these
            held = await self._leased_to(queue, handles, a.procs[0].pid, deadline)
            victims = {a.procs[0].pid}
            with contextlib.suppress(psutil.Error):
                victims |= {p.pid for p in psutil.Process(a.procs[0].pid).children(recursive=True)}
            t0 = time.perf_counter()
            for pid in victims:  # the node and every process it started: a machine lost
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for h in held:
                got = await system.result(h, deadline)
            took = time.perf_counter() - t0
            for i, h in enumerate(handles):
                got = await system.result(h, deadline)
                check(
                    isinstance(got, tuple) and got[0] == i + 1,
                    f"reclaim job {i} answered {got!r}, expected ({i + 1}, pid)",
                )
                check(got[1] not in victims, f"job {i} answered by a process of the killed node")
                attempts = system.q.get_task_status(h).attempts
                want = 2 if h in held else 1  # A's: run there (killed), then on B
                check(attempts == want, f"job {i} ran {attempts} times, expected {want}")
            b.check_alive()
            values = {"reclaim": took, "reclaim_leases": took / self.args.lease}
            self._record("procqueue", rnd, "reclaim", values)
        except Exception as e:
            self._fail("procqueue", rnd, "reclaim", e)
        finally:
            for w in nodes:
                w.stop()
            with contextlib.suppress(Exception):
                await system.close()
            delete_keys(self.run.redis, f"*{queue}*")

    async def _leased_to(
        self, queue: str, ids: list[int], node_pid: int, deadline: float
    ) -> list[int]:
        """Those of ``ids`` leased to the node with ``node_pid`` (its owner is
        ``host:pid:...``), once it holds at least one per worker and that set
        has not changed for 0.3 s (short sleeps)."""
        import json

        from procqueue.redis._keys import Keys

        keys, tag = Keys(queue), f":{node_pid}:"
        limit = min(deadline, time.monotonic() + 30.0)
        last: list[int] = []
        since = time.monotonic()
        while True:
            metas = [json.loads(m) if m else {} for m in self.run.redis.hmget(keys.meta, ids)]
            held = [
                tid
                for tid, m in zip(ids, metas)
                if m.get("state") == "running" and tag in m.get("owner", "")
            ]
            if held != last:
                last, since = held, time.monotonic()
            elif len(held) >= self.args.workers and time.monotonic() - since >= 0.3:
                return held
            if time.monotonic() > limit:
                states = [(m.get("state"), m.get("owner")) for m in metas]
                raise Fail(f"node A did not take the reclaim jobs: {states}")
            await asyncio.sleep(0.02)

    async def _enqueue_row(self, system: System, n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            await system.enqueue("noop", i)
        rate = n / (time.perf_counter() - t0)
        waiting = await system.queued()
        check(waiting == n, f"{n} jobs enqueued, but {waiting} wait in Redis")
        return rate


def check(ok: bool, message: str) -> None:
    if not ok:
        raise Fail(message)


# ---------------------------------------------------------------------- report


def spread(values: Sequence[float], fmt: str) -> str:
    """``median (min to max)`` of the timed rounds."""
    if not values:
        return "—"
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:{fmt}} ({lo:{fmt}} to {hi:{fmt}})"


def report(bench: Bench, args: argparse.Namespace, started: datetime, run: Run) -> bool:
    """Print the markdown report; True when anything failed."""
    keys = list(bench.systems)
    peers = [k for k in keys if k != "procqueue"]
    titles = {k: bench.systems[k].title for k in keys}
    v, failed, not_run = bench.values, bench.failed, bench.not_run

    shown = [m for m in METRICS if any(m in ROWS[r] for r in args.rows)]
    only = {m for r in PROCQUEUE_ONLY for m in ROWS[r]}

    def cell(k: str, m: str, fmt: str) -> str:
        if k in not_run:
            return f"not run: {not_run[k]}"
        if m in only and k != "procqueue":
            return "(procqueue only)"
        if m in failed[k]:
            return f"FAIL ({failed[k][m]})"
        return spread(v[k][m], fmt)

    rq_note = ""
    if "rq" in keys and args.rq_jobs != args.jobs:
        rq_note = f" (RQ: {args.rq_jobs:,}, `--rq-jobs`)"
    rounds = (
        "after a warm-up round"
        if args.warm_up
        else "and no warm-up round (`--quick`: a smoke run, not figures to quote)"
    )
    against = f" against {_and([titles[k] for k in peers])}" if peers else ""
    print(f"# procqueue on Redis{against} ({args.workers} worker processes each)\n")
    print(
        f"One Redis ({run.redis.info('server')['redis_version']}, `{args.redis}`), one client in "
        f"this process, one system's workers alive at a time. Rows: enqueue {args.jobs:,} no-op "
        f"jobs one by one, no worker running; end to end {args.jobs:,} no-op jobs{rq_note}, first "
        f"enqueue to last result; {args.trips} sequential round trips on an idle cluster; "
        f"{args.cpu_jobs} CPU-bound jobs of {bench.cpu_ms:.1f} ms (sequential, here); "
        f"reclaim: two procqueue nodes with {args.lease:g} s leases, node A SIGKILLed while "
        f"it holds {2 * args.workers} jobs, to the last of them answered by node B. Rows run: "
        f"{', '.join(args.rows)}. "
        f"{args.reps} rounds {rounds}, the system order rotated; fresh queues and workers per "
        "round. Checked: every result, and the count queued.\n"
    )
    if peers and "procqueue" in keys:
        print("## procqueue against each peer (ratio, > 1: procqueue better)\n")
        print(
            "Per round, procqueue's value over the peer's (jobs/s) or the peer's over "
            "procqueue's (milliseconds); median (min to max) over the rounds.\n"
        )
        print("| row | " + " | ".join(f"vs {titles[k]}" for k in peers) + " |")
        print("|---|" + "---|" * len(peers))
        for m, (label, _unit, _higher) in METRICS.items():
            if m == "cpu_eff" or m not in shown or m in only:
                continue  # the same ratio as the CPU row's jobs/s
            cells = []
            for k in peers:
                if k in not_run or m in failed[k] or m in failed["procqueue"]:
                    cells.append("not run" if k in not_run else "FAIL")
                    continue
                ratios = round_ratios(v, k, m)
                cells.append(spread(ratios, ".2f") + "x" if ratios else "—")
            print(f"| {label} | " + " | ".join(cells) + " |")
        print()
    print("## Absolute numbers\n\nMedian (min to max) over the rounds.\n")
    print("| row | unit | " + " | ".join(titles[k] for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for m, (label, unit, _) in METRICS.items():
        if m not in shown:
            continue
        fmt = ",.0f" if unit == "jobs/s" else ".1f"
        print(f"| {label} | {unit} | " + " | ".join(cell(k, m, fmt) for k in keys) + " |")
    targets = target_lines(v, failed, not_run, titles, shown)
    if targets:
        print("\nPer round, side by side; median of the rounds' ratios.\n")
        print("\n".join(targets))
    secs = [s * 1e3 for s in bench.job_seconds]
    print(
        f"\nCPU job: `cpu_task(i, {bench.iterations:,})`; the efficiency's reference is the "
        "fastest of 10 sequential runs in this process in the same round: "
        f"{spread(secs, '.1f')} ms per job over the rounds.\n"
    )
    print("How each system ran:\n")
    for k, system in bench.systems.items():
        print(f"- **{titles[k]}** {_version(system.package)}: {system.describe()}.")
    print(
        "\nEvery system's workers log at their CLI's default level, to files (arq and RQ "
        "write lines per job at it). The client, the workers and Redis share this machine's "
        "cores, and so do other programs: see the load below."
    )
    print(
        f"\nPackages: redis-py {_version('redis')}, cloudpickle {_version('cloudpickle')}, "
        f"psutil {_version('psutil')}; load average at the end "
        + " ".join(f"{x:.2f}" for x in (loadavg() or []))
        + "."
    )
    print(footer(started))
    return any(failed.values())


def round_ratios(values: dict[str, dict[str, list[float]]], k: str, m: str) -> list[float]:
    """procqueue against ``k`` on ``m``, per round (> 1: procqueue better)."""
    higher = METRICS[m][2]
    pairs = zip(values["procqueue"][m], values[k][m])
    return [(a / b if higher else b / a) for a, b in pairs if a > 0 and b > 0]


def target_lines(
    values: dict[str, dict[str, list[float]]],
    failed: dict[str, dict[str, str]],
    not_run: dict[str, str],
    titles: dict[str, str],
    shown: Sequence[str],
) -> list[str]:
    """Issue #9's targets, one line each: met, NOT met, or not measured (and
    why), judged on the median of the per-round ratios. A peer that FAILed
    leaves "ahead of every peer" not measured unless procqueue is behind
    another; a peer that did not run is named, and the rest decide."""
    peers = [k for k in titles if k != "procqueue"]
    lines = []
    for m in (m for m in TARGET_METRICS if m in shown):
        goal = f"Target: ahead of every peer on {METRICS[m][0]}:"
        if "procqueue" not in titles or "procqueue" in not_run or m in failed["procqueue"]:
            why = failed.get("procqueue", {}).get(m) or not_run.get("procqueue") or "not run"
            lines.append(f"{goal} not measured (procqueue: {why}).")
            continue
        behind: list[str] = []
        ahead: list[str] = []
        gaps: list[str] = []
        unknown = False
        for k in peers:
            ratios = round_ratios(values, k, m) if k not in not_run and m not in failed[k] else []
            if k in not_run:
                gaps.append(f"{titles[k]} not run")
            elif m in failed[k] or not ratios:
                gaps.append(f"{titles[k]} {'FAILed' if m in failed[k] else 'has no figure'}")
                unknown = True
            else:
                r = statistics.median(ratios)
                (ahead if r > 1 else behind).append(f"{r:.2f}x vs {titles[k]}")
        verdict = "NOT met" if behind else "not measured" if unknown or not ahead else "met"
        lines.append(f"{goal} {verdict} ({'; '.join([*behind, *ahead, *gaps]) or 'no peer'}).")
    if "e2e" in shown:
        lines.append(_e2e_vs_saq(values, failed, not_run, titles))
    return lines


def _e2e_vs_saq(
    values: dict[str, dict[str, list[float]]],
    failed: dict[str, dict[str, str]],
    not_run: dict[str, str],
    titles: dict[str, str],
) -> str:
    goal = f"Target: end to end on no-op jobs >= {E2E_VS_SAQ:g}x SAQ:"
    why = None
    if "saq" not in titles or "procqueue" not in titles:
        why = "SAQ and procqueue must both be in --systems"
    elif "saq" in not_run or "procqueue" in not_run:
        why = f"not run: {not_run.get('saq') or not_run.get('procqueue')}"
    elif "e2e" in failed["saq"] or "e2e" in failed["procqueue"]:
        why = "a FAIL: " + (failed["procqueue"].get("e2e") or failed["saq"]["e2e"])
    ratios = [] if why else round_ratios(values, "saq", "e2e")
    if why or not ratios:
        return f"{goal} not measured ({why or 'no round measured both'})."
    r = statistics.median(ratios)
    return f"{goal} {'met' if r >= E2E_VS_SAQ else 'NOT met'} ({r:.2f}x)."


def _and(names: Sequence[str]) -> str:
    """``A, B and C``."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


# ---------------------------------------------------------------------- main


def cleanup(r: Any, token: str, locks_before: set[str]) -> None:
    """Delete every key with the run's token, our members of the peers' shared
    sets, and their lock keys if this run created them."""
    n = delete_keys(r, f"*{token}*")
    for key in SHARED_SETS:
        ours = [m for m in r.smembers(key) if token.encode() in m]
        if ours:
            r.srem(key, *ours)
    for key in LOCK_KEYS:
        if key not in locks_before:
            r.delete(key)
    left = list(r.scan_iter(match=f"*{token}*", count=1000))
    if left:
        _log.warning("keys left behind: %s", left[:10])
    _log.info("deleted %d keys of run %s", n, token)


async def amain(args: argparse.Namespace, started: datetime) -> int:
    import redis

    r = redis.Redis.from_url(args.redis)
    try:
        r.ping()
    except redis.RedisError as e:
        _log.error("Redis at %s does not answer: %s", args.redis, e)
        return 1
    token = f"pqpeers-{secrets.token_hex(3)}"
    locks_before = {k for k in LOCK_KEYS if r.exists(k)}
    logdir = Path(tempfile.mkdtemp(prefix="redis_peers-"))
    run = Run(args.redis, r, token, secrets.token_hex(32), logdir)
    _log.info("run %s: worker logs in %s", token, logdir)
    try:
        bench = Bench(args, run)
        await bench.main()
        failed = report(bench, args, started, run)
    finally:
        cleanup(r, token, locks_before)
        r.close()
    if failed:
        _log.error("FAIL: see the table; worker logs kept in %s", logdir)
    else:
        for log in logdir.iterdir():
            log.unlink()
        logdir.rmdir()
    return 1 if failed else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL (db 0 here)")
    p.add_argument(
        "--systems", default=",".join(DEFAULT_SYSTEMS), help=f"subset of {','.join(SYSTEMS)}"
    )
    p.add_argument("--jobs", type=int, help="no-op jobs, enqueue and end to end (10000)")
    p.add_argument("--rq-jobs", type=int, help="RQ's end-to-end jobs (1000: it forks per job)")
    p.add_argument("--trips", type=int, help="sequential round trips (200)")
    p.add_argument("--cpu-jobs", type=int, help="CPU-bound jobs (200)")
    p.add_argument("--cpu-ms", type=float, default=20.0, help="CPU job length, ms (20)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per system (2)")
    p.add_argument("--reps", type=int, default=3, help="timed rounds after the warm-up (>= 3)")
    p.add_argument(
        "--quick", action="store_true", help="small sizes, no warm-up round: a smoke run (~60 s)"
    )
    p.add_argument("--pq-prefetch", type=int, help="procqueue node --prefetch (default: its own)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)} (all)")
    p.add_argument("--lease", type=float, default=3.0, help="reclaim row: node --lease, s (3)")
    p.add_argument("--peer-jobs", type=int, default=10, help="SAQ concurrency / arq max_jobs (10)")
    p.add_argument("--arq-poll", type=float, default=0.01, help="arq poll_delay, s (0.01)")
    p.add_argument(
        "--dramatiq-poll",
        type=float,
        default=0.01,
        help="Dramatiq's longest idle back-off (dramatiq_worker_timeout), s (0.01)",
    )
    p.add_argument(
        "--dramatiq-prefetch",
        type=int,
        default=16,
        help="messages each Dramatiq process fetches ahead (dramatiq_queue_prefetch; 16)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a session may take")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds for workers to start")
    args = p.parse_args(argv)
    quick = {"jobs": 500, "rq_jobs": 100, "trips": 30, "cpu_jobs": 20}
    full = {"jobs": 10_000, "rq_jobs": 1_000, "trips": 200, "cpu_jobs": 200}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.warm_up = not args.quick
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not args.rows or any(r not in ROWS for r in args.rows):
        p.error(f"unknown rows {args.rows}; choose from {', '.join(ROWS)}")
    if args.lease <= 0:
        p.error("--lease must be positive")
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or not args.systems:
        p.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    if (
        args.reps < 3
        or args.workers < 1
        or min(args.jobs, args.rq_jobs, args.trips, args.cpu_jobs) < 1
    ):
        p.error("need --reps >= 3, --workers >= 1 and sizes >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for name in ("saq", "arq", "rq", "celery", "kombu", "dramatiq", "procqueue"):
        # the clients' per-job lines would be timed
        logging.getLogger(name).setLevel(logging.WARNING)
    # SIGTERM unwinds like Ctrl-C, so every worker is stopped and every key deleted.
    signal.signal(signal.SIGTERM, _interrupt)
    _log.info("command: %s", shlex.join([sys.executable, *sys.argv]))
    return asyncio.run(amain(args, datetime.now(timezone.utc)))


if __name__ == "__main__":
    sys.exit(main())
