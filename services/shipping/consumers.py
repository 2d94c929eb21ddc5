"""Subscribers of the shipping service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.shipping import handlers
from shared.db import UnitOfWork
from shared.events import OrderAccepted, OrderCancelled, OrderPacked
from shared.messaging import EventConsumer
from shared.messaging.redrive import answer_redrives
from shared.tenancy import follow_access_keys


def build_consumer(*, schema: str, **options: Any) -> EventConsumer:
    consumer = EventConsumer(group_id="waybill-shipping", schema=schema, **options)

    @consumer.handles_batch(OrderAccepted)
    async def on_orders_accepted(events: Sequence[OrderAccepted], uow: UnitOfWork) -> None:
        await handlers.remember_orders(events, uow)

    @consumer.handles(OrderCancelled)
    async def on_order_cancelled(event: OrderCancelled, uow: UnitOfWork) -> None:
        await handlers.cancel_order(event, uow)

    @consumer.handles_batch(OrderPacked)
    async def on_orders_packed(events: Sequence[OrderPacked], uow: UnitOfWork) -> None:
        await handlers.request_labels(events, uow)

    answer_redrives(consumer, service="shipping")
    follow_access_keys(consumer)
    return consumer
