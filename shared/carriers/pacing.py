"""What sits between the label purchaser and a carrier gateway: reused rate quotes and a
bound on concurrent calls per carrier.

Rates: carriers price by zone and billed weight, so an aggregator answers parcels of the
same route and weight band with the same quote. :class:`PacedGateway` reuses a quote for
``rate_cache_seconds`` for a request with the same origin (country and postal code), the
same destination country and postal-code prefix, parcels in the same started half
kilogram of billed weight (the larger of actual and volumetric, 5000 cm3 per kg) with the
same dimensions, and the same carriers asked. Only complete answers are reused: a quote
in which a carrier was unavailable is not. Concurrent requests for one key share a call.
The label is always bought at the carrier's own price for that parcel; a reused quote
only chooses the carrier and service.

Concurrency: at most ``max_concurrent`` calls per carrier at once (rates and tracking,
which are not of one carrier, share one more such bound), so a burst of purchases queues
here instead of overrunning a carrier's API.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shared.carriers.base import (
    CarrierGateway,
    Label,
    LabelRequest,
    Quotes,
    RateRequest,
    TrackingEvent,
)

#: billed per started half kilogram, of the larger of actual and volumetric weight
WEIGHT_BAND_GRAMS = 500
VOLUMETRIC_MM3_PER_GRAM = 5000
#: the limit shared by calls that are not of one carrier (rates, tracking)
ANY_CARRIER = "*"

RateKey = tuple[Any, ...]


def weight_band(parcel: dict[str, int]) -> int:
    volume = parcel.get("length_mm", 0) * parcel.get("width_mm", 0) * parcel.get("height_mm", 0)
    billed = max(parcel.get("weight_grams", 0), math.ceil(volume / VOLUMETRIC_MM3_PER_GRAM))
    return max(1, math.ceil(billed / WEIGHT_BAND_GRAMS))


def _postal(code: str) -> str:
    return "".join(c for c in code.upper() if c.isalnum())


def rate_key(request: RateRequest, *, postal_prefix: int) -> RateKey:
    """What makes two rate requests the same for a carrier's tariff."""
    return (
        request.ship_from.country.upper(),
        _postal(request.ship_from.postal_code),
        request.ship_to.country.upper(),
        _postal(request.ship_to.postal_code)[:postal_prefix],
        tuple(
            sorted(
                (
                    weight_band(p),
                    p.get("length_mm", 0),
                    p.get("width_mm", 0),
                    p.get("height_mm", 0),
                )
                for p in request.parcels
            )
        ),
        request.carriers,
    )


class PacedGateway:
    """A :class:`CarrierGateway` that reuses rate quotes and bounds concurrent calls."""

    def __init__(
        self,
        gateway: CarrierGateway,
        *,
        rate_cache_seconds: float = 60.0,
        postal_prefix: int = 2,
        max_concurrent: int = 32,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self._ttl = rate_cache_seconds
        self._postal_prefix = postal_prefix
        self._max_concurrent = max_concurrent
        self._monotonic = monotonic
        self._quotes: dict[RateKey, tuple[float, Quotes]] = {}
        self._asking: dict[RateKey, asyncio.Future[Quotes]] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        #: rate requests answered from the cache, and those that went to the carrier
        self.rates_reused = 0
        self.rates_asked = 0

    def _limit(self, carrier: str) -> asyncio.Semaphore:
        limit = self._limits.get(carrier)
        if limit is None:
            limit = self._limits[carrier] = asyncio.Semaphore(self._max_concurrent)
        return limit

    async def rates(self, request: RateRequest) -> Quotes:
        if self._ttl <= 0:
            return await self._ask(request)
        key = rate_key(request, postal_prefix=self._postal_prefix)
        now = self._monotonic()
        cached = self._quotes.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            self.rates_reused += 1
            return replace(cached[1], reused=True)
        asking = self._asking.get(key)
        if asking is not None:
            # the same route is being asked right now: share its answer, not its failure
            with contextlib.suppress(Exception):
                quotes = await asyncio.shield(asking)
                self.rates_reused += 1
                return replace(quotes, reused=True)
            return await self._ask(request)
        future: asyncio.Future[Quotes] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        try:
            quotes = await self._ask(request)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the callers that wait on it ask for themselves
            raise
        finally:
            self._asking.pop(key, None)
        future.set_result(quotes)
        if not quotes.unavailable:
            self._quotes[key] = (now, quotes)
            if len(self._quotes) > 10_000:  # routes seen long ago go first
                for stale in [k for k, (t, _) in self._quotes.items() if now - t >= self._ttl]:
                    del self._quotes[stale]
        return quotes

    async def _ask(self, request: RateRequest) -> Quotes:
        self.rates_asked += 1
        async with self._limit(ANY_CARRIER):
            return await self.gateway.rates(request)

    async def buy_label(self, request: LabelRequest, *, idempotency_key: str) -> Label:
        async with self._limit(request.carrier):
            return await self.gateway.buy_label(request, idempotency_key=idempotency_key)

    async def cancel_label(self, carrier: str, carrier_shipment_id: str) -> None:
        async with self._limit(carrier):
            await self.gateway.cancel_label(carrier, carrier_shipment_id)

    async def track(self, tracking_number: str) -> list[TrackingEvent]:
        async with self._limit(ANY_CARRIER):
            return await self.gateway.track(tracking_number)

    def parse_webhook(self, headers: dict[str, str], body: bytes, *, now: float) -> TrackingEvent:
        return self.gateway.parse_webhook(headers, body, now=now)

    async def close(self) -> None:
        await self.gateway.close()
