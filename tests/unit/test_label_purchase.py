"""The purchaser's rules, against a scripted carrier: when it may switch, and when never."""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from shared.carriers.base import (
    CarrierError,
    Label,
    LabelRequest,
    Place,
    Quotes,
    Rate,
    RateRequest,
    TrackingEvent,
)
from shared.carriers.purchase import (
    Attempt,
    Choice,
    LabelPurchaser,
    Pick,
    PurchaseState,
    key_for,
)
from shared.carriers.resilience import BreakerState, CarrierBreakers, RetryPolicy
from shared.clock import ManualClock

TIMEOUT = CarrierError("timed out", retryable=True, maybe_processed=True)
DOWN = CarrierError("503", retryable=True, status=503)
LIMITED = CarrierError("rate limited", retryable=True, retry_after=7.0, status=429)


@dataclass
class ScriptedCarriers:
    """Quotes every carrier it knows; buying fails as scripted per carrier, then sells."""

    prices: dict[str, str]
    failures: dict[str, list[Exception]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    bought: list[tuple[str, str]] = field(default_factory=list)  # (carrier, key)
    asked: list[Collection[str] | None] = field(default_factory=list)

    async def rates(self, request: RateRequest) -> Quotes:
        self.asked.append(request.carriers)
        wanted = request.carriers or list(self.prices)
        return Quotes(
            [
                Rate(c, "std", Decimal(p), "EUR", 2)
                for c, p in self.prices.items()
                if c in wanted and c not in self.unavailable
            ],
            {c: why for c, why in self.unavailable.items() if c in wanted},
        )

    async def buy_label(self, request: LabelRequest, *, idempotency_key: str) -> Label:
        queue = self.failures.get(request.carrier) or []
        if queue:
            raise queue.pop(0)
        self.bought.append((request.carrier, idempotency_key))
        return Label(
            request.carrier,
            "std",
            f"shp-{idempotency_key}",
            f"TN-{idempotency_key}",
            "http://label",
            datetime(2030, 1, 1, tzinfo=UTC),
            Decimal("1"),
            "EUR",
        )

    async def cancel_label(self, carrier: str, carrier_shipment_id: str) -> None:
        raise NotImplementedError

    async def track(self, tracking_number: str) -> list[TrackingEvent]:
        raise NotImplementedError

    def parse_webhook(self, headers: dict[str, str], body: bytes, *, now: float) -> TrackingEvent:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def purchaser(carriers: ScriptedCarriers, clock: ManualClock, **retry: Any) -> LabelPurchaser:
    return LabelPurchaser(
        carriers,
        CarrierBreakers(clock, failure_threshold=2, open_seconds=30),
        retry=RetryPolicy(base_seconds=0.5, cap_seconds=10, **retry),
        rng=random.Random(1),
    )


async def attempt(buyer: LabelPurchaser, state: PurchaseState, saved: list[Choice]) -> Attempt:
    async def quote(carriers: Collection[str] | None) -> Quotes:
        asked = tuple(sorted(carriers)) if carriers is not None else None
        return await buyer.gateway.rates(
            RateRequest(Place("DE", "10115"), Place("DE", "10117"), [], carriers=asked)
        )

    async def save(choice: Choice) -> None:
        saved.append(choice)

    def cheapest(quotes: Quotes) -> Pick | None:
        best = min(quotes.rates, key=lambda r: r.price, default=None)
        return Pick(best.carrier, best.service) if best else None

    return await buyer.attempt(
        state,
        quote=quote,
        choose=cheapest,
        label_request=lambda c: LabelRequest(
            c.carrier, c.service, Place("DE", "10115"), {}, [], "order-1"
        ),
        save_choice=save,
    )


def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 22, tzinfo=UTC))


async def test_the_choice_and_its_key_are_saved_before_buying_and_reused() -> None:
    carriers = ScriptedCarriers({"cheap": "3", "dear": "5"}, failures={"cheap": [DOWN]})
    buyer, saved = purchaser(carriers, clock()), []
    first = await attempt(buyer, PurchaseState("waybill-s1"), saved)
    assert first.label is None and first.retry_in is not None
    assert saved == [Choice("cheap", "std", key_for("waybill-s1", "cheap", "std"))]
    assert first.state.choice == saved[0] and not first.state.pinned
    assert first.state.attempts == 2  # a rate call and a purchase

    second = await attempt(buyer, first.state, saved)
    assert second.label is not None and len(saved) == 1  # no second rating
    assert carriers.bought == [("cheap", "waybill-s1-cheap-std")]
    assert second.state.attempts == 3


async def test_an_answer_lost_in_a_timeout_pins_the_purchase_to_its_carrier() -> None:
    timer = clock()
    carriers = ScriptedCarriers({"cheap": "3", "dear": "5"}, failures={"cheap": [TIMEOUT] * 3})
    buyer, saved = purchaser(carriers, timer), []
    state = (await attempt(buyer, PurchaseState("waybill-s1"), saved)).state
    assert state.pinned
    state = (await attempt(buyer, state, saved)).state
    breaker = buyer.breakers.of("cheap")
    assert breaker.state is BreakerState.OPEN  # two failures in a row

    # open circuit: an unpinned purchase would move to "dear"; this one waits it out
    waiting = await attempt(buyer, state, saved)
    assert waiting.label is None and waiting.state.attempts == state.attempts  # no call
    assert 30 <= waiting.retry_in <= 30.25  # type: ignore[operator]
    assert waiting.state.choice is not None and waiting.state.choice.carrier == "cheap"

    timer.advance(timedelta(seconds=30))
    trial = await attempt(buyer, waiting.state, saved)  # the half-open trial, still a timeout
    assert trial.label is None and breaker.state is BreakerState.OPEN
    timer.advance(timedelta(seconds=30))
    done = await attempt(buyer, trial.state, saved)
    assert done.label is not None
    assert carriers.bought == [("cheap", "waybill-s1-cheap-std")]  # one key, one label
    assert len(saved) == 1 and breaker.state is BreakerState.CLOSED


async def test_a_refused_purchase_moves_to_another_carrier_once_the_circuit_opens() -> None:
    carriers = ScriptedCarriers({"cheap": "3", "dear": "5"}, failures={"cheap": [DOWN] * 5})
    buyer, saved = purchaser(carriers, clock()), []
    state = (await attempt(buyer, PurchaseState("waybill-s1"), saved)).state
    state = (await attempt(buyer, state, saved)).state
    assert buyer.breakers.of("cheap").state is BreakerState.OPEN and not state.pinned

    moved = await attempt(buyer, state, saved)
    assert moved.label is not None and moved.label.carrier == "dear"
    assert carriers.asked[-1] == ("dear",)  # the open carrier is not even asked to quote
    assert [c.idempotency_key for c in saved] == ["waybill-s1-cheap-std", "waybill-s1-dear-std"]
    assert carriers.bought == [("dear", "waybill-s1-dear-std")]


async def test_carriers_that_cannot_quote_trip_their_breaker() -> None:
    carriers = ScriptedCarriers({"cheap": "3", "dear": "5"}, unavailable={"cheap": "outage"})
    buyer, saved = purchaser(carriers, clock()), []
    for order in ("a", "b"):
        done = await attempt(buyer, PurchaseState(f"waybill-{order}"), saved)
        assert done.label is not None and done.label.carrier == "dear"
    assert buyer.breakers.of("cheap").state is BreakerState.OPEN
    assert carriers.asked == [None, None]
    await attempt(buyer, PurchaseState("waybill-c"), saved)
    assert carriers.asked[-1] == ("dear",)


async def test_429_waits_for_retry_after_and_does_not_count_against_the_carrier() -> None:
    carriers = ScriptedCarriers({"cheap": "3"}, failures={"cheap": [LIMITED] * 4})
    buyer, saved = purchaser(carriers, clock()), []
    state = PurchaseState("waybill-s1")
    for _ in range(4):
        outcome = await attempt(buyer, state, saved)
        assert outcome.retry_in is not None and outcome.retry_in >= 7.0
        state = outcome.state
    assert buyer.breakers.of("cheap").state is BreakerState.CLOSED
    assert not state.pinned and len(saved) == 1


async def test_the_budget_counts_carrier_calls() -> None:
    carriers = ScriptedCarriers({"cheap": "3"}, failures={"cheap": [TIMEOUT] * 10})
    buyer, saved = purchaser(carriers, clock(), max_attempts=3), []
    first = await attempt(buyer, PurchaseState("waybill-s1"), saved)  # rate + buy
    assert not first.exhausted and first.state.attempts == 2
    buyer.breakers.of("cheap").record_success()  # keep the circuit out of this test
    last = await attempt(buyer, first.state, saved)
    assert last.exhausted and last.retry_in is None and last.state.attempts == 3
    assert last.error == "timed out"


async def test_an_answer_the_adapter_cannot_read_is_a_failed_call_that_may_have_bought() -> None:
    carriers = ScriptedCarriers({"cheap": "3"}, failures={"cheap": [KeyError("tracking_code")]})
    buyer, saved = purchaser(carriers, clock()), []
    outcome = await attempt(buyer, PurchaseState("waybill-s1"), saved)
    assert outcome.label is None and outcome.retry_in is not None
    assert outcome.state.pinned and outcome.state.attempts == 2
    assert "unexpected failure" in (outcome.error or "")
