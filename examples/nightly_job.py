"""A nightly job on a cron schedule (README, "Schedules").

    python examples/nightly_job.py           # a short demo, then exits
    python examples/nightly_job.py --serve   # keeps running until Ctrl-C

``nightly_report`` runs at 02:30 every night, Berlin time: the cron
expression is read on the wall clock in that zone, so the job stays at 02:30
across daylight saving time. Nobody wants to wait for 02:30 in a demo, so it
also runs the report once now (``run_now``) and adds a ``heartbeat`` every
second, and exits once two heartbeats have come back. Each run is an
ordinary task: its result is ``pool.future(task_id).result()``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from datetime import datetime, timezone

from procqueue import ProcQueue, Schedule

log = logging.getLogger("nightly_job")


def nightly_report(dataset: str) -> str:
    sales = [19.99 * (i % 7) for i in range(10_000)]  # the real work would go here
    return f"{dataset}: {len(sales)} rows, {sum(sales):,.2f} EUR, by worker {os.getpid()}"


def heartbeat() -> str:
    return f"alive at {datetime.now(timezone.utc):%H:%M:%S.%f}"


def wait_for_runs(schedule: Schedule, n: int, timeout: float) -> list[int]:
    """The ids of the first ``n`` runs ``schedule`` fires (within ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while len(schedule.task_ids) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{schedule.name} fired {schedule.runs} of {n} runs")
        time.sleep(0.05)
    return schedule.task_ids[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description="A nightly job on a cron schedule.")
    parser.add_argument("--serve", action="store_true", help="keep running until Ctrl-C")
    serve = parser.parse_args().serve

    with ProcQueue(max_workers=2) as pool:
        nightly = pool.schedule(
            nightly_report, "sales", cron="30 2 * * *", tz="Europe/Berlin", name="nightly-report"
        )
        assert nightly.next_run is not None
        log.info("%s: next run at %s", nightly.name, nightly.next_run.isoformat())
        if serve:
            log.info("serving; Ctrl-C to stop")
            threading.Event().wait()

        now_id = nightly.run_now()  # its cron ticks do not move
        log.info("run now: %s", pool.future(now_id).result(timeout=30))

        beat = pool.schedule(heartbeat, every=1)
        for task_id in wait_for_runs(beat, 2, timeout=30):
            log.info("%s: %s", beat.name, pool.future(task_id).result(timeout=30))
        assert nightly.next_run is not None
        log.info(
            "2 heartbeats received; %s still due at %s", nightly.name, nightly.next_run.isoformat()
        )
        # Leaving the block stops the pool, and with it every schedule.


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except KeyboardInterrupt:
        pass
