"""Rate and concurrency limits in the pure core, with a fake clock."""

from __future__ import annotations

import itertools

import pytest
from test_scheduler_machine import Shell, sent

from procqueue import Concurrency, InvalidArgumentError, RateLimit, RetryPolicy, Throttle
from procqueue._core.events import Done
from procqueue._core.limits import SWEEP_MIN, KeyLimits, Limiter
from procqueue._core.records import TaskState, _TaskRecord


def keyed(shell: Shell, key: str | None, priority: int = 0) -> _TaskRecord:
    rec = _TaskRecord(
        shell.next_id, f"t{shell.next_id}", priority, (b"f", []), RetryPolicy(), None, 0.0, None
    )
    shell.next_id += 1
    rec.limit_key = key
    shell.sched.admit(rec, 0.0)
    return rec


def run_all(shell: Shell, until: float, step: float, workers: int) -> list[tuple[float, int]]:
    """Answer every task at once; returns (start time, id) in dispatch order."""
    starts: list[tuple[float, int]] = []
    now = 0.0
    actions = shell.turn(0.0)
    for w in range(workers):
        actions += shell.boot(w, 0.0)
    while now <= until:
        starts += [(now, t) for t in sent(actions)]
        actions = []
        for slot in shell.sched.slots:
            while slot.inflight:
                rec = slot.inflight[0]
                actions += shell.turn(now, Done(slot.index, rec.task_id, True, 1, "", now, now))
                starts += [(now, t) for t in sent(actions)]
                actions = []
        now = round(now + step, 6)
        actions += shell.turn(now)
    return starts


def test_a_rate_holds_and_other_keys_run_at_full_speed() -> None:
    shell = Shell(workers=2, prefetch=0, key_limits={"api": RateLimit("10/s")})
    api = [keyed(shell, "api") for _ in range(30)]
    for _ in range(30):
        keyed(shell, None)
    starts = run_all(shell, until=2.0, step=0.01, workers=2)
    api_ids = {r.task_id for r in api}
    api_times = [t for t, tid in starts if tid in api_ids]
    free_times = [t for t, tid in starts if tid not in api_ids]
    assert len(free_times) == 30 and max(free_times) == 0.0  # no head-of-line blocking
    assert len(api_times) == 21  # burst 1 at 0, then 10/s for 2 s
    gaps = [b - a for a, b in itertools.pairwise(api_times)]
    # Evenly spaced: never faster than the rate, less the 10 ms of slack a
    # bucket keeps for a late wake-up.
    assert all(g >= 0.1 - 0.01 - 1e-6 for g in gaps)
    assert api_times[-1] - api_times[0] >= 20 * 0.1 - 0.01
    order = [tid for _, tid in starts if tid in api_ids]
    assert order == sorted(order)  # FIFO within the key
    assert all(r.attempts <= 1 for r in api)  # a throttled task uses no attempt
    assert shell.sched.parked == 9


def test_concurrency_never_exceeded_and_released_on_every_outcome() -> None:
    shell = Shell(workers=3, prefetch=2, key_limits={"db": Concurrency(1)})
    recs = [keyed(shell, "db") for _ in range(4)]
    shell.turn(0.0)
    actions = []
    for w in range(3):
        actions += shell.boot(w, 0.0)
    assert sent(actions) == [recs[0].task_id]  # one at a time, even with prefetch
    running = [s for s in shell.sched.slots if s.inflight]
    assert len(running) == 1
    slot = running[0]
    # A failure frees the key like a success does.
    done = Done(slot.index, recs[0].task_id, False, ValueError("x"), "", 0.0, 0.0)
    assert len(sent(shell.turn(0.1, done))) == 1
    assert shell.sched.keys.limiters["db"].running == 1


def test_patterns_give_each_key_its_own_limiter() -> None:
    shell = Shell(workers=2, prefetch=0, key_limits={"tenant:*": Concurrency(1)})
    a1, a2, b1 = keyed(shell, "tenant:a"), keyed(shell, "tenant:a"), keyed(shell, "tenant:b")
    shell.turn(0.0)
    actions = shell.boot(0) + shell.boot(1)
    assert sorted(sent(actions)) == [a1.task_id, b1.task_id]
    assert a2.state is TaskState.PENDING and a2.parked
    with pytest.raises(InvalidArgumentError):
        shell.sched.keys.check("other")


def test_throttle_waits_without_using_an_attempt_then_gives_up() -> None:
    shell = Shell(prefetch=0, max_throttles=2)
    rec = shell.submit(0)
    shell.turn(0.0)
    shell.boot(0)
    for n, now in enumerate((1.0, 4.0), start=1):
        shell.turn(now, Done(0, rec.task_id, False, Throttle(retry_after=2.0), "", now, now))
        assert rec.state is TaskState.RETRYING and rec.attempts == 0 and rec.throttles == n
        assert shell.sched.next_deadline(now) == now + 2.0
        assert sent(shell.turn(now + 2.0)) == [rec.task_id]
    shell.turn(7.0, Done(0, rec.task_id, False, Throttle(retry_after=2.0), "", 7.0, 7.0))
    assert rec.state is TaskState.FAILED  # past max_throttles, and no retries left


def test_cancel_and_stop_reach_parked_tasks() -> None:
    shell = Shell(workers=2, prefetch=0, key_limits={"k": Concurrency(1)})
    recs = [keyed(shell, "k") for _ in range(3)]
    shell.turn(0.0)
    shell.boot(0)
    shell.boot(1)
    assert recs[1].parked and recs[2].parked
    shell.sched.cancel(recs[1].task_id, 0.0)
    assert recs[1].state is TaskState.CANCELLED and shell.sched.parked == 1
    shell.sched.stop(cancel_pending=True, deadline=None, now=0.0)
    assert recs[2].state is TaskState.CANCELLED and shell.sched.parked == 0


def test_bad_limits_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        RateLimit("20 per second")
    with pytest.raises(InvalidArgumentError):
        Concurrency(0)
    with pytest.raises(TypeError):
        Shell(key_limits={"x": 5})


def test_a_backlog_makes_up_a_stall_up_to_catchup_and_catchup_0_never_exceeds() -> None:
    for catchup, expected in ((0.1, 50), (0.0, 11)):
        shell = Shell(
            workers=1, prefetch=1000, key_limits={"k": RateLimit("1000/s", catchup=catchup)}
        )
        recs = [keyed(shell, "k") for _ in range(200)]
        shell.turn(0.0)
        first = sent(shell.boot(0, 0.0))
        # A full bucket at start: burst 1 plus 10 ms of timer slack; the rest park.
        assert first == [r.task_id for r in recs[:11]]
        # The coordinator could not run for 50 ms: 50 slots fell due meanwhile.
        released = sent(shell.turn(0.050))
        assert len(released) == expected, catchup  # all 50 made up, or capped at 1 + 10 ms
    with pytest.raises(InvalidArgumentError):
        RateLimit("1/s", catchup=-1)


@pytest.mark.parametrize("rate", [100, 1000])
def test_a_rate_limit_keeps_the_bounds_its_docs_give(rate: int) -> None:
    """After an idle spell: ``burst + rate * 0.01`` back to back (the timer
    slack); with ``catchup=0``, at most ``rate + burst + rate * 0.01`` starts
    in a one-second window of a permanent backlog, read every millisecond."""
    lim = Limiter("api", [RateLimit(f"{rate}/s", catchup=0)], now=0.0)
    n = 0
    while lim.room(5.0) >= 1:
        lim.take(5.0)
        n += 1
    assert n == 1 + int(rate * 0.01)
    lim = Limiter("api", [RateLimit(f"{rate}/s", catchup=0)], now=0.0)
    starts = 0
    for i in range(1000):
        t = 5.0 + i / 1000
        while lim.room(t) >= 1:
            lim.take(t)
            starts += 1
    assert rate <= starts <= rate + 1 + rate * 0.01


def test_idle_limiters_of_a_pattern_s_keys_do_not_pile_up() -> None:
    """Each concrete key of ``tenant:*`` gets a limiter; once idle and full
    again, it is dropped at the next sweep (a busy one is kept)."""
    keys = KeyLimits({"tenant:*": RateLimit("2/s"), "db": Concurrency(1)})
    busy = keys.limiter("tenant:busy", 0.0)
    busy.take(0.0)  # running for the whole test
    db = keys.limiter("db", 0.0)
    t = 0.0
    for i in range(10_000):
        lim = keys.limiter(f"tenant:{i}", t)
        lim.take(t)
        lim.running -= 1  # ended
        t += 1.0  # a token refills in 0.5 s: idle and full by the next key
    assert len(keys.limiters) <= 2 * SWEEP_MIN
    assert keys.limiters["tenant:busy"] is busy and keys.limiters["db"] is db


def test_one_burst_for_every_window_paces_at_the_tightest_a_list_sets_a_quota() -> None:
    """The README's rule: ``RateLimit("20/s;5000/h")`` paces evenly at 5000/h;
    ``[RateLimit("20/s"), RateLimit("5000/h", burst=5000)]`` runs at 20/s
    until the hourly quota is spent."""
    tight = Shell(workers=2, prefetch=0, key_limits={"api": RateLimit("20/s;5000/h")})
    paced = Shell(
        workers=2,
        prefetch=0,
        key_limits={"api": [RateLimit("20/s"), RateLimit("5000/h", burst=5000)]},
    )
    quota = Shell(
        workers=2,
        prefetch=0,
        key_limits={"api": [RateLimit("20/s"), RateLimit("10/h", burst=10)]},
    )
    for shell in (tight, paced, quota):
        for _ in range(30):
            keyed(shell, "api")
    assert len(run_all(tight, until=1.0, step=0.01, workers=2)) == 2  # 0 s and 0.72 s
    assert len(run_all(paced, until=1.0, step=0.01, workers=2)) == 21  # 20/s from 0
    # The quota holds over the pace: 10 at 20/s, then one per 360 s.
    assert len(run_all(quota, until=2.0, step=0.01, workers=2)) == 10
