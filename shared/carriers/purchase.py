"""Buying one label through unreliable carriers: exactly once, with fallback (DESIGN.md rule 6).

One call of :meth:`LabelPurchaser.attempt` is one try, made by a worker that leased the
purchase: it rate-shops when no carrier is chosen yet, stores the choice (with its
idempotency key) through the caller *before* buying, then buys. The caller persists the
returned state and schedules the next try when there is no label.

The rules that keep it to one label:

- Each choice of carrier and service has its own idempotency key; every retry of that
  choice sends the same key, so the carrier answers a replay instead of selling again.
- After a failure that the carrier may have acted on (a timeout once the request was sent,
  a 500) the purchase is *pinned*: it only ever retries that choice, whatever happens.
- Only an unpinned purchase moves to another carrier, when its carrier's circuit breaker
  is open (that carrier keeps failing for everybody) or it stopped quoting.

A carrier named in a quote's ``unavailable`` list counts as a failure of that carrier; a
label bought counts as a success; a 429 or a refused request (4xx) counts as neither.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from shared import metrics
from shared.carriers.base import CarrierError, CarrierGateway, Label, LabelRequest, Quotes
from shared.carriers.resilience import BreakerState, CarrierBreakers, RetryPolicy

log = logging.getLogger("waybill.carriers.purchase")

T = TypeVar("T")

#: a purchase waiting for a busy half-open carrier (another call holds the trial) looks again
#: after about this long
_TRIAL_BUSY_SECONDS = 1.0


@dataclass(frozen=True)
class Choice:
    """A carrier service chosen for a label, and the key every purchase of it carries."""

    carrier: str
    service: str
    idempotency_key: str
    #: whatever the caller stores with the choice (estimated delivery, at-risk flag)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PurchaseState:
    """What the caller keeps of one label purchase between tries."""

    #: every idempotency key of this purchase starts with it (unique per label wanted)
    key_prefix: str
    choice: Choice | None = None
    #: a call for ``choice`` may have bought a label: never switch carrier or service
    pinned: bool = False
    #: carrier calls made so far (the retry budget counts these)
    attempts: int = 0


@dataclass(frozen=True)
class Attempt:
    """The outcome of one try: a label, or the state to keep and when to try again."""

    state: PurchaseState
    label: Label | None = None
    #: seconds until the next try (None with a label or when the budget is spent)
    retry_in: float | None = None
    error: str | None = None
    exhausted: bool = False


@dataclass(frozen=True)
class Pick:
    """What rate shopping picked from the quotes (the purchaser gives it its key)."""

    carrier: str
    service: str
    details: dict[str, Any] = field(default_factory=dict)


#: rate shopping: the pick among the quotes, or None when nothing suits
Chooser = Callable[[Quotes], Pick | None]


async def carrier_call(call: Awaitable[T], *, maybe_processed: bool) -> T:
    """A gateway call; anything but a CarrierError (an answer the adapter could not map, a
    bug) counts as a failed carrier call, so that it uses the budget instead of crashing
    the worker over and over."""
    try:
        return await call
    except CarrierError:
        raise
    except Exception as exc:
        log.exception("carrier call failed unexpectedly")
        raise CarrierError(
            f"unexpected failure: {exc!r}", retryable=True, maybe_processed=maybe_processed
        ) from exc


def outcome_of(error: CarrierError | None) -> str:
    """A carrier call's outcome for the metrics."""
    if error is None:
        return "ok"
    if error.status == 429:
        return "rate_limited"
    if not error.retryable:
        return "refused"
    return "maybe_processed" if error.maybe_processed else "failed"


def _count(carrier: str, operation: str, error: CarrierError | None) -> None:
    metrics.carrier_calls.add(
        1, {"carrier": carrier, "operation": operation, "outcome": outcome_of(error)}
    )


def key_for(prefix: str, carrier: str, service: str) -> str:
    """The idempotency key of one carrier service for one label."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{carrier}-{service}")
    return f"{prefix}-{slug}"[:255]


class LabelPurchaser:
    """Buys labels through ``gateway`` with per-carrier breakers, backoff and a budget."""

    def __init__(
        self,
        gateway: CarrierGateway,
        breakers: CarrierBreakers,
        *,
        retry: RetryPolicy,
        rng: random.Random | None = None,
    ) -> None:
        self.gateway = gateway
        self.breakers = breakers
        self.retry = retry
        self._rng = rng
        #: every carrier seen quoting or refusing: who to ask when some are open
        self.known_carriers: set[str] = set()

    async def attempt(
        self,
        state: PurchaseState,
        *,
        quote: Callable[[Collection[str] | None], Awaitable[Quotes]],
        choose: Chooser,
        label_request: Callable[[Choice], LabelRequest],
        save_choice: Callable[[Choice], Awaitable[None]],
    ) -> Attempt:
        """One try. ``quote(carriers)`` asks for rates (None: from every carrier),
        ``choose`` picks among them, ``save_choice`` stores the choice and its key durably
        before the purchase, ``label_request`` says what to buy."""
        choice = state.choice
        calls = 0
        try:
            if (
                choice is not None
                and not state.pinned
                and not self.breakers.of(choice.carrier).may_try()
            ):
                log.info("carrier %s is failing: choosing again", choice.carrier)
                choice = None
            if choice is None:
                if state.pinned:  # defensive: a pinned purchase always has its choice
                    raise RuntimeError("a pinned label purchase lost its carrier")
                asked = self._carriers_to_ask()
                if asked is not None and not asked:
                    return self._wait_for_breakers(state, calls)
                try:
                    quotes = await carrier_call(quote(asked), maybe_processed=False)
                except CarrierError as exc:
                    calls += 1
                    _count("any", "rates", exc)
                    raise
                if not quotes.reused:  # a reused quote cost the carrier nothing
                    calls += 1
                    _count("any", "rates", None)
                self._learn(quotes)
                picked = choose(quotes)
                if picked is None:
                    raise CarrierError("no carrier quoted a rate", retryable=True)
                choice = Choice(
                    carrier=picked.carrier,
                    service=picked.service,
                    idempotency_key=key_for(state.key_prefix, picked.carrier, picked.service),
                    details=picked.details,
                )
                await save_choice(choice)
                state = replace(state, choice=choice)
            breaker = self.breakers.of(choice.carrier)
            if not breaker.allows_call():
                # open (pinned: wait it out) or half-open with its trial taken
                wait = breaker.seconds_until_trial() or _TRIAL_BUSY_SECONDS
                return Attempt(
                    replace(state, attempts=state.attempts + calls),
                    retry_in=wait + self._jitter(),
                    error=f"carrier {choice.carrier} is failing (circuit open)",
                )
            calls += 1
            try:
                label = await carrier_call(
                    self.gateway.buy_label(
                        label_request(choice), idempotency_key=choice.idempotency_key
                    ),
                    maybe_processed=True,
                )
            except CarrierError as exc:
                _count(choice.carrier, "buy", exc)
                self._judge(choice.carrier, exc)
                if exc.maybe_processed:
                    state = replace(state, pinned=True)
                raise
            _count(choice.carrier, "buy", None)
            breaker.record_success()
            return Attempt(replace(state, attempts=state.attempts + calls), label=label)
        except CarrierError as exc:
            state = replace(state, attempts=state.attempts + calls)
            if not exc.retryable and not state.pinned:
                # refused as it stands (a 4xx): choosing again may find a service that works
                state = replace(state, choice=None)
            if self.retry.exhausted(state.attempts):
                return Attempt(state, error=str(exc), exhausted=True)
            delay = self.retry.delay(
                max(1, state.attempts), retry_after=exc.retry_after, rng=self._rng
            )
            return Attempt(state, retry_in=delay, error=str(exc))

    def circuits(self) -> list[dict[str, Any]]:
        """Each carrier's circuit breaker in this process: closed, open or half_open."""
        carriers = sorted(self.known_carriers | set(self.breakers.breakers))
        return [
            {
                "carrier": name,
                "circuit": breaker.state.value,
                "consecutive_failures": breaker.consecutive_failures,
                "retry_in_seconds": round(breaker.seconds_until_trial(), 3),
                "times_opened": breaker.transitions.count(BreakerState.OPEN),
            }
            for name in carriers
            for breaker in [self.breakers.of(name)]
        ]

    def _carriers_to_ask(self) -> set[str] | None:
        """None: everybody; else the known carriers whose breaker is not open."""
        blocked = self.breakers.open_carriers()
        if not blocked:
            return None
        return self.known_carriers - blocked

    def _learn(self, quotes: Quotes) -> None:
        self.known_carriers.update(rate.carrier for rate in quotes.rates)
        self.known_carriers.update(quotes.unavailable)
        for carrier, reason in quotes.unavailable.items():
            log.info("carrier %s gave no rate: %s", carrier, reason)
            self.breakers.of(carrier).record_failure()

    def _judge(self, carrier: str, error: CarrierError) -> None:
        breaker = self.breakers.of(carrier)
        if error.retryable and error.status != 429:
            breaker.record_failure()
        else:  # rate limited or refused: the carrier is up and answering
            breaker.release()

    def _wait_for_breakers(self, state: PurchaseState, calls: int) -> Attempt:
        soonest = min(
            (self.breakers.of(c).seconds_until_trial() for c in self.known_carriers),
            default=_TRIAL_BUSY_SECONDS,
        )
        return Attempt(
            replace(state, attempts=state.attempts + calls),
            retry_in=max(soonest, 0.1) + self._jitter(),
            error="every carrier is failing (circuits open)",
        )

    def _jitter(self) -> float:
        return (self._rng or random).uniform(0, 0.25)
