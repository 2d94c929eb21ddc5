"""The carrier adapter interface and the values that cross it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol


class CarrierError(Exception):
    """A failed carrier call. ``retryable`` failures may succeed later (5xx, 429, timeouts)."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class Place:
    country: str
    postal_code: str


@dataclass(frozen=True)
class RateRequest:
    ship_from: Place
    ship_to: Place
    parcels: list[dict[str, int]]


@dataclass(frozen=True)
class Rate:
    carrier: str
    service: str
    price: Decimal
    currency: str
    transit_days: int


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
    """Rates, labels bought once per idempotency key, tracking, webhooks."""

    async def rates(self, request: RateRequest) -> list[Rate]: ...

    async def buy_label(self, request: LabelRequest, *, idempotency_key: str) -> Label: ...

    async def track(self, tracking_number: str) -> list[TrackingEvent]: ...

    def parse_webhook(self, headers: dict[str, str], body: bytes, *, now: float) -> TrackingEvent:
        """Verify the signature over the raw body and return the tracking event it carries."""
        ...

    async def close(self) -> None: ...
