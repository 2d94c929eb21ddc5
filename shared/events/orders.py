"""Events about orders: what shops publish and what the orders service answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, Field

from shared import topics
from shared.events.base import (
    CountryCode,
    CurrencyCode,
    Email,
    Event,
    Identifier,
    Model,
    Money,
    OrderId,
    PostalCode,
    Quantity,
    ShortText,
    Sku,
    Text,
    Timestamp,
    storable_text,
)

ServiceLevel = Literal["standard", "express"]


class Customer(Model):
    name: ShortText
    email: Email


class Address(Model):
    name: ShortText
    line1: ShortText
    line2: ShortText | None = None
    city: ShortText
    region: ShortText | None = None
    postal_code: PostalCode
    country: CountryCode
    phone: Annotated[str, Field(max_length=32), AfterValidator(storable_text)] | None = None


class OrderLine(Model):
    sku: Sku
    quantity: Quantity
    unit_price: Money


class OrderPlaced(Event):
    """A shop placed an order (inbound, ``orders.placed``)."""

    TOPIC = topics.ORDERS_PLACED

    event_id: UUID  # required of a producer outside Waybill: it is the dedupe key

    order_id: OrderId
    shop_id: Identifier
    placed_at: Timestamp
    service_level: ServiceLevel = "standard"
    currency: CurrencyCode
    customer: Customer
    ship_to: Address
    lines: list[OrderLine] = Field(min_length=1, max_length=100)


class Promise(Model):
    dispatch_by: datetime
    deliver_by: datetime


class OrderAccepted(Event):
    """Orders accepted an order and made its promises.

    Beyond the contract's essential fields it carries what downstream services
    must keep their own copy of (currency, prices, the address to ship to).
    """

    TOPIC = topics.ORDERS_ACCEPTED

    order_id: OrderId
    shop_id: Identifier
    service_level: ServiceLevel
    placed_at: Timestamp
    currency: CurrencyCode
    lines: list[OrderLine]
    ship_to: Address
    promised: Promise
    replaces_order_id: str | None = None


class FieldReason(Model):
    field: str
    message: str


class OrderRejected(Event):
    TOPIC = topics.ORDERS_REJECTED

    order_id: str
    shop_id: str | None = None
    reason: Literal["invalid", "conflict"]
    reasons: list[FieldReason]


class OrderCancellationRequested(Event):
    """A shop asks to cancel an order (inbound)."""

    TOPIC = topics.ORDERS_CANCELLATION_REQUESTED

    event_id: UUID  # required of a producer outside Waybill: it is the dedupe key

    order_id: OrderId
    requested_at: Timestamp
    reason: Annotated[str, Field(max_length=500), AfterValidator(storable_text)] | None = None


class OrderCancelled(Event):
    TOPIC = topics.ORDERS_CANCELLED

    order_id: OrderId
    reason: Text | None = None


class OrderCancellationRejected(Event):
    TOPIC = topics.ORDERS_CANCELLATION_REJECTED

    order_id: OrderId
    reason: Literal["already_shipped", "unknown_order", "already_cancelled", "invalid"]


SlaStage = Literal["accept", "dispatch", "delivery", "return_decision"]


class SlaBreached(Event):
    TOPIC = topics.SLA_BREACHED

    order_id: OrderId
    stage: SlaStage
    deadline: Timestamp
    observed_at: Timestamp


#: a Kafka topic's name, as Kafka allows it
TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]


class RedriveRequested(Event):
    """An order is stuck (internal: orders to every service): each service publishes again
    its events of ``order_id`` on ``topics`` from its outbox, the ones the overdue stage
    needs from the order's ``status`` on; without ``topics`` (a request from an orders that
    did not narrow its re-drives), every one of them. Consumers' inboxes absorb the copies
    they have handled; the one that was lost moves the order on."""

    TOPIC = topics.ORDERS_REDRIVE_REQUESTED

    order_id: OrderId
    stage: SlaStage
    status: str
    requested_at: Timestamp
    topics: list[TopicName] | None = Field(default=None, max_length=100)


class ShipmentLine(Model):
    sku: Sku
    quantity: Quantity
