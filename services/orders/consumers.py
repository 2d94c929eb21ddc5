"""Subscribers of the orders service: validate, call the handler, and that is all.

Orders consumes every outbound topic to keep each order's status and timeline: it
never reads another service's tables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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
from shared.tenancy import follow_access_keys

E = TypeVar("E", bound=Event)

#: the largest order record accepted (100 lines of long SKUs fit in a fraction of it)
MAX_ORDER_BYTES = 256 * 1024


async def _ignore(invalid: InvalidEvent, uow: UnitOfWork) -> bool:
    return True  # the service that owns this inbound topic answers invalid input


@dataclass(frozen=True)
class _Follow:
    progress: Callable[[Any], list[handlers.Progress]]
    then: Callable[[Sequence[Any], UnitOfWork], Awaitable[None]] | None


class _Timeline:
    """The topics whose events add to their orders' timelines and move their status
    forward: a batch's events of all of them are handled in one call, a constant number of
    statements for the lot (an order's reservation, pick list and packing, which come
    together, cost one status update)."""

    def __init__(self, consumer: EventConsumer) -> None:
        self._consumer = consumer
        self._follows: dict[type[Event], _Follow] = {}

    def follow(
        self,
        model: type[E],
        status: str,
        *,
        at: Callable[[E], datetime] = lambda e: e.occurred_at,
        detail: Callable[[E], dict[str, Any]] = lambda e: {},
        orders: Callable[[E], list[str]] | None = None,
        ignore_invalid: bool = False,
        then: Callable[[Sequence[E], UnitOfWork], Awaitable[None]] | None = None,
    ) -> None:
        """Each event of ``model`` adds ``status`` to the timeline of its order (or of each
        order ``orders`` names); ``then`` does what else the events mean, in the same
        transaction."""

        def progress(event: E) -> list[handlers.Progress]:
            order_ids = orders(event) if orders is not None else [event.partition_key()]
            return [
                handlers.Progress(
                    order_id, status, at(event), model.TOPIC, event.event_id, detail(event)
                )
                for order_id in order_ids
                if order_id is not None
            ]

        self._follows[model] = _Follow(progress, then)
        register = self._consumer.handles_batch(
            model, on_invalid=_ignore if ignore_invalid else None, together="timeline"
        )
        register(self._handle)

    async def _handle(self, events: Sequence[Event], uow: UnitOfWork) -> None:
        progress = [p for e in events for p in self._follows[type(e)].progress(e)]
        await handlers.record_progress_batch(uow, progress)
        by_model: dict[type[Event], list[Event]] = {}
        for e in events:
            by_model.setdefault(type(e), []).append(e)
        for model, of_model in by_model.items():
            then = self._follows[model].then
            if then is not None:
                await then(of_model, uow)


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

    timeline = _Timeline(consumer)
    timeline.follow(
        PicklistCreated,
        "picking",
        detail=lambda e: {"picklist_id": str(e.picklist_id), "warehouse_id": e.warehouse_id},
        orders=lambda e: list(dict.fromkeys(line.order_id for line in e.lines)),
    )
    timeline.follow(
        StockReserved,
        "reserved",
        detail=lambda e: {"allocations": [a.model_dump() for a in e.allocations]},
    )
    timeline.follow(
        StockBackordered,
        "backordered",
        detail=lambda e: {"missing": [m.model_dump() for m in e.missing]},
    )
    timeline.follow(StockReleased, "stock_released")
    timeline.follow(
        OrderPacked,
        "packed",
        detail=lambda e: {
            "warehouse_id": e.warehouse_id,
            **({"packed_by": e.packed_by.model_dump()} if e.packed_by else {}),
            **({"picked_by": [p.model_dump() for p in e.picked_by]} if e.picked_by else {}),
        },
    )
    timeline.follow(
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
    timeline.follow(
        ShipmentShipped,
        "shipped",
        at=lambda e: e.shipped_at,
        then=_meets("dispatch", lambda e: e.shipped_at),
    )
    timeline.follow(
        ShipmentDelivered,
        "delivered",
        at=lambda e: e.delivered_at,
        detail=lambda e: {"source": e.source, "shipment_id": str(e.shipment_id)},
        then=_meets("delivery", lambda e: e.delivered_at),
    )
    timeline.follow(
        ShipmentException,
        "shipment_exception",
        detail=lambda e: {"status": e.status, "detail": e.detail},
    )
    timeline.follow(
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

    timeline.follow(
        ReturnReceived,
        "returned",
        detail=lambda e: {
            "return_id": e.return_id,
            **({"received_by": e.received_by.model_dump()} if e.received_by else {}),
        },
    )
    timeline.follow(
        RefundRequested,
        "refund_requested",
        detail=lambda e: {"amount": str(e.amount), "currency": e.currency},
    )
    timeline.follow(StockRestocked, "restocked", detail=lambda e: {"sku": e.sku})
    follow_access_keys(consumer)
    return consumer
