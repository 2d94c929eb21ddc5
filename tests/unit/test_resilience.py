import random
from datetime import UTC, datetime, timedelta

import pytest

from shared.carriers.resilience import BreakerState, CarrierBreakers, CircuitBreaker, RetryPolicy
from shared.clock import ManualClock


def breaker(clock: ManualClock) -> CircuitBreaker:
    return CircuitBreaker("parcelfast", clock, failure_threshold=3, open_seconds=30)


def test_opens_after_consecutive_failures_only() -> None:
    clock = ManualClock(datetime(2026, 11, 22, tzinfo=UTC))
    b = breaker(clock)
    b.record_failure()
    b.record_failure()
    b.record_success()  # a success in between resets the count
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allows_call()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allows_call()


def test_half_open_lets_exactly_one_trial_through_then_closes_on_success() -> None:
    clock = ManualClock(datetime(2026, 11, 22, tzinfo=UTC))
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.advance(timedelta(seconds=29))
    assert not b.allows_call()
    clock.advance(timedelta(seconds=1))
    assert b.allows_call()  # the trial
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allows_call()  # nobody else while the trial runs
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allows_call()
    assert b.transitions == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_while_the_trial_runs_the_carrier_is_not_worth_asking() -> None:
    clock = ManualClock(datetime(2026, 11, 22, tzinfo=UTC))
    breakers = CarrierBreakers(clock, failure_threshold=3, open_seconds=30)
    b = breakers.of("parcelfast")
    for _ in range(3):
        b.record_failure()
    assert not b.may_try() and breakers.open_carriers() == {"parcelfast"}
    clock.advance(timedelta(seconds=30))
    assert b.may_try() and breakers.open_carriers() == set()  # a trial may go
    assert b.allows_call()  # it went
    assert not b.may_try() and breakers.open_carriers() == {"parcelfast"}
    clock.advance(timedelta(seconds=30))  # the trial never reported back
    assert b.may_try() and b.allows_call()
    b.record_success()
    assert b.may_try() and breakers.open_carriers() == set()


def test_a_failed_trial_opens_it_again_for_a_full_period() -> None:
    clock = ManualClock(datetime(2026, 11, 22, tzinfo=UTC))
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.advance(timedelta(seconds=30))
    assert b.allows_call()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.advance(timedelta(seconds=29))
    assert not b.allows_call()


def test_each_carrier_has_its_own_breaker() -> None:
    breakers = CarrierBreakers(ManualClock(datetime(2026, 11, 22, tzinfo=UTC)), failure_threshold=1)
    breakers.of("a").record_failure()
    assert breakers.of("a").state is BreakerState.OPEN
    assert breakers.of("b").allows_call()


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=8, max_attempts=4)
    rng = random.Random(7)
    ceilings = [min(8.0, 0.5 * 2 ** (n - 1)) for n in range(1, 9)]
    for attempt, ceiling in enumerate(ceilings, start=1):
        for _ in range(50):
            assert 0.25 <= policy.delay(attempt, rng=rng) <= ceiling
    assert policy.delay(1, retry_after=5, rng=rng) >= 5
    assert policy.delay(1, retry_after=10_000, rng=rng) <= 300
    assert not policy.exhausted(3) and policy.exhausted(4)
    with pytest.raises(ValueError):
        policy.delay(0)
