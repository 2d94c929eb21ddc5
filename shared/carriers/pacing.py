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

Bulk purchase: where the carrier API buys several labels in one request (the sandbox's
``POST /v1/shipments/batch``, as aggregators' bulk endpoints do), the purchases of one
carrier that are under way together go in one request, up to ``BATCH_MAX``: the first
goes at once, those that come while a request is out go in the next. Each label keeps its
own idempotency key and gets its own outcome, so the purchaser (retries, pinning, the
breaker, the budget) sees exactly what a single purchase would have answered; a request
that fails as a whole fails each of its labels the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from shared import telemetry
from shared.batching import Coalescer
from shared.carriers.base import (
    CarrierError,
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


#: labels in one bulk purchase at most
BATCH_MAX = 100

#: a label to buy in a bulk purchase: the request, its idempotency key, its trace context
_Purchase = tuple[LabelRequest, str, Context]


class PacedGateway:
    """A :class:`CarrierGateway` that reuses rate quotes, bounds concurrent calls, and buys
    the labels of one carrier in bulk where its gateway can (``buy_labels``)."""

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
        self._bulk: dict[str, Coalescer[_Purchase, Label | CarrierError]] = {}
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
        if not hasattr(self.gateway, "buy_labels"):
            async with self._limit(request.carrier):
                return await self.gateway.buy_label(request, idempotency_key=idempotency_key)
        bulk = self._bulk.get(request.carrier)
        if bulk is None:
            bulk = self._bulk[request.carrier] = Coalescer(
                partial(self._buy_in_bulk, request.carrier), max_items=BATCH_MAX
            )
        outcome = await bulk.submit((request, idempotency_key, otel_context.get_current()))
        if isinstance(outcome, CarrierError):
            raise outcome
        return outcome

    async def _buy_in_bulk(
        self, carrier: str, purchases: Sequence[_Purchase]
    ) -> list[Label | CarrierError]:
        buy_labels = self.gateway.buy_labels  # type: ignore[attr-defined]
        requests = [(request, key) for request, key, _ in purchases]
        # one label: its request is a span of its purchase; several: of a bulk purchase's
        # own trace, linked to each purchase's
        if len(purchases) == 1:
            scope = otel_context.attach(purchases[0][2])
            span: Any = contextlib.nullcontext()
        else:
            scope = None
            span = telemetry.span(
                "buy labels",
                service="carriers",
                parent=telemetry.NEW_TRACE,
                attributes={"waybill.carrier": carrier, "waybill.labels": len(purchases)},
                links=[
                    link
                    for _, _, context in purchases[: telemetry.BATCH_LINKS]
                    for link in telemetry.link_to(telemetry.headers_of(context))
                ],
            )
        try:
            with span:
                async with self._limit(carrier):
                    outcomes: list[Label | CarrierError] = await buy_labels(requests)
        except CarrierError as exc:
            return [_copy(exc) for _ in purchases]
        except Exception as exc:  # an answer the adapter could not read: a failed call
            failure = CarrierError(
                f"unexpected failure: {exc!r}", retryable=True, maybe_processed=True
            )
            return [_copy(failure) for _ in purchases]
        finally:
            if scope is not None:
                otel_context.detach(scope)
        return outcomes

    async def cancel_label(self, carrier: str, carrier_shipment_id: str) -> None:
        async with self._limit(carrier):
            await self.gateway.cancel_label(carrier, carrier_shipment_id)

    async def track(self, tracking_number: str) -> list[TrackingEvent]:
        async with self._limit(ANY_CARRIER):
            return await self.gateway.track(tracking_number)

    def parse_webhook(self, headers: dict[str, str], body: bytes, *, now: float) -> TrackingEvent:
        return self.gateway.parse_webhook(headers, body, now=now)

    async def close(self) -> None:
        for bulk in self._bulk.values():
            await bulk.close()
        await self.gateway.close()


def _copy(error: CarrierError) -> CarrierError:
    """The same failure for another label (an exception is raised in one place only)."""
    return CarrierError(
        str(error),
        retryable=error.retryable,
        retry_after=error.retry_after,
        maybe_processed=error.maybe_processed,
        status=error.status,
    )
