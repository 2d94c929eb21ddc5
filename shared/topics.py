"""Kafka topic names: the one place they are spelled out."""

from typing import Final

ORDERS_PLACED: Final = "orders.placed"
ORDERS_CANCELLATION_REQUESTED: Final = "orders.cancellation-requested"
ORDERS_ACCEPTED: Final = "orders.accepted"
ORDERS_REJECTED: Final = "orders.rejected"
ORDERS_CANCELLED: Final = "orders.cancelled"
ORDERS_CANCELLATION_REJECTED: Final = "orders.cancellation-rejected"
ORDERS_PACKED: Final = "orders.packed"
STOCK_RECEIVED: Final = "inventory.stock-received"
STOCK_RESERVED: Final = "stock.reserved"
STOCK_BACKORDERED: Final = "stock.backordered"
STOCK_RELEASED: Final = "stock.released"
STOCK_RESTOCKED: Final = "stock.restocked"
PICKLISTS_CREATED: Final = "picklists.created"
SHIPMENTS_LABEL_CREATED: Final = "shipments.label-created"
SHIPMENTS_SHIPPED: Final = "shipments.shipped"
SHIPMENTS_DELIVERED: Final = "shipments.delivered"
SHIPMENTS_EXCEPTION: Final = "shipments.exception"
SLA_BREACHED: Final = "sla.breached"
RETURNS_REQUESTED: Final = "returns.requested"
RETURNS_APPROVED: Final = "returns.approved"
RETURNS_REJECTED: Final = "returns.rejected"
RETURNS_RECEIVED: Final = "returns.received"
REFUNDS_REQUESTED: Final = "refunds.requested"
# internal helper events (not in the contract): see docs/architecture.md
RETURNS_EXCHANGE_REQUESTED: Final = "returns.exchange-requested"
WAREHOUSE_RETURN_SCANNED: Final = "warehouse.return-scanned"
ORDERS_REDRIVE_REQUESTED: Final = "orders.redrive-requested"
# who may call the HTTP APIs: shop keys (orders owns them) and staff keys (inventory owns
# them), learnt by every service that accepts them (docs/tenancy.md)
SHOPS_KEY_CHANGED: Final = "shops.key-changed"
STAFF_KEY_CHANGED: Final = "staff.key-changed"

DLQ_SUFFIX: Final = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic that belongs to ``topic``."""
    return topic + DLQ_SUFFIX


def is_dead_letter_topic(topic: str) -> bool:
    return topic.endswith(DLQ_SUFFIX)
