"""Events about stock, pick lists and packing (inventory service)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, Field

from shared import topics
from shared.events.base import (
    CountryCode,
    Event,
    Identifier,
    Model,
    OrderId,
    PostalCode,
    Sku,
    StaffRef,
    storable_text,
)
from shared.events.orders import ShipmentLine

#: where stock lies in a warehouse ("A-01-3"); none: the warehouse's default bin
BinLabel = Annotated[str, Field(max_length=64), AfterValidator(storable_text)]


class StockReceived(Event):
    """Goods arrived at a warehouse (inbound, also ``POST /stock/receipts``)."""

    TOPIC = topics.STOCK_RECEIVED

    event_id: UUID  # required of a producer outside Waybill: it is the dedupe key

    warehouse_id: Identifier
    sku: Sku
    quantity: int = Field(ge=1, le=1_000_000)
    bin: BinLabel | None = None


class Allocation(Model):
    warehouse_id: Identifier
    sku: Sku
    quantity: int = Field(ge=1)


class MissingStock(Model):
    sku: Sku
    quantity: int = Field(ge=1)


class StockReserved(Event):
    TOPIC = topics.STOCK_RESERVED

    order_id: OrderId
    allocations: list[Allocation]


class StockBackordered(Event):
    TOPIC = topics.STOCK_BACKORDERED

    order_id: OrderId
    missing: list[MissingStock]


class StockReleased(Event):
    TOPIC = topics.STOCK_RELEASED

    order_id: OrderId
    allocations: list[Allocation]


class PicklistLine(Model):
    order_id: OrderId
    sku: Sku
    quantity: int = Field(ge=1)
    bin: str


class PicklistCreated(Event):
    TOPIC = topics.PICKLISTS_CREATED

    picklist_id: UUID
    warehouse_id: Identifier
    lines: list[PicklistLine]

    def partition_key(self) -> str | None:
        return self.warehouse_id


class Parcel(Model):
    weight_grams: int = Field(ge=1, le=70_000)
    length_mm: int = Field(ge=1, le=3_000)
    width_mm: int = Field(ge=1, le=3_000)
    height_mm: int = Field(ge=1, le=3_000)


class Origin(Model):
    """Where a shipment leaves from: what a carrier needs to quote and collect."""

    country: CountryCode
    postal_code: PostalCode


class OrderPacked(Event):
    """The warehouse packed an order's lines into parcels.

    ``lines`` and ``ship_from`` (beyond the contract's essentials) say which goods the
    parcels hold and where they leave from, so shipping and returns need not ask.
    """

    TOPIC = topics.ORDERS_PACKED

    order_id: OrderId
    warehouse_id: Identifier
    parcels: list[Parcel] = Field(min_length=1, max_length=50)
    lines: list[ShipmentLine] = Field(default_factory=list)
    ship_from: Origin | None = None
    #: who packed (absent: a role token, or the automatic picker) and who picked the lines
    packed_by: StaffRef | None = None
    picked_by: list[StaffRef] = Field(default_factory=list, max_length=100)


class StockRestocked(Event):
    TOPIC = topics.STOCK_RESTOCKED

    return_id: Identifier
    order_id: OrderId | None = None
    warehouse_id: Identifier
    sku: Sku
    quantity: int = Field(ge=1)
