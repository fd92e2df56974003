"""``python -m procqueue``: a few-second demo of what a script user gets
(``python -m procqueue worker --broker ...`` runs a Redis node instead;
``python -m procqueue --dashboard`` runs a longer demo with the live dashboard).

Mixed priorities, a task that fails twice and then succeeds (watch the backoff
in the log), a task whose worker dies and is replaced, a timeout, and the final
statistics table.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

from . import ProcQueue, RetryPolicy, TaskTimeoutError, WorkerCrashedError, task_id

_log = logging.getLogger("procqueue.demo")


def cpu_work(n: int) -> int:
    """About a few milliseconds of pure-Python arithmetic."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def flaky(counter_path: str) -> str:
    """Fails on its first two calls, succeeds on the third."""
    with open(counter_path, "a") as f:
        f.write("x")
    calls = os.path.getsize(counter_path)
    if calls <= 2:
        raise ConnectionError(f"transient failure #{calls}")
    return f"succeeded on attempt {calls}"


def die() -> None:
    """Kills its own worker process, as a segfault or the OOM killer would."""
    os._exit(13)


def stuck() -> None:
    """Never returns."""
    while True:
        time.sleep(3600)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
    )
    retry = RetryPolicy(backoff_base=0.2, backoff_factor=2.0, jitter=0.1)
    with tempfile.TemporaryDirectory() as tmp, ProcQueue(max_workers=2, retry=retry) as pool:
        _log.info("2 workers up (start method %s)", pool.start_method)
        low = [pool.submit_task(cpu_work, 200_000, priority=0) for _ in range(6)]
        high = [pool.submit_task(cpu_work, 200_000, priority=10) for _ in range(3)]
        flaky_f = pool.submit_task(flaky, os.path.join(tmp, "calls"), max_retries=3)
        crash_f = pool.submit_task(die, max_retries=0)
        slow_f = pool.submit_task(stuck, timeout=0.5)

        for f in high + low:
            f.result()
        order = sorted(high + low, key=lambda f: pool.get_task_status(task_id(f)).started_at or 0)
        prios = [pool.get_task_status(task_id(f)).priority for f in order]
        _log.info("start order by priority: %s", prios)
        _log.info("flaky task: %s", flaky_f.result())
        try:
            crash_f.result()
        except WorkerCrashedError as e:
            _log.info("crashed task reported: %s", e)
        try:
            slow_f.result()
        except TaskTimeoutError as e:
            _log.info("timed-out task reported: %s", e)
        _log.info("the pool still serves: cpu_work(10) = %d", pool.submit(cpu_work, 10).result())
        print()
        print(pool.get_stats().format_table())
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``python -m procqueue`` runs the demo; ``python -m procqueue worker ...``
    (or the ``procqueue`` command) runs a Redis node, ``... dashboard
    --broker ...`` the dashboard of a Redis queue."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        from .redis._cli import main as worker_main

        return worker_main(argv[1:])
    if argv[:1] == ["dashboard"]:  # the live dashboard of a Redis queue (--help)
        from .dashboard._redis_serve import main as cluster_dashboard_main

        return cluster_dashboard_main(argv[1:])
    if argv[:1] == ["top"]:  # a live terminal view of a queue (procqueue top --help)
        from ._top import main as top_main

        return top_main(argv[1:])
    if "--dashboard" in argv:  # the demo with the live dashboard (--help for options)
        from .dashboard._demo import main as dashboard_main

        return dashboard_main(argv)
    if argv:  # --help, or a typo: say what there is, never run the demo instead
        out = sys.stdout if argv[0] in ("-h", "--help") else sys.stderr
        print(_USAGE, file=out)
        return 0 if out is sys.stdout else 2
    return main()


_USAGE = """usage: procqueue [--dashboard] | worker ... | dashboard ... | top ...

  procqueue                 the demo: a pool, a crash, a timeout, its stats
  procqueue --dashboard     the demo with the live dashboard (--dashboard --help)
  procqueue worker ...      a node serving a Redis queue (worker --help)
  procqueue dashboard ...   the live dashboard of a Redis queue (dashboard --help)
  procqueue top ...         a live terminal view of a queue (top --help)"""


if __name__ == "__main__":
    sys.exit(cli())
