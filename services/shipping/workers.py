"""Background loops of the shipping service."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from services.shipping import handlers
from services.shipping.storage import repository as repo
from shared.carriers import CarrierError, CarrierGateway
from shared.carriers.purchase import LabelPurchaser
from shared.db import unit_of_work
from shared.db.notify import ChannelListener
from shared.runtime import ServiceRuntime

log = logging.getLogger("waybill.shipping.labels")

PURCHASES_AT_ONCE = 16
POLLS_AT_ONCE = 50


async def buy_labels(runtime: ServiceRuntime) -> None:
    """Buy the labels of packed shipments: woken by NOTIFY, polling as a fallback."""
    purchaser: LabelPurchaser = runtime.extras["purchaser"]
    lease = handlers.lease_for(runtime.extras["carrier_timeout_seconds"])
    async with ChannelListener(runtime.dsn, repo.LABELS_CHANNEL) as listener:
        while True:
            async with runtime.pool.acquire() as conn:
                due = await repo.lease_due_shipments(conn, limit=PURCHASES_AT_ONCE, lease=lease)
            if not due:
                await listener.wait(seconds=0.5)
                continue
            await asyncio.gather(*(_purchase(runtime, purchaser, s) for s in due))


async def _purchase(
    runtime: ServiceRuntime, purchaser: LabelPurchaser, shipment: dict[str, Any]
) -> None:
    attempt = await handlers.buy_label_once(
        shipment,
        purchaser=purchaser,
        pool=runtime.pool,
        schema=runtime.schema,
        now=runtime.clock.now(),
    )
    if attempt.label is None and not attempt.exhausted:
        log.warning(
            "label for %s not bought (%d carrier calls so far): %s; next try in %.1f s",
            shipment["order_id"],
            attempt.state.attempts,
            attempt.error,
            attempt.retry_in or 0,
        )


async def void_labels(runtime: ServiceRuntime) -> None:
    """Void the unused labels of cancelled orders."""
    purchaser: LabelPurchaser = runtime.extras["purchaser"]
    lease = handlers.lease_for(runtime.extras["carrier_timeout_seconds"])
    async with ChannelListener(runtime.dsn, repo.VOIDS_CHANNEL) as listener:
        while True:
            async with runtime.pool.acquire() as conn:
                due = await repo.lease_due_voids(conn, limit=PURCHASES_AT_ONCE, lease=lease)
            if not due:
                await listener.wait(seconds=1.0)
                continue
            await asyncio.gather(
                *(
                    handlers.void_label_once(
                        s, purchaser=purchaser, pool=runtime.pool, schema=runtime.schema
                    )
                    for s in due
                )
            )


async def watch_delivery_promises(runtime: ServiceRuntime) -> None:
    """Breach the promise of orders that nothing delivered by ``deliver_by`` (once each)."""
    interval: float = runtime.extras["sla_check_seconds"]
    while True:
        now = runtime.clock.now()
        async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
            for order in await repo.overdue_orders(uow.conn, now=now, limit=500):
                await handlers.check_delivery_promise(
                    uow,
                    order_id=order["order_id"],
                    deliver_by=order["deliver_by"],
                    delivered_at=None,
                    now=now,
                )
        runtime.extras["sla_checks"] = runtime.extras.get("sla_checks", 0) + 1
        await asyncio.sleep(interval)


async def poll_tracking(runtime: ServiceRuntime) -> None:
    """Ask carriers about shipments that have had no tracking update for a while."""
    gateway: CarrierGateway = runtime.extras["carriers"]
    quiet_for = timedelta(seconds=runtime.extras["poll_after_seconds"])
    interval: float = runtime.extras["poll_interval_seconds"]
    while True:
        now = runtime.clock.now()
        async with runtime.pool.acquire() as conn:
            quiet = await repo.lease_quiet_shipments(
                conn, quiet_since=now - quiet_for, now=now, limit=POLLS_AT_ONCE
            )
        for shipment in quiet:
            try:
                events = await gateway.track(shipment["tracking_number"])
            except CarrierError as exc:
                log.warning("tracking %s failed: %s", shipment["tracking_number"], exc)
                continue
            async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
                for event in sorted(events, key=lambda e: e.at):
                    await handlers.record_tracking(uow, event, source="poll")
        runtime.extras["polled_shipments"] = runtime.extras.get("polled_shipments", 0) + len(quiet)
        runtime.extras["poll_rounds"] = runtime.extras.get("poll_rounds", 0) + 1
        await asyncio.sleep(interval)
