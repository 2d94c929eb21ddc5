"""Subscribers of the inventory service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.inventory import handlers, returns
from shared.clock import Clock
from shared.db import UnitOfWork
from shared.events import (
    OrderAccepted,
    OrderCancelled,
    ReturnApproved,
    ReturnReceived,
    StockReceived,
)
from shared.messaging import EventConsumer
from shared.messaging.redrive import answer_redrives
from shared.tenancy import follow_access_keys


def build_consumer(*, schema: str, autopick: bool, clock: Clock, **options: Any) -> EventConsumer:
    consumer = EventConsumer(group_id="waybill-inventory", schema=schema, **options)

    @consumer.handles_batch(OrderAccepted)
    async def on_orders_accepted(events: Sequence[OrderAccepted], uow: UnitOfWork) -> None:
        await handlers.take_orders(events, uow, autopick=autopick, now=clock.now())

    @consumer.handles(OrderCancelled)
    async def on_order_cancelled(event: OrderCancelled, uow: UnitOfWork) -> None:
        await handlers.release_order(event, uow, autopick=autopick, now=clock.now())

    @consumer.handles(StockReceived)
    async def on_stock_received(event: StockReceived, uow: UnitOfWork) -> None:
        await handlers.receive_stock(event, uow, autopick=autopick, now=clock.now())

    @consumer.handles(ReturnApproved)
    async def on_return_approved(event: ReturnApproved, uow: UnitOfWork) -> None:
        await returns.expect_return(event, uow)

    @consumer.handles(ReturnReceived)
    async def on_return_received(event: ReturnReceived, uow: UnitOfWork) -> None:
        await returns.restock_return(event, uow, autopick=autopick, now=clock.now())

    answer_redrives(consumer, service="inventory")
    follow_access_keys(consumer)
    return consumer
