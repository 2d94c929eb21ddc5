"""Subscribers of the orders service: validate, call the handler, and that is all.

Orders consumes every outbound topic to keep each order's status and timeline: it
never reads another service's tables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from services.orders import handlers, sla
from services.orders.shop_promises import ShopPromises
from shared.clock import Clock
from shared.db import UnitOfWork
from shared.events import (
    Event,
    ExchangeRequested,
    OrderCancellationRequested,
    OrderPacked,
    OrderPlaced,
    PicklistCreated,
    RefundRequested,
    ReturnApproved,
    ReturnReceived,
    ReturnRejected,
    ReturnRequested,
    ShipmentDelivered,
    ShipmentException,
    ShipmentLabelCreated,
    ShipmentShipped,
    SlaBreached,
    StockBackordered,
    StockReleased,
    StockReserved,
    StockRestocked,
)
from shared.messaging import EventConsumer, InvalidEvent

E = TypeVar("E", bound=Event)

#: the largest order record accepted (100 lines of long SKUs fit in a fraction of it)
MAX_ORDER_BYTES = 256 * 1024


async def _ignore(invalid: InvalidEvent, uow: UnitOfWork) -> bool:
    return True  # the service that owns this inbound topic answers invalid input


def _progress(
    consumer: EventConsumer,
    model: type[E],
    status: str,
    *,
    at: Callable[[E], datetime] = lambda e: e.occurred_at,
    detail: Callable[[E], dict[str, Any]] = lambda e: {},
    ignore_invalid: bool = False,
    then: Callable[[E, UnitOfWork], Awaitable[None]] | None = None,
) -> None:
    """Follow ``model``'s topic: each event adds ``status`` to its order's timeline (and
    ``then`` does what else the event means, in the same transaction)."""

    @consumer.handles(model, on_invalid=_ignore if ignore_invalid else None)
    async def follow(event: E, uow: UnitOfWork) -> None:
        order_id = event.partition_key()
        if order_id is None:
            return
        await handlers.record_progress(
            uow,
            order_id=order_id,
            status=status,
            at=at(event),
            topic=model.TOPIC,
            event_id=event.event_id,
            detail=detail(event),
        )
        if then is not None:
            await then(event, uow)


def build_consumer(
    *,
    schema: str,
    promises: ShopPromises,
    clock: Clock,
    return_decision_within: timedelta = timedelta(seconds=60),
    **options: Any,
) -> EventConsumer:
    consumer = EventConsumer(group_id="waybill-orders", schema=schema, **options)

    @consumer.handles(
        OrderPlaced, on_invalid=handlers.reject_invalid_order, max_bytes=MAX_ORDER_BYTES
    )
    async def on_order_placed(event: OrderPlaced, uow: UnitOfWork) -> None:
        await handlers.place_order(event, uow, promises=promises, now=clock.now())

    @consumer.handles(
        OrderCancellationRequested,
        on_invalid=handlers.reject_invalid_cancellation,
        max_bytes=MAX_ORDER_BYTES,
    )
    async def on_cancellation_requested(event: OrderCancellationRequested, uow: UnitOfWork) -> None:
        await handlers.cancel_order(event, uow)

    @consumer.handles(PicklistCreated)
    async def on_picklist_created(event: PicklistCreated, uow: UnitOfWork) -> None:
        for order_id in dict.fromkeys(line.order_id for line in event.lines):
            await handlers.record_progress(
                uow,
                order_id=order_id,
                status="picking",
                at=event.occurred_at,
                topic=event.TOPIC,
                event_id=event.event_id,
                detail={"picklist_id": str(event.picklist_id), "warehouse_id": event.warehouse_id},
            )

    _progress(
        consumer,
        StockReserved,
        "reserved",
        detail=lambda e: {"allocations": [a.model_dump() for a in e.allocations]},
    )
    _progress(
        consumer,
        StockBackordered,
        "backordered",
        detail=lambda e: {"missing": [m.model_dump() for m in e.missing]},
    )
    _progress(consumer, StockReleased, "stock_released")
    _progress(consumer, OrderPacked, "packed", detail=lambda e: {"warehouse_id": e.warehouse_id})
    _progress(
        consumer,
        ShipmentLabelCreated,
        "label_created",
        detail=lambda e: {
            "carrier": e.carrier,
            "service": e.service,
            "tracking_number": e.tracking_number,
            "at_risk": e.at_risk,
        },
    )
    # the first parcel handed over meets dispatch, the first delivered meets delivery
    _progress(
        consumer,
        ShipmentShipped,
        "shipped",
        at=lambda e: e.shipped_at,
        then=lambda e, uow: sla.stage_met(
            uow, order_id=e.order_id, stage="dispatch", at=e.shipped_at
        ),
    )
    _progress(
        consumer,
        ShipmentDelivered,
        "delivered",
        at=lambda e: e.delivered_at,
        detail=lambda e: {"source": e.source, "shipment_id": str(e.shipment_id)},
        then=lambda e, uow: sla.stage_met(
            uow, order_id=e.order_id, stage="delivery", at=e.delivered_at
        ),
    )
    _progress(
        consumer,
        ShipmentException,
        "shipment_exception",
        detail=lambda e: {"status": e.status, "detail": e.detail},
    )
    _progress(
        consumer,
        SlaBreached,
        "sla_breached",
        detail=lambda e: {"stage": e.stage, "deadline": e.deadline.isoformat()},
        then=lambda e, uow: sla.breach_seen(uow, e),
    )

    @consumer.handles(ReturnRequested, on_invalid=_ignore)
    async def on_return_requested(event: ReturnRequested, uow: UnitOfWork) -> None:
        await handlers.return_requested(
            event, uow, now=clock.now(), decision_within=return_decision_within
        )

    async def decided(
        event: ReturnApproved | ReturnRejected,
        uow: UnitOfWork,
        decision: str,
        detail: dict[str, Any],
    ) -> None:
        await handlers.record_progress(
            uow,
            order_id=event.order_id,
            status=f"return_{decision}",
            at=event.occurred_at,
            topic=event.TOPIC,
            event_id=event.event_id,
            detail={"return_id": event.return_id, **detail},
        )
        await handlers.return_decided(
            uow,
            return_id=event.return_id,
            order_id=event.order_id,
            decision=decision,
            now=clock.now(),
            decision_within=return_decision_within,
        )

    @consumer.handles(ReturnApproved)
    async def on_return_approved(event: ReturnApproved, uow: UnitOfWork) -> None:
        await decided(event, uow, "approved", {"rma": event.rma})

    @consumer.handles(ReturnRejected)
    async def on_return_rejected(event: ReturnRejected, uow: UnitOfWork) -> None:
        await decided(event, uow, "rejected", {"reason": event.reason})

    @consumer.handles(ExchangeRequested)
    async def on_exchange_requested(event: ExchangeRequested, uow: UnitOfWork) -> None:
        await handlers.exchange(event, uow, promises=promises, now=clock.now())

    _progress(consumer, ReturnReceived, "returned", detail=lambda e: {"return_id": e.return_id})
    _progress(
        consumer,
        RefundRequested,
        "refund_requested",
        detail=lambda e: {"amount": str(e.amount), "currency": e.currency},
    )
    _progress(consumer, StockRestocked, "restocked", detail=lambda e: {"sku": e.sku})
    return consumer
