"""Use cases of the inventory service: (event, unit of work) -> None. They emit, never publish."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from services.inventory import picking
from services.inventory.domain.allocation import Pick, plan_allocation, rank_warehouses
from services.inventory.storage import repository as repo
from shared import telemetry
from shared.db import UnitOfWork
from shared.events import (
    Allocation,
    MissingStock,
    OrderAccepted,
    OrderCancelled,
    StockBackordered,
    StockReceived,
    StockReleased,
    StockReserved,
)
from shared.messaging import PermanentFailure

#: how many backordered orders one receipt tries to serve, oldest first
BACKORDER_SWEEP_LIMIT = 500


async def take_order(
    event: OrderAccepted, uow: UnitOfWork, *, autopick: bool, now: datetime
) -> None:
    """An accepted order: reserve its stock, or backorder what is missing."""
    await telemetry.remember_order_trace(uow.conn, event.order_id)
    wanted: dict[str, int] = defaultdict(int)
    for line in event.lines:
        wanted[line.sku] += line.quantity
    inserted = await repo.insert_order(
        uow.conn,
        order_id=event.order_id,
        lines=[{"sku": sku, "quantity": q} for sku, q in wanted.items()],
        country=event.ship_to.country,
        postal_code=event.ship_to.postal_code,
        accepted_at=event.occurred_at,
        placed_at=event.placed_at,
    )
    if inserted:
        await reserve_order(uow, event.order_id, autopick=autopick, now=now)


async def reserve_order(uow: UnitOfWork, order_id: str, *, autopick: bool, now: datetime) -> bool:
    """Try to reserve a new or backordered order in full; True when it is reserved now."""
    order = await repo.fetch_order(uow.conn, order_id)
    if order is None or order["status"] not in ("new", "backordered"):
        return False
    wanted = {line["sku"]: line["quantity"] for line in order["lines"]}
    stock = await repo.lock_stock(uow.conn, wanted)
    ranked = rank_warehouses(
        await repo.all_warehouses(uow.conn),
        country=order["ship_country"],
        postal_code=order["ship_postal_code"],
    )
    plan = plan_allocation(wanted, stock, ranked)
    if not plan.complete:
        if order["status"] == "new":
            uow.emit(
                StockBackordered(
                    order_id=order_id,
                    missing=[MissingStock(sku=s, quantity=q) for s, q in plan.missing.items()],
                )
            )
        await repo.set_order_status(uow.conn, order_id, "backordered", missing=dict(plan.missing))
        return False
    await repo.reserve(uow.conn, order_id, plan.picks)
    await repo.set_order_status(uow.conn, order_id, "reserved")
    uow.emit(StockReserved(order_id=order_id, allocations=_allocations(plan.picks)))
    await picking.on_reserved(uow, order_id, plan.picks, autopick=autopick, now=now)
    return True


def _allocations(picks: tuple[Pick, ...] | list[Pick]) -> list[Allocation]:
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for p in picks:
        totals[(p.warehouse_id, p.sku)] += p.quantity
    return [Allocation(warehouse_id=w, sku=s, quantity=q) for (w, s), q in sorted(totals.items())]


async def release_order(
    event: OrderCancelled, uow: UnitOfWork, *, autopick: bool, now: datetime
) -> None:
    """A cancelled order gives back its stock; what it frees serves backorders, oldest first."""
    order = await repo.fetch_order(uow.conn, event.order_id)
    if order is None:
        await repo.remember_cancelled(uow.conn, event.order_id)
        return
    if order["status"] == "cancelled":
        return
    # orders decided: nothing is with a carrier yet, so even packed goods come back
    await picking.release_unpicked(uow, event.order_id, also_when_packed=True)
    released = await repo.release_reservations(uow.conn, event.order_id)
    await repo.set_order_status(uow.conn, event.order_id, "cancelled")
    uow.emit(
        StockReleased(order_id=event.order_id, allocations=_allocations([p for p, _ in released]))
    )
    for sku in sorted({p.sku for p, _ in released}):
        await serve_backorders(uow, sku, autopick=autopick, now=now)


async def serve_backorders(uow: UnitOfWork, sku: str, *, autopick: bool, now: datetime) -> None:
    """Reserve the backordered orders that wait on ``sku``, oldest first."""
    waiting = await repo.backordered_waiting_for(uow.conn, sku, limit=BACKORDER_SWEEP_LIMIT)
    for order_id in waiting:
        await reserve_order(uow, order_id, autopick=autopick, now=now)


async def receive_stock(
    event: StockReceived, uow: UnitOfWork, *, autopick: bool, now: datetime
) -> None:
    """Goods arrived: count them in, then serve the backorders waiting on them, oldest first."""
    if not await repo.warehouse_exists(uow.conn, event.warehouse_id):
        raise PermanentFailure(f"unknown warehouse {event.warehouse_id!r}: register it first")
    await repo.receive_stock(
        uow.conn,
        warehouse_id=event.warehouse_id,
        sku=event.sku,
        bin=event.bin or repo.DEFAULT_BIN,
        quantity=event.quantity,
    )
    await serve_backorders(uow, event.sku, autopick=autopick, now=now)
