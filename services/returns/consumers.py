"""Subscribers of the returns service."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from services.returns import handlers
from shared.clock import Clock
from shared.db import UnitOfWork
from shared.events import OrderAccepted, ReturnRequested, ReturnScanned, ShipmentDelivered
from shared.messaging import EventConsumer, PermanentFailure
from shared.messaging.redrive import answer_redrives
from shared.tenancy import follow_access_keys


def build_consumer(
    *,
    schema: str,
    window_days: int,
    clock: Clock,
    grace: timedelta = timedelta(0),
    **options: Any,
) -> EventConsumer:
    consumer = EventConsumer(group_id="waybill-returns", schema=schema, **options)

    @consumer.handles_batch(OrderAccepted)
    async def on_orders_accepted(events: Sequence[OrderAccepted], uow: UnitOfWork) -> None:
        await handlers.remember_orders(events, uow, window_days=window_days, now=clock.now())

    @consumer.handles(ShipmentDelivered)
    async def on_shipment_delivered(event: ShipmentDelivered, uow: UnitOfWork) -> None:
        await handlers.record_delivery(event, uow, window_days=window_days, now=clock.now())

    @consumer.handles(ReturnRequested, on_invalid=handlers.reject_invalid_return)
    async def on_return_requested(event: ReturnRequested, uow: UnitOfWork) -> None:
        await handlers.request_return(
            event, uow, window_days=window_days, now=clock.now(), grace=grace
        )

    @consumer.handles(ReturnScanned)
    async def on_return_scanned(event: ReturnScanned, uow: UnitOfWork) -> None:
        # received on the warehouse page: the same checks as POST /returns/{id}/received
        try:
            await handlers.receive_return(
                uow,
                event.return_id,
                event.lines,
                now=clock.now(),
                warehouse_id=event.warehouse_id,
                by=event.received_by,
            )
        except handlers.ReceiptRefused as refused:
            raise PermanentFailure(
                f"receipt refused ({refused.status}): {refused.detail}"
            ) from None

    answer_redrives(consumer, service="returns")
    follow_access_keys(consumer)
    return consumer
