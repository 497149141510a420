"""Rate limits, write pacing, backoff and the breaker as pure logic, on a fake clock."""

from __future__ import annotations

import pytest

from bot.throttle import (
    Answer,
    Backoff,
    Breaker,
    BreakerPolicy,
    PauseKind,
    Throttle,
    read_answer,
)
from tests.rig.clock import FakeClock

T0 = 1_800_000_000.0


def ok(remaining: int, reset: float, limit: int = 5000) -> Answer:
    return Answer(200, limit, remaining, reset)


def secondary(retry_after: float | None = None, status: int = 403) -> Answer:
    return Answer(status, 5000, 4000, T0 + 3600, retry_after, says_secondary=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


# -- reading answers ----------------------------------------------------------------------------
def test_an_answer_is_read_from_headers_and_body() -> None:
    headers = {
        "x-ratelimit-limit": "5000",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1800000040",
    }
    primary = read_answer(403, headers, b'{"message":"API rate limit exceeded"}')
    assert (primary.limit, primary.remaining, primary.reset) == (5000, 0, 1_800_000_040)
    assert primary.exhausted
    assert not primary.secondary
    body = b'{"message":"You have exceeded a secondary rate limit. Please wait."}'
    assert read_answer(403, {"x-ratelimit-remaining": "4000"}, body).secondary
    assert read_answer(403, {"retry-after": "30"}, b"{}").secondary
    assert read_answer(429, {}, b"{}").secondary
    # A plain 403 (no permission) is no rate limit at all.
    forbidden = read_answer(403, {}, b'{"message":"Resource not accessible by integration"}')
    assert not forbidden.secondary
    assert not forbidden.exhausted
    assert read_answer(200, {"retry-after": "soon"}, b"").retry_after is None


# -- primary ------------------------------------------------------------------------------------
def test_a_spent_budget_pauses_only_its_installation_until_the_reset(clock: FakeClock) -> None:
    t = Throttle(clock.now)
    assert t.pause(1) is None
    started = t.observe(1, ok(0, T0 + 40))  # the last request of the window succeeded
    assert started is not None
    assert started.kind is PauseKind.PRIMARY
    assert started.seconds == 41  # the reset plus a second for the clocks' difference
    assert t.pause(2) is None  # another installation has its own budget
    assert t.pause(None) is None  # so has the App itself
    clock.advance(40)
    pause = t.pause(1)
    assert pause is not None
    assert pause.seconds == 1
    clock.advance(1)
    assert t.pause(1) is None


def test_a_refusal_for_the_spent_budget_pauses_even_when_the_reset_looks_past(
    clock: FakeClock,
) -> None:
    t = Throttle(clock.now)
    started = t.observe(7, Answer(403, 5000, 0, T0 - 5))  # GitHub's clock is behind ours
    assert started is not None
    assert started.seconds == 1
    assert t.observe(7, Answer(403, 5000, 0, T0 - 5)) is None  # the same pause, seen again


def test_an_answer_sent_before_the_pause_does_not_lift_it(clock: FakeClock) -> None:
    """Found by the chaos test (seed 1): a request in flight when the 403 came back was
    answered with the older, larger budget, and the bot resumed inside the window."""
    t = Throttle(clock.now)
    assert t.observe(4, Answer(403, 5000, 0, T0 + 3)) is not None
    assert t.observe(4, ok(4990, T0 + 3600)) is None
    pause = t.pause(4)
    assert pause is not None and pause.seconds == 4
    clock.advance(4)
    assert t.pause(4) is None
    t.observe(4, ok(4990, T0 + 3600))  # after the reset, answers count again
    assert t.remaining(4) == (4990, 5000)


def test_the_remaining_fraction_is_reported_and_is_whole_after_the_reset(
    clock: FakeClock,
) -> None:
    t = Throttle(clock.now)
    assert t.remaining(3) is None
    t.observe(3, ok(400, T0 + 600))
    assert t.remaining(3) == (400, 5000)
    t.observe(3, Answer(304))  # an answer without rate-limit headers changes nothing
    assert t.remaining(3) == (400, 5000)
    clock.advance(600)
    assert t.remaining(3) == (5000, 5000)


# -- secondary ----------------------------------------------------------------------------------
def test_a_secondary_limit_pauses_the_whole_app_for_retry_after(clock: FakeClock) -> None:
    t = Throttle(clock.now)
    started = t.observe(1, secondary(retry_after=17))
    assert started is not None
    assert (started.kind, started.seconds) == (PauseKind.SECONDARY, 17)
    for who in (1, 2, None):
        pause = t.pause(who)
        assert pause is not None
        assert pause.kind is PauseKind.SECONDARY
    clock.advance(17)
    assert t.pause(2) is None


def test_without_retry_after_the_wait_is_a_minute_doubling_while_it_repeats(
    clock: FakeClock,
) -> None:
    t = Throttle(clock.now)
    waits = []
    for _ in range(6):
        started = t.observe(1, secondary())
        assert started is not None
        waits.append(started.seconds)
        clock.advance(started.seconds + 1)  # back, still slowed down, limited again
    assert waits == [60, 120, 240, 480, 900, 900]
    clock.advance(t.policy.slow_seconds)  # a quiet while: the next one starts over
    started = t.observe(1, secondary())
    assert started is not None
    assert started.seconds == 60


def test_answers_to_requests_sent_before_the_pause_do_not_stack_it(clock: FakeClock) -> None:
    t = Throttle(clock.now)
    assert t.observe(1, secondary()) is not None
    clock.advance(2)
    assert t.observe(2, secondary()) is None  # in flight when the pause began
    pause = t.pause(1)
    assert pause is not None
    assert pause.seconds == 58
    assert t.observe(2, secondary(retry_after=90)) is None  # a longer ask is honoured
    pause = t.pause(1)
    assert pause is not None
    assert pause.seconds == 90


def test_after_a_secondary_limit_writes_take_turns_a_second_apart_then_not(
    clock: FakeClock,
) -> None:
    t = Throttle(clock.now)
    assert t.reserve_write() == 0  # normal: no pacing
    assert t.reserve_write() == 0
    t.observe(1, secondary(retry_after=10))
    clock.advance(10)
    assert t.slowed
    assert [t.reserve_write() for _ in range(4)] == [0, 1, 2, 3]
    assert t.write_wait() == 4
    clock.advance(4)
    assert t.write_wait() == 0
    clock.advance(t.policy.slow_seconds)
    assert not t.slowed
    assert [t.reserve_write() for _ in range(3)] == [0, 0, 0]


# -- backoff ------------------------------------------------------------------------------------
def test_backoff_doubles_per_key_up_to_its_cap_and_resets_on_success(clock: FakeClock) -> None:
    b = Backoff(clock.now, base=1, cap=8)
    assert b.wait("a") == 0
    assert [b.failed("a") for _ in range(5)] == [1, 2, 4, 8, 8]
    assert b.wait("a") == 8
    assert b.wait("b") == 0  # other keys are not held back
    clock.advance(8)
    assert b.wait("a") == 0
    b.succeeded("a")
    assert b.failed("a") == 1


def test_backoff_is_bounded() -> None:
    b = Backoff(keys=3)
    for key in range(10):
        b.failed(key)
    assert b.wait(0) == 0  # forgotten: the least recent keys go first
    assert b.wait(9) > 0


# -- breaker ------------------------------------------------------------------------------------
def test_the_breaker_opens_after_n_failures_in_a_row(clock: FakeClock) -> None:
    br = Breaker(clock.now, BreakerPolicy(threshold=3, cooldown=10, cooldown_max=40))
    assert [br.failed() for _ in range(2)] == [False, False]
    br.succeeded()  # a success in between: not in a row
    assert [br.failed() for _ in range(3)] == [False, False, True]
    assert br.admit() == 10
    clock.advance(4)
    assert br.admit() == 6


def test_one_probe_after_the_cooldown_its_failure_doubles_the_wait(clock: FakeClock) -> None:
    br = Breaker(clock.now, BreakerPolicy(threshold=1, cooldown=10, cooldown_max=40))
    assert br.failed()
    waits = []
    for _ in range(4):
        clock.advance(br.admit())
        assert br.admit() == 0  # the probe goes
        assert br.admit() == 10  # everyone else waits for its verdict
        assert br.failed()  # the probe failed: open again, longer
        waits.append(br.admit())
    assert waits == [20, 40, 40, 40]
    clock.advance(40)
    assert br.admit() == 0
    br.succeeded()
    assert not br.is_open
    assert br.admit() == 0
    assert br.failed()  # the cooldown starts over
    assert br.admit() == 10


def test_an_abandoned_probe_lets_the_next_one_go(clock: FakeClock) -> None:
    br = Breaker(clock.now, BreakerPolicy(threshold=1, cooldown=10))
    br.failed()
    clock.advance(10)
    assert br.admit() == 0
    assert br.admit() > 0
    br.abandoned()
    assert br.admit() == 0
