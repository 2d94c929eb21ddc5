"""Rate quotes reused for the same route and weight band, and never a failure shared."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.carriers.base import (
    CarrierError,
    Label,
    LabelRequest,
    Place,
    Quotes,
    Rate,
    RateRequest,
)
from shared.carriers.pacing import PacedGateway, rate_key, weight_band
from tests.support import wait_for

PARCEL = {"weight_grams": 900, "length_mm": 300, "width_mm": 200, "height_mm": 100}


def request(to: str = "10178", parcel: dict[str, int] | None = None) -> RateRequest:
    return RateRequest(Place("DE", "10115"), Place("DE", to), [parcel or PARCEL])


class Carriers:
    """A gateway that counts rate calls; answers can be made to fail or to miss a carrier."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.unavailable: dict[str, str] = {}
        self.gate: asyncio.Event | None = None

    async def rates(self, request: RateRequest) -> Quotes:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise CarrierError("down", retryable=True)
        rate = Rate("parcelfast", "standard", Decimal("5.90"), "EUR", 2)
        return Quotes([rate], dict(self.unavailable))


def paced(carriers: Carriers, clock: list[float]) -> PacedGateway:
    return PacedGateway(carriers, rate_cache_seconds=60, monotonic=lambda: clock[0])  # type: ignore[arg-type]


def test_the_weight_band_is_the_started_half_kilogram_of_the_billed_weight() -> None:
    assert weight_band({"weight_grams": 500}) == 1
    assert weight_band({"weight_grams": 501}) == 2
    # 400 x 300 x 200 mm is 4.8 kg volumetric: billed by volume, not by its 1 kg
    assert (
        weight_band({"weight_grams": 1000, "length_mm": 400, "width_mm": 300, "height_mm": 200})
        == 10
    )


def test_the_route_is_the_destination_postal_prefix() -> None:
    assert rate_key(request("10178"), postal_prefix=2) == rate_key(
        request("10999"), postal_prefix=2
    )
    assert rate_key(request("10178"), postal_prefix=2) != rate_key(
        request("20095"), postal_prefix=2
    )
    heavier = {**PARCEL, "weight_grams": 2000}
    assert rate_key(request(parcel=heavier), postal_prefix=2) != rate_key(
        request(), postal_prefix=2
    )


async def test_a_quote_is_reused_for_the_same_route_within_its_validity() -> None:
    carriers, clock = Carriers(), [0.0]
    gateway = paced(carriers, clock)
    first = await gateway.rates(request("10178"))
    second = await gateway.rates(request("10999"))
    assert carriers.calls == 1
    assert not first.reused and second.reused and second.rates == first.rates
    clock[0] = 61.0  # expired
    assert not (await gateway.rates(request())).reused
    assert carriers.calls == 2


async def test_an_incomplete_answer_is_not_reused() -> None:
    carriers, clock = Carriers(), [0.0]
    carriers.unavailable = {"swiftpost": "rate limited"}
    gateway = paced(carriers, clock)
    await gateway.rates(request())
    await gateway.rates(request())
    assert carriers.calls == 2


async def test_concurrent_requests_for_a_route_share_one_call_but_not_its_failure() -> None:
    carriers, clock = Carriers(), [0.0]
    carriers.gate = asyncio.Event()
    gateway = paced(carriers, clock)
    asked = [asyncio.create_task(gateway.rates(request())) for _ in range(3)]
    await wait_for(lambda: carriers.calls == 1, timeout=5, interval=0.001)
    carriers.gate.set()
    answers = await asyncio.gather(*asked)
    assert carriers.calls == 1 and sum(a.reused for a in answers) == 2

    carriers.gate, carriers.fail = asyncio.Event(), True
    clock[0] = 100.0
    asked = [asyncio.create_task(gateway.rates(request())) for _ in range(3)]
    await wait_for(lambda: carriers.calls == 2, timeout=5, interval=0.001)
    carriers.gate.set()
    outcomes = await asyncio.gather(*asked, return_exceptions=True)
    assert all(isinstance(o, CarrierError) for o in outcomes)
    # the two that waited on the failed call asked for themselves: a call each
    assert carriers.calls == 4


@pytest.mark.parametrize("seconds", [0])
async def test_reuse_can_be_turned_off(seconds: float) -> None:
    carriers = Carriers()
    gateway = PacedGateway(carriers, rate_cache_seconds=seconds)  # type: ignore[arg-type]
    await gateway.rates(request())
    await gateway.rates(request())
    assert carriers.calls == 2


class BulkCarrier:
    """A gateway that buys in bulk: records each bulk request; can fail one key or all."""

    def __init__(self) -> None:
        self.bulks: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.refuse: set[str] = set()
        self.down = False

    async def buy_labels(
        self, purchases: list[tuple[LabelRequest, str]]
    ) -> list[Label | CarrierError]:
        self.bulks.append([key for _, key in purchases])
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise CarrierError("timed out", retryable=True, maybe_processed=True)
        return [
            CarrierError("refused", retryable=False, status=422)
            if key in self.refuse
            else Label(
                "parcelfast", "standard", f"s-{key}", f"PF{key}", "url", NOW, Decimal(5), "EUR"
            )
            for _, key in purchases
        ]


NOW = datetime(2026, 12, 1, tzinfo=UTC)
LABEL = LabelRequest("parcelfast", "standard", Place("DE", "10115"), {}, [PARCEL], "order")


async def test_purchases_under_way_together_are_bought_in_one_request() -> None:
    carrier = BulkCarrier()
    carrier.gate = asyncio.Event()
    gateway = PacedGateway(carrier)  # type: ignore[arg-type]
    first = asyncio.create_task(gateway.buy_label(LABEL, idempotency_key="k0"))
    await wait_for(lambda: len(carrier.bulks) == 1, timeout=5, interval=0.001)
    rest = [
        asyncio.create_task(gateway.buy_label(LABEL, idempotency_key=f"k{i}")) for i in (1, 2, 3)
    ]
    await wait_for(lambda: len(gateway._bulk["parcelfast"]._queue) == 3, timeout=5, interval=0.001)
    carrier.gate.set()
    labels = await asyncio.gather(first, *rest)
    assert carrier.bulks == [["k0"], ["k1", "k2", "k3"]]
    assert [label.tracking_number for label in labels] == ["PFk0", "PFk1", "PFk2", "PFk3"]


async def test_each_purchase_gets_its_own_outcome_and_a_failed_request_fails_them_all() -> None:
    carrier = BulkCarrier()
    carrier.refuse = {"bad"}
    gateway = PacedGateway(carrier)  # type: ignore[arg-type]
    good, bad = await asyncio.gather(
        gateway.buy_label(LABEL, idempotency_key="good"),
        gateway.buy_label(LABEL, idempotency_key="bad"),
        return_exceptions=True,
    )
    assert isinstance(good, Label) and isinstance(bad, CarrierError) and bad.status == 422
    carrier.down = True
    outcomes = await asyncio.gather(
        gateway.buy_label(LABEL, idempotency_key="x"),
        gateway.buy_label(LABEL, idempotency_key="y"),
        return_exceptions=True,
    )
    assert all(isinstance(o, CarrierError) and o.maybe_processed for o in outcomes)
    assert outcomes[0] is not outcomes[1]  # each purchase raises its own exception
