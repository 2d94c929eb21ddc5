"""Events about returns, refunds and exchanges (returns service)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, Field, model_validator

from shared import topics
from shared.events.base import (
    CurrencyCode,
    Event,
    Identifier,
    Model,
    Money,
    OrderId,
    Quantity,
    Sku,
    StaffRef,
    Text,
    Timestamp,
    storable_text,
)


class ReturnLine(Model):
    sku: Sku
    quantity: Quantity


class ReturnRequested(Event):
    """A customer, through the shop, asks to return goods (inbound).

    Inside the window a return is unconditional: ``reason`` is never required.
    """

    TOPIC = topics.RETURNS_REQUESTED

    event_id: UUID  # required of a producer outside Waybill: it is the dedupe key

    return_id: Identifier
    order_id: Identifier
    requested_at: Timestamp
    lines: list[ReturnLine] = Field(min_length=1, max_length=100)
    resolution: Literal["refund", "exchange"] = "refund"
    exchange_for: list[ReturnLine] | None = Field(default=None, max_length=100)
    reason: Annotated[str, Field(max_length=1000), AfterValidator(storable_text)] | None = None

    @model_validator(mode="after")
    def _exchange_needs_nothing_for_refund(self) -> ReturnRequested:
        if self.resolution == "refund" and self.exchange_for:
            raise ValueError('exchange_for is only allowed when resolution is "exchange"')
        return self


class ReturnLabel(Model):
    carrier: Text
    tracking_number: Text
    label_url: Text


class ReturnApproved(Event):
    """A return was approved and its label bought.

    Beyond the contract's fields: ``lines`` (what is coming back), ``warehouse_id`` (the
    warehouse that shipped them and receives them) and ``resolution``, so that the
    warehouse can expect the parcel by RMA.
    """

    TOPIC = topics.RETURNS_APPROVED

    return_id: Identifier
    order_id: Identifier
    rma: Text
    return_label: ReturnLabel
    lines: list[ReturnLine] = Field(default_factory=list)
    warehouse_id: Identifier | None = None
    resolution: Literal["refund", "exchange"] = "refund"


ReturnRejectionReason = Literal[
    "window_expired",
    "not_delivered",
    "unknown_order",
    "quantity_exceeds_delivered",
    "invalid",
]


class ReturnRejected(Event):
    TOPIC = topics.RETURNS_REJECTED

    return_id: str
    order_id: str
    reason: ReturnRejectionReason


class ReceivedLine(Model):
    sku: Sku
    quantity: Quantity
    condition: Literal["sellable", "damaged"]


class ReturnReceived(Event):
    TOPIC = topics.RETURNS_RECEIVED

    return_id: Identifier
    order_id: Identifier
    warehouse_id: Identifier | None = None
    lines: list[ReceivedLine] = Field(min_length=1, max_length=100)
    #: who received the parcel (absent: a role token)
    received_by: StaffRef | None = None


class RefundRequested(Event):
    TOPIC = topics.REFUNDS_REQUESTED

    return_id: Identifier
    order_id: Identifier
    amount: Money
    currency: CurrencyCode


class ReturnWindow(Model):
    """How a return decision was reached: kept for the timeline and for ops."""

    delivered_at: Timestamp
    closes_at: Timestamp


class ReturnScanned(Event):
    """Warehouse staff received a return parcel on the warehouse page (internal: inventory
    to returns). Returns checks it against the return like ``POST /returns/{id}/received``
    and publishes ``returns.received``."""

    TOPIC = topics.WAREHOUSE_RETURN_SCANNED

    return_id: Identifier
    warehouse_id: Identifier
    lines: list[ReceivedLine] = Field(min_length=1, max_length=100)
    received_by: StaffRef | None = None


class ExchangeRequested(Event):
    """An approved exchange (internal: returns to orders): orders creates the replacement
    order ``replacement_order_id`` for ``lines`` from its own copy of ``order_id``."""

    TOPIC = topics.RETURNS_EXCHANGE_REQUESTED

    return_id: Identifier
    order_id: Identifier
    #: the id the replacement order is placed under: an order id like any other
    replacement_order_id: OrderId
    lines: list[ReturnLine] = Field(min_length=1, max_length=100)
