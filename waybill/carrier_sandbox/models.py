"""Request and response bodies of the carrier sandbox, and its configuration."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from shared.events.shipping import TrackingStatus
from waybill.carrier_sandbox.carriers import CARRIERS, services_of, tariff_for

CountryCode = Annotated[
    str, StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z]{2}$")
]
PostalCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# Money goes over the wire as a decimal string ("12.34"), never a float.
Money = Annotated[Decimal, PlainSerializer(lambda amount: f"{amount:.2f}", return_type=str)]


class SandboxConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    webhook_url_template: str | None = Field(
        default=None,
        description="where tracking webhooks go; `{carrier}` is replaced by the carrier name",
        examples=["http://127.0.0.1:8083/webhooks/carriers/{carrier}"],
    )
    webhook_secret: str = Field(min_length=1)
    public_url: str = Field(description="base URL of this sandbox, used in label_url")
    auto_advance: bool = False
    auto_advance_step_seconds: float = Field(default=2.0, ge=0)
    seed: int | None = None
    webhook_max_attempts: int = Field(default=5, ge=1, le=20)
    webhook_retry_base_seconds: float = Field(default=0.5, ge=0)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator("webhook_url_template")
    @classmethod
    def _template_takes_only_carrier(cls, template: str | None) -> str | None:
        if template is not None:
            try:
                template.format(carrier="parcelfast")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"only {{carrier}} may be substituted: {error}") from error
        return template

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("public_url must be an http(s) URL")
        return url.rstrip("/")

    def webhook_url(self, carrier: str) -> str | None:
        if self.webhook_url_template is None:
            return None
        return self.webhook_url_template.format(carrier=carrier)


class Location(BaseModel):
    """Where a parcel starts: enough for rating. Address fields are accepted and ignored."""

    country: CountryCode
    postal_code: PostalCode


class Address(Location):
    name: Text
    line1: Text
    line2: Annotated[str, StringConstraints(max_length=200)] | None = None
    city: Text
    region: Annotated[str, StringConstraints(max_length=100)] | None = None
    company: Annotated[str, StringConstraints(max_length=200)] | None = None
    phone: Annotated[str, StringConstraints(max_length=40)] | None = None
    email: Annotated[str, StringConstraints(max_length=200)] | None = None


class Parcel(BaseModel):
    weight_grams: int = Field(gt=0, le=70_000)
    length_mm: int = Field(gt=0, le=3_000)
    width_mm: int = Field(gt=0, le=3_000)
    height_mm: int = Field(gt=0, le=3_000)


def _known_carriers(carriers: list[str]) -> list[str]:
    unknown = sorted(set(carriers) - set(CARRIERS))
    if unknown:
        raise ValueError(f"unknown carriers {unknown}; known: {list(CARRIERS)}")
    return carriers


CarrierNames = Annotated[list[str], AfterValidator(_known_carriers)]


class RateRequest(BaseModel):
    ship_from: Location
    ship_to: Location
    parcels: list[Parcel] = Field(min_length=1, max_length=20)
    carriers: CarrierNames | None = Field(
        default=None, description="only quote these carriers (default: all)"
    )


class Rate(BaseModel):
    carrier: str
    service: str
    price: Money
    currency: str
    transit_days: int


class Unavailable(BaseModel):
    carrier: str
    reason: str


class RateResponse(BaseModel):
    rates: list[Rate]
    unavailable: list[Unavailable] = Field(
        default_factory=list, description="carriers left out by injected faults"
    )


class ShipmentRequest(BaseModel):
    carrier: str
    service: str
    ship_from: Location
    ship_to: Address
    parcels: list[Parcel] = Field(min_length=1, max_length=20)
    reference: Annotated[str, StringConstraints(max_length=100)] | None = None

    @field_validator("carrier")
    @classmethod
    def _known_carrier(cls, carrier: str) -> str:
        if carrier not in CARRIERS:
            raise ValueError(f"unknown carrier; known: {list(CARRIERS)}")
        return carrier

    @field_validator("service")
    @classmethod
    def _known_service(cls, service: str, info: ValidationInfo) -> str:
        carrier = info.data.get("carrier")
        # Without a valid carrier its error is reported already; nothing to check against.
        if carrier is not None and tariff_for(carrier, service) is None:
            raise ValueError(f"{carrier} has no service {service!r}; it has {services_of(carrier)}")
        return service


class Shipment(BaseModel):
    shipment_id: UUID
    carrier: str
    service: str
    tracking_number: str
    label_url: str
    estimated_delivery: datetime
    price: Money
    currency: str
    reference: str | None = None
    created_at: datetime
    status: Literal["purchased", "cancelled"] = "purchased"
    cancelled_at: datetime | None = None


#: labels one batch request may buy
MAX_BATCH = 100


class BatchShipmentItem(ShipmentRequest):
    """One label of a batch, with the key a single purchase would send as its header."""

    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=255)]


class BatchShipmentRequest(BaseModel):
    shipments: list[BatchShipmentItem] = Field(min_length=1, max_length=MAX_BATCH)


class BatchShipmentResult(BaseModel):
    """What buying one label of a batch came to: the status a single purchase would have
    answered (201 bought, 200 replayed, 429, 500, 503, 409, 422) and the shipment or why
    not."""

    idempotency_key: str
    status: int
    shipment: Shipment | None = None
    detail: str | None = None
    retry_after_seconds: float | None = None


class BatchShipmentResponse(BaseModel):
    results: list[BatchShipmentResult]


class LabelRecord(BaseModel):
    """A label as the sandbox's inspector lists it (GET /sandbox/labels)."""

    shipment_id: UUID
    carrier: str
    service: str
    tracking_number: str
    reference: str | None
    idempotency_key: str
    status: Literal["purchased", "cancelled"]
    created_at: datetime


class LabelList(BaseModel):
    labels: list[LabelRecord]


class TrackingEvent(BaseModel):
    event_id: UUID
    status: TrackingStatus
    at: datetime
    description: str


class Tracker(BaseModel):
    tracking_number: str
    carrier: str
    status: TrackingStatus
    events: list[TrackingEvent]


class TrackingEventRequest(BaseModel):
    status: TrackingStatus
    at: AwareDatetime | None = Field(default=None, description="RFC 3339; default now")
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    push: bool = True


class WebhookPayload(BaseModel):
    """The JSON body POSTed to shipping for each tracking event."""

    event_id: UUID
    carrier: str
    tracking_number: str
    status: TrackingStatus
    occurred_at: datetime
    description: str


class WebhookAttempt(BaseModel):
    event_id: UUID
    carrier: str
    tracking_number: str
    tracking_status: TrackingStatus
    url: str
    attempt: int
    http_status: int | None = Field(description="None when no HTTP answer came back")
    error: str | None = None
    delivered: bool
    at: datetime


class WebhookLog(BaseModel):
    attempts: list[WebhookAttempt]


class FaultSettings(BaseModel):
    error_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    retry_after_seconds: int = Field(default=1, ge=0, le=3600)
    latency_ms: int = Field(default=0, ge=0, le=120_000)
    outage: bool = False
    carriers: CarrierNames | None = Field(default=None, description="null: every carrier")
    timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="how long a timed-out request hangs"
    )

    def covers(self, carrier: str) -> bool:
        return self.carriers is None or carrier in self.carriers


class Stats(BaseModel):
    labels_by_carrier: dict[str, int]
    requests: dict[str, int]
    rate_limited: int
    errors: int
    timeouts: int
    outages: int
    webhooks_attempted: int
    webhooks_delivered: int
    labels_cancelled: int = Field(description="labels voided through POST .../cancel")
    retry_after_honoured: int = Field(
        description="label requests that came back after a 429 no sooner than its Retry-After"
    )
    retry_after_violations: int = Field(
        description="label requests that came back after a 429 before its Retry-After"
    )
    label_requests: int = Field(
        default=0,
        description="labels asked for, one by one or in batches (each item of a batch counts)",
    )


class ErrorBody(BaseModel):
    detail: str
