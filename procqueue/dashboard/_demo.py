"""``python -m procqueue --dashboard``: a queue kept busy with a plausible mix
of work, its dashboard open, until Ctrl-C (or ``--seconds``).

The work: image resizing (CPU), page fetches (I/O, sometimes failing and
retried), invoices whose parsing sometimes fails for good (dead letters with
tracebacks), e-mails held to 5 a second by a rate limit, a small pipeline of
dependent tasks, a report on a schedule that reports its progress, and now
and then a worker that crashes and is replaced. Task functions live here, in
an importable module, so workers load them by reference.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import threading
import time
from typing import Any

__all__ = ["main"]

_log = logging.getLogger("procqueue.demo")


def resize_image(photo_id: int, width: int) -> tuple[int, int]:
    """A few to a few tens of milliseconds of arithmetic."""
    total = 0
    for i in range(width * 40):
        total += i * i % 7
    return photo_id, total


def fetch_page(url: str, flaky: float) -> int:
    """Waits like a network call; fails now and then (retried)."""
    time.sleep(0.02 + (hash(url) % 60) / 1000)
    if random.random() < flaky:
        raise ConnectionError(f"connection reset by peer while fetching {url}")
    return len(url) * 1024


def parse_invoice(invoice_id: int, total: str) -> float:
    """Fails for good on a malformed total (a dead letter with its traceback)."""
    time.sleep(0.005)
    return _parse_amount(total)


def _parse_amount(text: str) -> float:
    if not text.replace(".", "", 1).isdigit():
        raise ValueError(f"malformed invoice total {text!r}")
    return float(text)


def send_email(to: str, subject: str) -> str:
    time.sleep(0.01)
    return f"sent {subject!r} to {to}"


def load_batch(batch: int) -> list[int]:
    time.sleep(0.05)
    return list(range(batch * 10, batch * 10 + 10))


def clean(rows: list[int], keep_odd: bool) -> list[int]:
    time.sleep(0.03)
    return [r for r in rows if (r % 2 == 1) == keep_odd]


def merge(left: list[int], right: list[int]) -> int:
    return sum(left) + sum(right)


def build_report(region: str, steps: int = 20) -> str:
    """Reports its progress as it goes (``procqueue.report_progress``)."""
    import procqueue

    for step in range(steps):
        time.sleep(0.1)  # the demo's stand-in for real work
        procqueue.report_progress(step + 1, steps, f"region {region}: section {step + 1}")
    return f"report for {region}: {steps} sections"


def native_extension_call(seed: int) -> int:
    """Crashes its worker once in a while, as a segfault would."""
    if seed % 5 == 0:
        os._exit(139)
    time.sleep(0.05)
    return seed


def _feed(pool: Any, stop: threading.Event, rng: random.Random) -> None:
    from procqueue import result_of

    n = 0
    while not stop.is_set():
        n += 1
        for _ in range(rng.randint(4, 9)):
            pool.submit_task(resize_image, rng.randint(1, 99_999), rng.randint(50, 600),
                             priority=rng.choice((0, 0, 0, 5)))  # fmt: skip
        for _ in range(rng.randint(1, 4)):
            url = f"https://example.com/item/{rng.randint(1, 10_000)}"
            pool.submit_task(fetch_page, url, 0.08, max_retries=2)
        if rng.random() < 0.15:  # a partner API that is mostly down: some give up
            url = f"https://partner-api.example.net/v2/orders/{rng.randint(1, 10_000)}"
            pool.submit_task(fetch_page, url, 0.6, max_retries=2)
        if rng.random() < 0.5:
            inv = rng.randint(1000, 9999)
            total = f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"
            if rng.random() < 0.08:
                total = rng.choice(("12,50", "N/A", "1.2.3"))
            pool.submit_task(parse_invoice, inv, total)
        if rng.random() < 0.6:
            pool.submit_task(send_email, f"user{rng.randint(1, 500)}@example.com",
                             "Your order shipped", limit_key="smtp")  # fmt: skip
        if n % 15 == 0:
            batch = pool.submit_task(load_batch, n)
            odd = pool.submit_task(clean, result_of(batch), True)
            even = pool.submit_task(clean, result_of(batch), False)
            pool.submit_task(merge, result_of(odd), result_of(even))
        if n % 150 == 0:
            pool.submit_task(native_extension_call, rng.randint(0, 4) * 5, max_retries=1)
        stop.wait(0.2)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m procqueue --dashboard",
        description="Run a demo workload with the live dashboard open.",
    )
    p.add_argument("--dashboard", action="store_true", help="open the dashboard (this demo)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (others need --token)")
    p.add_argument("--token", default=None, help="require this token on every request")
    p.add_argument("--read-only", action="store_true", help="hide retry, purge, pause...")
    p.add_argument("--hide-args", action="store_true", help="do not show task arguments")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--seed", type=int, default=7, help="seed of the workload's randomness")
    return p


def main(argv: list[str]) -> int:
    """Run the demo until Ctrl-C or ``--seconds``; prints the dashboard's URL."""
    from procqueue import Concurrency, ProcQueue, RateLimit, RetryPolicy

    from ._options import DashboardOptions

    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("procqueue.dashboard").setLevel(logging.INFO)
    options = DashboardOptions(
        port=args.port,
        host=args.host,
        token=args.token,
        read_only=args.read_only,
        show_args=not args.hide_args,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    retry = RetryPolicy(backoff_base=0.3, backoff_factor=2.0, jitter=0.2)
    limits: dict[str, RateLimit | Concurrency] = {"smtp": RateLimit("5/s"), "db": Concurrency(1)}
    with ProcQueue(max_workers=args.workers, retry=retry, key_limits=limits) as pool:
        dash = pool.serve_dashboard(
            options.port, host=options.host, token=options.token,
            read_only=options.read_only, show_args=options.show_args,
        )  # fmt: skip
        print(f"procqueue dashboard: {dash.url}  (Ctrl-C to stop)", flush=True)
        pool.schedule(build_report, "emea", every=8.0, name="nightly-report", overlap="skip")
        pool.schedule(send_email, "ops@example.com", "heartbeat", every=3.0, name="heartbeat",
                      limit_key="smtp")  # fmt: skip
        rng = random.Random(args.seed)
        feeder = threading.Thread(
            target=_feed, args=(pool, stop, rng), name="demo-feeder", daemon=True
        )
        feeder.start()
        try:
            stop.wait(args.seconds)
        except KeyboardInterrupt:
            print()
        finally:
            stop.set()
            feeder.join()
            for schedule in pool.schedules():
                schedule.cancel()
    return 0
