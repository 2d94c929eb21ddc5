"""Carriers are unreliable (DESIGN.md rule 6): retry with backoff, and stop calling one
that keeps failing.

Pure state machines on an injectable clock; the callers decide what a failure is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum

from shared.clock import Clock


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Opens after ``failure_threshold`` failures in a row; after ``open_seconds`` it lets
    one trial call through (half-open): success closes it, failure opens it again."""

    name: str
    clock: Clock
    failure_threshold: int = 5
    open_seconds: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False
    #: when the trial call went out: a trial never reported back is given up after a period
    trial_started_at: float | None = None
    #: how often it opened and closed, for metrics and tests
    transitions: list[BreakerState] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.open_seconds <= 0:
            raise ValueError("a breaker needs a threshold of at least 1 and a positive open time")

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def _move(self, state: BreakerState) -> None:
        if state != self.state:
            self.state = state
            self.transitions.append(state)

    def seconds_until_trial(self) -> float:
        """How long it stays open (0 when calls, or a trial, may go out now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        assert self.opened_at is not None
        return max(0.0, self.opened_at + self.open_seconds - self._now())

    def may_try(self) -> bool:
        """Whether it is worth asking this carrier now (no state change: see allows_call):
        closed, open with its period over, or half-open with no trial under way. While the
        one trial runs, the others go elsewhere instead of waiting for its outcome."""
        if self.state is BreakerState.HALF_OPEN and self.trial_in_flight:
            assert self.trial_started_at is not None
            return self._now() - self.trial_started_at >= self.open_seconds
        return self.seconds_until_trial() == 0.0

    def allows_call(self) -> bool:
        """Whether a call may go out now; in half-open, only the single trial call may."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.seconds_until_trial() > 0:
                return False
            self._move(BreakerState.HALF_OPEN)
            self.trial_in_flight = False
        if self.trial_in_flight:
            assert self.trial_started_at is not None
            if self._now() - self.trial_started_at < self.open_seconds:
                return False
            # the trial never reported back (its caller died): let another one through
        self.trial_in_flight = True
        self.trial_started_at = self._now()
        return True

    def release(self) -> None:
        """A call that says nothing about the carrier's health (rate limited, refused as
        invalid): it neither closes nor opens the breaker, and gives back the trial."""
        self.trial_in_flight = False

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.trial_in_flight = False
        self.opened_at = None
        self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self.trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN:
            self.opened_at = self._now()
            self._move(BreakerState.OPEN)
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failure_threshold:
            self.opened_at = self._now()
            self._move(BreakerState.OPEN)


@dataclass
class CarrierBreakers:
    """One breaker per carrier, created on first use with the same settings."""

    clock: Clock
    failure_threshold: int = 5
    open_seconds: float = 30.0
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def open_carriers(self) -> set[str]:
        """Carriers not to be asked now."""
        return {name for name, breaker in self.breakers.items() if not breaker.may_try()}

    def of(self, carrier: str) -> CircuitBreaker:
        if carrier not in self.breakers:
            self.breakers[carrier] = CircuitBreaker(
                carrier,
                self.clock,
                failure_threshold=self.failure_threshold,
                open_seconds=self.open_seconds,
            )
        return self.breakers[carrier]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter (between half the base and the doubling ceiling);
    a server's Retry-After is a floor."""

    base_seconds: float = 0.5
    cap_seconds: float = 60.0
    #: a Retry-After beyond this is not believed (a misbehaving server must not park us)
    retry_after_cap_seconds: float = 300.0
    max_attempts: int = 10

    def delay(
        self, attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
        if attempt < 1:
            raise ValueError("attempts are counted from 1")
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** (attempt - 1))
        wait = (rng or random).uniform(self.base_seconds / 2, max(ceiling, self.base_seconds / 2))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_cap_seconds))
        return wait

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts
