"""Subscribers of the orders service: validate, call the handler, and that is all.

Orders consumes every outbound topic to keep each order's status and timeline: it
never reads another service's tables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
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
    then: Callable[[Sequence[E], UnitOfWork], Awaitable[None]] | None = None,
) -> None:
    """Follow ``model``'s topic: each event adds ``status`` to its order's timeline (and
    ``then`` does what else the events mean, in the same transaction). A batch of the
    topic's events is a constant number of statements."""

    @consumer.handles_batch(model, on_invalid=_ignore if ignore_invalid else None)
    async def follow(events: Sequence[E], uow: UnitOfWork) -> None:
        progress = [
            handlers.Progress(order_id, status, at(e), model.TOPIC, e.event_id, detail(e))
            for e in events
            if (order_id := e.partition_key()) is not None
        ]
        await handlers.record_progress_batch(uow, progress)
        if then is not None:
            await then(events, uow)


def _meets(
    stage: str, at: Callable[[E], datetime]
) -> Callable[[Sequence[E], UnitOfWork], Awaitable[None]]:
    """``then`` for the events whose first of an order meets ``stage``."""

    async def meet(events: Sequence[E], uow: UnitOfWork) -> None:
        first: dict[str, E] = {}  # as if one by one: an order's first event of the batch
        for e in events:
            if (order_id := e.partition_key()) is not None:
                first.setdefault(order_id, e)
        met = [(order_id, stage, at(e)) for order_id, e in first.items()]
        await sla.stages_met(uow, met, first)

    return meet


async def _breaches_seen(events: Sequence[SlaBreached], uow: UnitOfWork) -> None:
    for event in events:
        await sla.breach_seen(uow, event)


def build_consumer(
    *,
    schema: str,
    promises: ShopPromises,
    clock: Clock,
    return_decision_within: timedelta = timedelta(seconds=60),
    **options: Any,
) -> EventConsumer:
    consumer = EventConsumer(group_id="waybill-orders", schema=schema, **options)

    @consumer.handles_batch(
        OrderPlaced, on_invalid=handlers.reject_invalid_order, max_bytes=MAX_ORDER_BYTES
    )
    async def on_orders_placed(events: Sequence[OrderPlaced], uow: UnitOfWork) -> None:
        await handlers.place_orders(events, uow, promises=promises, now=clock.now())

    @consumer.handles(
        OrderCancellationRequested,
        on_invalid=handlers.reject_invalid_cancellation,
        max_bytes=MAX_ORDER_BYTES,
    )
    async def on_cancellation_requested(event: OrderCancellationRequested, uow: UnitOfWork) -> None:
        await handlers.cancel_order(event, uow)

    @consumer.handles_batch(PicklistCreated)
    async def on_picklists_created(events: Sequence[PicklistCreated], uow: UnitOfWork) -> None:
        await handlers.record_progress_batch(
            uow,
            [
                handlers.Progress(
                    order_id,
                    "picking",
                    event.occurred_at,
                    event.TOPIC,
                    event.event_id,
                    {"picklist_id": str(event.picklist_id), "warehouse_id": event.warehouse_id},
                )
                for event in events
                for order_id in dict.fromkeys(line.order_id for line in event.lines)
            ],
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
        then=_meets("dispatch", lambda e: e.shipped_at),
    )
    _progress(
        consumer,
        ShipmentDelivered,
        "delivered",
        at=lambda e: e.delivered_at,
        detail=lambda e: {"source": e.source, "shipment_id": str(e.shipment_id)},
        then=_meets("delivery", lambda e: e.delivered_at),
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
        then=_breaches_seen,
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
