"""Task functions and worker settings for ``redis_peers.py``, importable by every
system's workers (the script puts ``benchmarks/`` on their ``PYTHONPATH``).

Each system gets the same two jobs in the shape it wants: the no-op
(``x + 1``) and the CPU-bound ``cpu_task(index, iterations)`` (``procqueue.bench``'s
pure-Python loop, so its answer can be checked). procqueue and RQ run plain
functions; arq wants ``async def f(ctx, *args)``; SAQ ``async def f(ctx, **kwargs)``;
Celery and Dramatiq run the plain functions too, registered as tasks (``pqpeers.noop``)
and actors (``pqpeers_noop``) on an app or broker built for one queue.
The CPU job blocks the asyncio workers' event loop while it runs, as CPU work in
an ``async def`` does: one job at a time per process.

The worker settings are read from the environment when a worker imports them,
so one module serves every queue a run creates:

``PQPEERS_URL``      the Redis URL
``PQPEERS_QUEUE``    the queue name (unique per run)
``PQPEERS_JOBS``     SAQ ``concurrency`` / arq ``max_jobs`` per process (default 10,
                     both systems' own default)
``PQPEERS_POLL``     arq ``poll_delay`` in seconds (arq's default is 0.5)
``dramatiq_worker_timeout``  Dramatiq's own variable: its consumers' longest idle
                     back-off, in ms (its default is 1000)
``PQPEERS_BLOCK``    ``1`` on the reclaim row's doomed node: its ``reclaimed`` jobs block

Start them as ``saq _redis_peer_workers.saq_settings``,
``arq _redis_peer_workers.ArqSettings``, ``celery -A _redis_peer_workers:celery_app
worker`` and ``dramatiq _redis_peer_workers:dramatiq_setup``. The client side
builds the same app or broker with :func:`celery_app_for` and
:func:`dramatiq_broker_for`. Every Redis key either makes starts with the queue's
name (Celery: ``global_keyprefix``; Dramatiq: the broker's and the results'
``namespace``), so the script's cleanup by the run's token finds them all.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

__all__ = [  # and ArqSettings and celery_app, built on demand by __getattr__
    "arq_cpu",
    "arq_hello",
    "arq_noop",
    "celery_app_for",
    "cpu_task",
    "dramatiq_broker_for",
    "dramatiq_setup",
    "hello",
    "noop",
    "reclaimed",
    "saq_cpu",
    "saq_hello",
    "saq_noop",
    "saq_settings",
]


def cpu_task(index: int, iterations: int) -> int:
    """``index + spin(iterations)``: pure-Python CPU work with a checkable answer."""
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return index + acc


def noop(x: int) -> int:
    """The no-op job: ``x + 1`` (procqueue, RQ)."""
    return x + 1


def reclaimed(x: int) -> tuple[int, int]:
    """The reclaim row's job: ``(x + 1, pid)`` at once, except on a node
    started with ``PQPEERS_BLOCK=1`` (the one the row SIGKILLs while it holds
    the job), where it blocks; so the row times the reclaim, not the job."""
    if os.environ.get("PQPEERS_BLOCK") == "1":
        time.sleep(3600.0)  # until the node and its workers are killed
        raise RuntimeError("the reclaim row's node was not killed")
    return x + 1, os.getpid()


def hello(seconds: float) -> tuple[str, int]:
    """Sleep, then say who ran it: ``($PQPEERS_WORKER, pid)``; the script runs
    these until every worker process has answered, before it times anything."""
    time.sleep(seconds)
    return os.environ.get("PQPEERS_WORKER", "?"), os.getpid()


async def arq_hello(ctx: dict[str, Any], seconds: float) -> tuple[str, int]:
    """:func:`hello` for arq."""
    await asyncio.sleep(seconds)
    return os.environ.get("PQPEERS_WORKER", "?"), os.getpid()


async def saq_hello(ctx: dict[str, Any], *, seconds: float) -> tuple[str, int]:
    """:func:`hello` for SAQ."""
    await asyncio.sleep(seconds)
    return os.environ.get("PQPEERS_WORKER", "?"), os.getpid()


async def arq_noop(ctx: dict[str, Any], x: int) -> int:
    """:func:`noop` for arq."""
    return x + 1


async def arq_cpu(ctx: dict[str, Any], index: int, iterations: int) -> int:
    """:func:`cpu_task` for arq."""
    return cpu_task(index, iterations)


async def saq_noop(ctx: dict[str, Any], *, x: int) -> int:
    """:func:`noop` for SAQ (arguments by keyword only)."""
    return x + 1


async def saq_cpu(ctx: dict[str, Any], *, index: int, iterations: int) -> int:
    """:func:`cpu_task` for SAQ."""
    return cpu_task(index, iterations)


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise RuntimeError(f"{name} is not set: start this worker from redis_peers.py")
    return value


def saq_settings() -> dict[str, Any]:
    """SAQ's worker settings (SAQ calls a callable it is given)."""
    from saq import Queue

    return {
        "queue": Queue.from_url(_env("PQPEERS_URL"), name=_env("PQPEERS_QUEUE")),
        "functions": [saq_noop, saq_cpu, saq_hello],
        "concurrency": int(_env("PQPEERS_JOBS", "10")),
    }


#: The plain job functions Celery and Dramatiq register, by the name the script uses.
PLAIN_JOBS = {"noop": noop, "cpu_task": cpu_task, "hello": hello}


def celery_app_for(url: str, queue: str) -> Any:
    """A Celery app on one queue: broker and result backend on ``url`` (the
    same Redis and db), every key prefixed with ``queue:``, and the jobs
    registered as ``pqpeers.<job>``. Remote control (a ``pidbox`` queue per
    worker, outside any prefix) is off; the worker runs without gossip,
    mingle and heartbeats (events none of the rows use)."""
    from celery import Celery

    app = Celery("pqpeers", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        broker_transport_options={"global_keyprefix": f"{queue}:"},
        result_backend_transport_options={"global_keyprefix": f"{queue}:"},
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
    )
    for name, fn in PLAIN_JOBS.items():
        # shared=False: registered on this app only, not on every app made later
        app.task(name=f"pqpeers.{name}", shared=False)(fn)
    return app


def dramatiq_broker_for(url: str, queue: str) -> tuple[Any, Any, dict[str, Any]]:
    """``(broker, results backend, {job: actor})`` for one queue: a
    ``RedisBroker`` on ``url`` with namespace ``<queue>-dramatiq``, the Results
    middleware on a ``RedisBackend`` (namespace ``<queue>-results``, readable
    keys), and the jobs as actors ``pqpeers_<job>`` on ``queue``, no retries
    (Dramatiq's default is 20: a failed job is a failure at once here)."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    backend = RedisBackend(url=url, namespace=f"{queue}-results", use_namespace_prefix_keys=True)
    broker = RedisBroker(url=url, namespace=f"{queue}-dramatiq")
    broker.add_middleware(Results(backend=backend))
    actors = {
        name: dramatiq.actor(
            fn,
            broker=broker,
            actor_name=f"pqpeers_{name}",
            queue_name=queue,
            max_retries=0,
            store_results=True,
        )
        for name, fn in PLAIN_JOBS.items()
    }
    return broker, backend, actors


def dramatiq_setup() -> None:
    """Dramatiq's CLI calls this (``dramatiq _redis_peer_workers:dramatiq_setup``)
    in each worker process, then serves the broker it set."""
    import dramatiq

    broker, _backend, _actors = dramatiq_broker_for(_env("PQPEERS_URL"), _env("PQPEERS_QUEUE"))
    dramatiq.set_broker(broker)


def __getattr__(name: str) -> Any:
    # arq reads a class's attributes, and Celery's ``-A module:app`` an
    # attribute, so build them when the worker asks for them (after the
    # environment is set), not at import.
    if name == "celery_app":
        app = celery_app_for(_env("PQPEERS_URL"), _env("PQPEERS_QUEUE"))
        globals()["celery_app"] = app  # one app, however often it is asked for
        return app
    if name == "ArqSettings":
        from arq.connections import RedisSettings

        return type(
            "ArqSettings",
            (),
            {
                "functions": [arq_noop, arq_cpu, arq_hello],
                "redis_settings": RedisSettings.from_dsn(_env("PQPEERS_URL")),
                "queue_name": _env("PQPEERS_QUEUE"),
                "max_jobs": int(_env("PQPEERS_JOBS", "10")),
                "poll_delay": float(_env("PQPEERS_POLL", "0.5")),
                "handle_signals": True,
            },
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
