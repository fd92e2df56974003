"""A diamond of tasks with results passed along (README, "Dependencies").

    python examples/diamond_dag.py

``load`` feeds ``word_count`` and ``longest_word``, whose results ``report``
joins; a task that fails takes its dependents down with it, while an
``all_done`` cleanup task runs whatever happened.
"""

from __future__ import annotations

import asyncio
import logging

from procqueue import TaskQueue, UpstreamFailedError, result_of

log = logging.getLogger("diamond")

TEXT = "the quick brown fox jumps over the lazy dog " * 1000


def load(copies: int) -> str:
    return TEXT * copies


def word_count(text: str) -> int:
    return len(text.split())


def longest_word(text: str) -> str:
    return max(text.split(), key=len)


def report(counts: dict[str, object]) -> str:
    return f"{counts['words']} words, the longest is {counts['longest']!r}"


def broken(text: str) -> int:
    raise ValueError("this step always fails")


def cleanup(*outcomes: object) -> str:
    failed = sum(isinstance(o, BaseException) for o in outcomes)
    return f"cleanup saw {len(outcomes)} upstream results, {failed} of them errors"


async def main() -> None:
    async with TaskQueue(num_workers=2) as queue:
        top = await queue.submit(load, 3)
        left = await queue.submit(word_count, result_of(top))
        right = await queue.submit(longest_word, result_of(top))
        joined = await queue.submit(report, {"words": result_of(left), "longest": result_of(right)})
        log.info("report: %s", await queue.result(joined))

        bad = await queue.submit(broken, result_of(top))
        after_bad = await queue.submit(word_count, result_of(bad))
        tidy = await queue.submit(cleanup, result_of(left), result_of(bad), trigger="all_done")
        try:
            await queue.result(after_bad)
        except UpstreamFailedError as e:
            log.info("as expected: %s", e)
        log.info("%s", await queue.result(tidy))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asyncio.run(main())
