"""20 requests per second to an API, at most 4 in flight (README, "Rate and
concurrency limits").

    python examples/rate_limited_api.py

The "API" is simulated (a 30 ms sleep; nothing leaves this machine). One
request in ten answers "429 Too Many Requests", and the task raises
``Throttle`` to wait and try again without using an attempt. Other work keeps
running at full speed while the API key is throttled.
"""

from __future__ import annotations

import logging
import random
import time

from procqueue import Concurrency, ProcQueue, RateLimit, Throttle

log = logging.getLogger("rate_limited_api")


def call_api(n: int) -> tuple[int, float]:
    time.sleep(0.03)  # the request
    if random.random() < 0.1:
        raise Throttle(retry_after=0.2)  # the server said 429: wait, then again
    return n, time.monotonic()


def square(x: int) -> int:
    return x * x


def main() -> None:
    limits: dict[str, list[RateLimit | Concurrency]] = {"api": [RateLimit("20/s"), Concurrency(4)]}
    with ProcQueue(max_workers=4, key_limits=limits) as pool:
        started = time.monotonic()
        calls = [pool.submit_task(call_api, n, limit_key="api") for n in range(60)]
        other = [pool.submit(square, x) for x in range(1000)]
        assert sum(f.result() for f in other) == sum(x * x for x in range(1000))
        log.info("1,000 unthrottled tasks done after %.2f s", time.monotonic() - started)
        answers = sorted(f.result() for f in calls)
        span = answers[-1][1] - started
        log.info("60 API calls done in %.2f s: %.1f/s (limit 20/s)", span, len(answers) / span)
        log.info("stats: %s", pool.get_stats().format_table().splitlines()[1])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
