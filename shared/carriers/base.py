"""The carrier adapter interface and the values that cross it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol


class CarrierError(Exception):
    """A failed carrier call.

    ``retryable``: it may succeed later (5xx, 429, timeouts). ``maybe_processed``: the
    carrier may have acted on it even so (a timeout after the request was sent, a 500), so a
    label purchase must be retried with the same carrier and key, never moved elsewhere.
    A request refused before it was handled (connection refused, 429, 503, 4xx) was not.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        maybe_processed: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        #: the HTTP status the carrier answered with, if it answered
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.maybe_processed = maybe_processed


@dataclass(frozen=True)
class Place:
    country: str
    postal_code: str


@dataclass(frozen=True)
class RateRequest:
    ship_from: Place
    ship_to: Place
    parcels: list[dict[str, int]]
    #: only these carriers (None: every carrier the account has)
    carriers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Rate:
    carrier: str
    service: str
    price: Decimal
    currency: str
    transit_days: int


@dataclass(frozen=True)
class Quotes:
    """What a rate request brought back: rates, and the carriers that could not quote."""

    rates: list[Rate]
    #: carrier -> why it gave no rate (down, rate-limited, no service for this route)
    unavailable: dict[str, str] = field(default_factory=dict)
    #: an earlier answer for the same route, reused without a carrier call
    reused: bool = False


@dataclass(frozen=True)
class LabelRequest:
    carrier: str
    service: str
    ship_from: Place
    ship_to: dict[str, Any]
    parcels: list[dict[str, int]]
    reference: str


@dataclass(frozen=True)
class Label:
    carrier: str
    service: str
    carrier_shipment_id: str
    tracking_number: str
    label_url: str
    estimated_delivery: datetime
    price: Decimal
    currency: str


@dataclass(frozen=True)
class TrackingEvent:
    tracking_number: str
    status: str  # the project's vocabulary (CONTRACT section 4)
    at: datetime
    event_id: str | None = None
    description: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class CarrierGateway(Protocol):
    """Rates, labels bought once per idempotency key and voided, tracking, webhooks."""

    async def rates(self, request: RateRequest) -> Quotes: ...

    async def buy_label(self, request: LabelRequest, *, idempotency_key: str) -> Label: ...

    async def cancel_label(self, carrier: str, carrier_shipment_id: str) -> None:
        """Void an unused label (refunded by the carrier). A label already scanned is
        refused with a non-retryable CarrierError."""
        ...

    async def track(self, tracking_number: str) -> list[TrackingEvent]: ...

    def parse_webhook(self, headers: dict[str, str], body: bytes, *, now: float) -> TrackingEvent:
        """Verify the signature over the raw body and return the tracking event it carries."""
        ...

    async def close(self) -> None: ...
