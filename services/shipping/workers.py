"""Background loops of the shipping service."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from services.shipping import handlers
from services.shipping.storage import repository as repo
from shared.carriers import CarrierError, CarrierGateway
from shared.carriers.purchase import LabelPurchaser
from shared.db import unit_of_work
from shared.db.notify import ChannelListener
from shared.runtime import ServiceRuntime

log = logging.getLogger("waybill.shipping.labels")

PURCHASES_AT_ONCE = 256
#: under load, leases are taken this many at a time (one query for several purchases)
LEASE_AT_LEAST = 8
VOIDS_AT_ONCE = 16
POLLS_AT_ONCE = 50
#: with nothing due, the label worker looks again after this long at most (a packed order
#: wakes it at once by NOTIFY; a retry that falls due sooner, when it falls due)
IDLE_SECONDS = 5.0


async def buy_labels(runtime: ServiceRuntime) -> None:
    """Buy the labels of packed shipments, up to ``PURCHASES_AT_ONCE`` at a time: a purchase
    that ends makes room for the next at once. Woken by NOTIFY and by purchases ending;
    otherwise it sleeps until the next retry is due."""
    purchaser: LabelPurchaser = runtime.extras["purchaser"]
    lease = handlers.lease_for(runtime.extras["carrier_timeout_seconds"])
    book = handlers.LabelBook(runtime.pool, runtime.schema)
    running: set[asyncio.Task[bool]] = set()
    try:
        async with ChannelListener(runtime.dsn, repo.LABELS_CHANNEL) as listener:
            while True:
                room = PURCHASES_AT_ONCE - len(running)
                due: list[dict[str, Any]] = []
                wait = IDLE_SECONDS  # a purchase that ends wakes us
                if room >= min(LEASE_AT_LEAST, PURCHASES_AT_ONCE) or not running:
                    async with runtime.pool.acquire() as conn:
                        due = await repo.lease_due_shipments(conn, limit=room, lease=lease)
                        wait = IDLE_SECONDS
                        if not due:
                            wait = await _until_due(conn, cap=IDLE_SECONDS)
                for shipment in due:
                    task = asyncio.create_task(_purchase(runtime, purchaser, book, shipment))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(partial(_after_purchase, listener, running))
                if due and len(due) == room:
                    continue  # more may be due: look again as soon as there is room
                await listener.wait(seconds=wait)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await book.close()


def _after_purchase(
    listener: ChannelListener, running: set[asyncio.Task[bool]], task: asyncio.Task[bool]
) -> None:
    """A purchase ended: look again if that made room the worker was waiting for, or if it
    is to be tried again (its next try may be due before the worker would look)."""
    retry = task.cancelled() or task.exception() is not None or task.result()
    if retry or len(running) >= PURCHASES_AT_ONCE - LEASE_AT_LEAST:
        listener.wake()


async def _until_due(conn: Any, *, cap: float) -> float:
    due = await repo.next_label_due(conn)
    if due is None:
        return cap
    return min(cap, max(0.01, (due - datetime.now(UTC)).total_seconds()))


async def _purchase(
    runtime: ServiceRuntime,
    purchaser: LabelPurchaser,
    book: handlers.LabelBook,
    shipment: dict[str, Any],
) -> bool:
    """One try at a label; True when it is to be tried again."""
    try:
        attempt = await handlers.buy_label_once(
            shipment, purchaser=purchaser, book=book, now=runtime.clock.now()
        )
    except Exception:
        # the lease runs out and another try takes the shipment (with the same key)
        log.exception("label purchase for %s failed", shipment["order_id"])
        return True
    if attempt.label is None and not attempt.exhausted:
        log.warning(
            "label for %s not bought (%d carrier calls so far): %s; next try in %.1f s",
            shipment["order_id"],
            attempt.state.attempts,
            attempt.error,
            attempt.retry_in or 0,
        )
        return True
    return False


async def void_labels(runtime: ServiceRuntime) -> None:
    """Void the unused labels of cancelled orders."""
    purchaser: LabelPurchaser = runtime.extras["purchaser"]
    lease = handlers.lease_for(runtime.extras["carrier_timeout_seconds"])
    async with ChannelListener(runtime.dsn, repo.VOIDS_CHANNEL) as listener:
        while True:
            async with runtime.pool.acquire() as conn:
                due = await repo.lease_due_voids(conn, limit=VOIDS_AT_ONCE, lease=lease)
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
