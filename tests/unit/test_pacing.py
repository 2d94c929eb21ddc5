"""Rate quotes reused for the same route and weight band, and never a failure shared."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from shared.carriers.base import CarrierError, Place, Quotes, Rate, RateRequest
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
