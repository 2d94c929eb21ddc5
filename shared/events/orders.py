"""Events about orders: what shops publish and what the orders service answers."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

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
    Quantity,
    ShortText,
    Sku,
    Timestamp,
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
    postal_code: str = Field(min_length=1, max_length=16)
    country: CountryCode
    phone: str | None = Field(default=None, max_length=32)


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
    reason: str | None = Field(default=None, max_length=500)


class OrderCancelled(Event):
    TOPIC = topics.ORDERS_CANCELLED

    order_id: OrderId
    reason: str | None = None


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


class RedriveRequested(Event):
    """An order is stuck (internal: orders to every service): each service publishes again
    the events of ``order_id`` from its outbox. Consumers' inboxes absorb the copies they
    have handled; the one that was lost (a broker restart) moves the order on."""

    TOPIC = topics.ORDERS_REDRIVE_REQUESTED

    order_id: OrderId
    stage: SlaStage
    status: str
    requested_at: Timestamp


class ShipmentLine(Model):
    sku: Sku
    quantity: Quantity
