"""Events about shipments (shipping service)."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from shared import topics
from shared.events.base import Event, Identifier, OrderId, Text, Timestamp
from shared.events.inventory import Origin
from shared.events.orders import ShipmentLine

TrackingStatus = Literal[
    "pre_transit",
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "delivered",
    "delivery_failed",
    "available_for_pickup",
    "return_to_sender",
    "cancelled",
    "unknown",
]


class ShipmentLabelCreated(Event):
    TOPIC = topics.SHIPMENTS_LABEL_CREATED

    order_id: OrderId
    shipment_id: UUID
    warehouse_id: Identifier | None = None
    carrier: Text
    service: Text
    tracking_number: Text
    label_url: Text
    estimated_delivery: Timestamp
    at_risk: bool = False
    lines: list[ShipmentLine] = Field(default_factory=list)


class ShipmentShipped(Event):
    TOPIC = topics.SHIPMENTS_SHIPPED

    order_id: OrderId
    shipment_id: UUID
    carrier: Text
    tracking_number: Text
    shipped_at: Timestamp


class ShipmentDelivered(Event):
    """The carrier delivered a shipment; ``delivered_at`` is the carrier's time.

    ``warehouse_id`` and ``lines`` (beyond the contract's essentials) tell returns
    which goods this delivery held, so each line's return window counts from its
    own shipment's delivery.
    """

    TOPIC = topics.SHIPMENTS_DELIVERED

    order_id: OrderId
    shipment_id: UUID
    delivered_at: Timestamp
    source: Literal["webhook", "poll", "manual"]
    carrier: Text | None = None
    warehouse_id: Identifier | None = None
    ship_from: Origin | None = None
    lines: list[ShipmentLine] = Field(default_factory=list)


#: what went wrong with a label rather than a parcel (an addition to the contract's
#: tracking vocabulary, see docs/architecture.md)
LabelProblem = Literal["label_failed", "void_refused"]


class ShipmentException(Event):
    """A shipment that needs attention: a parcel in trouble, or a label problem.

    ``status`` is a tracking status, or ``label_failed`` (the retry budget is spent) or
    ``void_refused`` (a cancelled order's label could not be voided, usually because the
    parcel was already scanned).
    """

    TOPIC = topics.SHIPMENTS_EXCEPTION

    order_id: OrderId
    shipment_id: UUID
    status: TrackingStatus | LabelProblem
    detail: Text
