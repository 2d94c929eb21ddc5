"""Use cases of the inventory service: (event, unit of work) -> None. They emit, never publish."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime

from services.inventory import picking
from services.inventory.domain.allocation import (
    BinStock,
    Pick,
    plan_allocation,
    rank_warehouses,
)
from services.inventory.storage import repository as repo
from shared import telemetry
from shared.db import UnitOfWork
from shared.events import (
    Allocation,
    Event,
    MissingStock,
    OrderAccepted,
    OrderCancelled,
    StockBackordered,
    StockReceived,
    StockReleased,
    StockReserved,
)
from shared.messaging import PermanentFailure
from shared.messaging.consumer import rounds

#: how many backordered orders one receipt tries to serve, oldest first
BACKORDER_SWEEP_LIMIT = 500


async def take_order(
    event: OrderAccepted, uow: UnitOfWork, *, autopick: bool, now: datetime
) -> None:
    await take_orders([event], uow, autopick=autopick, now=now)


async def take_orders(
    events: Sequence[OrderAccepted], uow: UnitOfWork, *, autopick: bool, now: datetime
) -> None:
    """Accepted orders: reserve their stock, or backorder what is missing, first come first
    served; a batch is a constant number of statements."""
    for round_ in rounds(events, key=lambda e: e.order_id):
        await telemetry.remember_order_traces(
            uow.conn, {e.order_id: uow.trace_of(e) for e in round_}
        )
        inserted = await repo.insert_orders(
            uow.conn,
            [
                {
                    "order_id": e.order_id,
                    "lines": [{"sku": sku, "quantity": q} for sku, q in _wanted(e).items()],
                    "country": e.ship_to.country,
                    "postal_code": e.ship_to.postal_code,
                    "accepted_at": e.occurred_at,
                    "placed_at": e.placed_at,
                }
                for e in round_
            ],
        )
        fresh = [e for e in round_ if e.order_id in inserted]
        await reserve_orders(
            uow,
            [e.order_id for e in fresh],
            autopick=autopick,
            now=now,
            causes={e.order_id: e for e in fresh},
        )


def _wanted(event: OrderAccepted) -> dict[str, int]:
    wanted: dict[str, int] = defaultdict(int)
    for line in event.lines:
        wanted[line.sku] += line.quantity
    return dict(wanted)


async def reserve_order(uow: UnitOfWork, order_id: str, *, autopick: bool, now: datetime) -> bool:
    """Try to reserve a new or backordered order in full; True when it is reserved now."""
    return order_id in await reserve_orders(uow, [order_id], autopick=autopick, now=now)


async def reserve_orders(
    uow: UnitOfWork,
    order_ids: Sequence[str],
    *,
    autopick: bool,
    now: datetime,
    causes: Mapping[str, Event] | None = None,
) -> set[str]:
    """Try to reserve new or backordered orders in full, in the order given (first come,
    first served); returns those reserved now. The stock of every SKU involved is locked
    once, and each order is allocated from what the orders before it left."""
    causes = causes or {}
    locked = await repo.lock_orders(uow.conn, list(order_ids))
    orders = [
        locked[i]
        for i in dict.fromkeys(order_ids)
        if i in locked and locked[i]["status"] in ("new", "backordered")
    ]
    if not orders:
        return set()
    wanted_of = {o["order_id"]: {x["sku"]: x["quantity"] for x in o["lines"]} for o in orders}
    stock = await repo.lock_stock(uow.conn, {sku for w in wanted_of.values() for sku in w})
    warehouses = await repo.all_warehouses(uow.conn)
    available = {(b.warehouse_id, b.sku, b.bin): b.available for b in stock}
    bins_of: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for b in stock:
        bins_of[b.sku].append((b.warehouse_id, b.sku, b.bin))
    statuses: list[tuple[str, str, dict[str, int]]] = []
    reserved: list[tuple[str, tuple[Pick, ...]]] = []
    for order in orders:
        order_id, wanted = order["order_id"], wanted_of[order["order_id"]]
        ranked = rank_warehouses(
            warehouses, country=order["ship_country"], postal_code=order["ship_postal_code"]
        )
        bins = [BinStock(*where, available[where]) for sku in wanted for where in bins_of[sku]]
        plan = plan_allocation(wanted, bins, ranked)
        if not plan.complete:
            if order["status"] == "new":
                uow.emit(
                    StockBackordered(
                        order_id=order_id,
                        missing=[MissingStock(sku=s, quantity=q) for s, q in plan.missing.items()],
                    ),
                    cause=causes.get(order_id),
                )
            statuses.append((order_id, "backordered", dict(plan.missing)))
            continue
        for p in plan.picks:
            available[(p.warehouse_id, p.sku, p.bin)] -= p.quantity
        reserved.append((order_id, plan.picks))
        uow.emit(
            StockReserved(order_id=order_id, allocations=_allocations(plan.picks)),
            cause=causes.get(order_id),
        )
        statuses.append((order_id, "packed" if autopick else "reserved", {}))
    await picking.on_reserved(
        uow, reserved, autopick=autopick, now=now, warehouses=warehouses, causes=causes
    )
    await repo.set_order_statuses(uow.conn, statuses)
    return {order_id for order_id, _ in reserved}


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
    await reserve_orders(uow, waiting, autopick=autopick, now=now)


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
