"""What does a live dashboard cost? Tiny-task throughput with the dashboard
open, side by side with none, in the same run (issue #10's target: < 3 %).

Tiny tasks (``add_one``, defined in this ``__main__``) are submitted one by
one and then gathered, under three variants on the same pool: ``none``;
``dashboard``, a dashboard serving nobody (its 1 Hz sampler only); ``live``,
the dashboard with a Server-Sent Events client connected (4 snapshots a
second), ``GET /api/stats`` polled at ``--hz`` and ``/metrics`` scraped
every ``--scrape`` seconds, from a process of their own, as a browser tab,
``procqueue top`` and Prometheus would. Each round opens a fresh pool and runs the three in an
order rotated by one each round; round 0 is the warm-up. Exit status 1 only
for a wrong answer or an error, never for speed.

    python benchmarks/dashboard_overhead.py [--tasks 20000] [--reps 5]
"""

from __future__ import annotations

import argparse
import http.client
import logging
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import TimeoutError as FuturesTimeout
from datetime import datetime, timezone

from procqueue import ProcQueue
from procqueue.bench._context import footer

_log = logging.getLogger("dashboard_overhead")
VARIANTS = ("none", "dashboard", "live")
Metrics = dict[str, float]


def add_one(x: int) -> int:
    """The tiny task, defined in ``__main__`` (it travels by value under cloudpickle)."""
    return x + 1


class Client(threading.Thread):
    """An SSE reader counting events, or a poller of ``path`` at ``hz``."""

    def __init__(self, host: str, port: int, path: str, hz: float | None) -> None:
        super().__init__(name=f"client {path}", daemon=True)
        self.host, self.port, self.path, self.hz = host, port, path, hz
        self.stop = threading.Event()
        self.count = 0
        self.error: Exception | None = None
        self._conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        try:
            if self.hz is None:
                self._stream()
            else:
                self._poll(self.hz)
        except Exception as e:
            if not self.stop.is_set():
                self.error = e

    def _stream(self) -> None:
        self._conn = conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request("GET", self.path)
        resp = conn.getresponse()
        while not self.stop.is_set():
            line = resp.readline()
            if not line:
                return
            if line.startswith(b"event: "):
                self.count += 1

    def _poll(self, hz: float) -> None:
        url = f"http://{self.host}:{self.port}{self.path}"
        due = time.perf_counter()
        while not self.stop.wait(max(0.0, due - time.perf_counter())):
            with urllib.request.urlopen(url, timeout=30) as r:
                r.read()
            self.count += 1
            due += 1.0 / hz

    def close(self) -> None:
        self.stop.set()
        if self._conn is not None and self._conn.sock is not None:
            self._conn.sock.close()  # unblock the stream's read
        self.join()


def client_main(host: str, port: int, hz: float, scrape: float) -> int:
    """``--client``: the live variant's clients, in a process of their own (as a
    browser, ``procqueue top`` and Prometheus would be): prints ``ready``, then,
    once stdin closes, ``<events> <stats polls>`` counted since ``go``."""
    clients = [
        Client(host, port, "/api/events", None),
        Client(host, port, "/api/stats", hz),
        Client(host, port, "/metrics", 1.0 / scrape),
    ]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 10
    while clients[0].count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # set-up only: wait until the stream is open
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    base = [c.count for c in clients]
    sys.stdin.readline()  # EOF: the timed run is over
    counts = [c.count - b for c, b in zip(clients, base)]
    for c in clients:
        c.close()
    errors = [c.error for c in clients if c.error is not None]
    print(f"{counts[0]} {counts[1]}" if not errors else f"error {errors[0]!r}", flush=True)
    return 0


def run_variant(pool: ProcQueue, variant: str, args: argparse.Namespace) -> Metrics:
    n = args.tasks
    dash = pool.serve_dashboard(port=0) if variant != "none" else None
    proc = None
    if dash is not None and variant == "live":
        cmd = [sys.executable, __file__, "--client", dash.host, str(dash.port)]
        cmd += ["--hz", str(args.hz), "--scrape", str(args.scrape)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the client process did not connect")
        proc.stdin.write("go\n")
        proc.stdin.flush()
    futures = []
    counts = ""
    try:
        t0 = time.perf_counter()
        submit = pool.submit
        futures = [submit(add_one, i) for i in range(n)]
        deadline = t0 + args.timeout
        try:
            got = sum(f.result(max(0.0, deadline - time.perf_counter())) for f in futures)
        except FuturesTimeout:
            raise FuturesTimeout(f"not done within --timeout {args.timeout:g} s") from None
        wall = time.perf_counter() - t0
    finally:
        if proc is not None:
            counts, _ = proc.communicate(timeout=60)  # closes stdin: the run is over
        if dash is not None:
            dash.close()
        for f in futures:
            f.cancel()
    if got != n * (n + 1) // 2:
        raise AssertionError(f"sum {got}, expected {n * (n + 1) // 2}")
    out: Metrics = {"tasks_per_s": n / wall}
    if proc is not None:
        if counts.startswith("error"):
            raise RuntimeError(f"client: {counts.strip()}")
        events, polls = (int(x) for x in counts.split())
        out["events_per_s"] = events / wall
        out["polls_per_s"] = polls / wall
    return out


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def measure(args: argparse.Namespace) -> tuple[dict[str, list[Metrics]], dict[str, str], str]:
    reps: dict[str, list[Metrics]] = {v: [] for v in VARIANTS}
    failed: dict[str, str] = {}
    method = "?"
    for rnd in range(args.reps + 1):
        with ProcQueue(max_workers=args.workers, start_method=args.start_method) as pool:
            method = pool.start_method
            list(pool.map(add_one, range(8 * args.workers)))  # every worker up
            got: dict[str, Metrics] = {}
            for variant in VARIANTS[rnd % 3 :] + VARIANTS[: rnd % 3]:
                if variant in failed:
                    continue
                try:
                    got[variant] = m = run_variant(pool, variant, args)
                except Exception as e:
                    failed[variant] = f"round {rnd}: {type(e).__name__}: {e}"
                    _log.error("FAIL %s: %s", variant, failed[variant])
                    continue
                warm = " (warm-up)" if rnd == 0 else ""
                _log.info("round %d%s %-9s %9.0f tasks/s", rnd, warm, variant, m["tasks_per_s"])
        if rnd == 0:
            continue
        for variant, m in got.items():
            if "none" in got:
                m["ratio"] = m["tasks_per_s"] / got["none"]["tasks_per_s"]
            reps[variant].append(m)
    return reps, failed, method


def report(args: argparse.Namespace, started: datetime) -> int:
    reps, failed, method = measure(args)
    print(f"# Dashboard overhead: {args.tasks:,} tiny tasks, one by one, then gathered\n")
    print(
        f"{args.workers} workers, start method {method}, task __main__.add_one (by value); "
        f"{args.reps} timed rounds after a warm-up round, a fresh pool per round, variants "
        "rotated each round.\n"
    )
    print("| variant | vs none | tasks/s | clients |\n|---|---|---|---|")
    labels = {
        "none": "no dashboard",
        "dashboard": "dashboard open, nobody looking",
        "live": f"SSE client + /api/stats at {args.hz:g} Hz + /metrics every {args.scrape:g} s",
    }
    for v in VARIANTS:
        if v in failed:
            print(f"| {labels[v]} | FAIL | FAIL | {failed[v]} |")
            continue
        runs = reps[v]
        ratio = "baseline" if v == "none" else spread([m["ratio"] for m in runs], ".3f")
        extra = ""
        if v == "live":
            events = spread([m["events_per_s"] for m in runs], ".1f")
            polls = spread([m["polls_per_s"] for m in runs], ".1f")
            extra = f"{events} SSE events/s, {polls} stats polls/s"
        rate = spread([m["tasks_per_s"] for m in runs], ",.0f")
        print(f"| {labels[v]} | {ratio} | {rate} | {extra} |")
    print(
        "\nMedian (min-max) over the timed rounds; 'vs none' is variant / none in the same round."
    )
    ratios = [m["ratio"] for m in reps["live"] if "ratio" in m]
    if ratios:
        cost = 1 - statistics.median(ratios)
        verdict = "met" if cost < 0.03 else "NOT met"
        print(
            f"Target: a live dashboard costs < 3 % of tiny-task throughput: {verdict} ({cost:.1%})."
        )
    print(footer(started))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        c = argparse.ArgumentParser()
        c.add_argument("host")
        c.add_argument("port", type=int)
        c.add_argument("--hz", type=float)
        c.add_argument("--scrape", type=float)
        ca = c.parse_args(argv[1:])
        return client_main(ca.host, ca.port, ca.hz, ca.scrape)
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--tasks", type=int, default=20_000, help="tiny tasks per run (20000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--reps", type=int, default=5, help="timed rounds after the warm-up (5, >= 3)")
    p.add_argument("--start-method", choices=("fork", "forkserver", "spawn"))
    p.add_argument("--hz", type=float, default=2.0, help="/api/stats polls per second (2)")
    p.add_argument("--scrape", type=float, default=5.0, help="seconds between /metrics scrapes")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take (600)")
    args = p.parse_args(argv)
    if args.reps < 3:
        p.error("--reps must be at least 3")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("procqueue").setLevel(logging.WARNING)
    return report(args, datetime.now(timezone.utc))


if __name__ == "__main__":
    sys.exit(main())
