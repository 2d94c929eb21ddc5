"""Use cases of the inventory service: (event, unit of work) -> None. They emit, never publish."""

from __future__ import annotations

from collections import defaultdict
from uuid import uuid4

from services.inventory.domain.allocation import Pick, natural_key, plan_allocation, rank_warehouses
from services.inventory.storage import repository as repo
from shared.db import UnitOfWork
from shared.events import (
    Allocation,
    MissingStock,
    OrderAccepted,
    OrderPacked,
    Origin,
    Parcel,
    PicklistCreated,
    PicklistLine,
    ShipmentLine,
    StockBackordered,
    StockReceived,
    StockReserved,
)
from shared.messaging import PermanentFailure

#: how many backordered orders one receipt tries to serve, oldest first
BACKORDER_SWEEP_LIMIT = 500
#: the autopick packer's assumption about goods it has never weighed
GRAMS_PER_UNIT = 500


async def take_order(event: OrderAccepted, uow: UnitOfWork, *, autopick: bool) -> None:
    """An accepted order: reserve its stock, or backorder what is missing."""
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
    )
    if inserted:
        await reserve_order(uow, event.order_id, autopick=autopick)


async def reserve_order(uow: UnitOfWork, order_id: str, *, autopick: bool) -> bool:
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
    if autopick:
        await pick_and_pack_automatically(uow, order_id, plan.picks)
    return True


def _allocations(picks: tuple[Pick, ...] | list[Pick]) -> list[Allocation]:
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for p in picks:
        totals[(p.warehouse_id, p.sku)] += p.quantity
    return [Allocation(warehouse_id=w, sku=s, quantity=q) for (w, s), q in sorted(totals.items())]


async def receive_stock(event: StockReceived, uow: UnitOfWork, *, autopick: bool) -> None:
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
    for order_id in await repo.backordered_waiting_for(
        uow.conn, event.sku, limit=BACKORDER_SWEEP_LIMIT
    ):
        await reserve_order(uow, order_id, autopick=autopick)


async def pick_and_pack_automatically(
    uow: UnitOfWork, order_id: str, picks: tuple[Pick, ...] | list[Pick]
) -> None:
    """WAYBILL_AUTOPICK: the warehouse confirms every pick and packs at once (demo, bench)."""
    by_warehouse: dict[str, list[Pick]] = defaultdict(list)
    for p in picks:
        by_warehouse[p.warehouse_id].append(p)
    for warehouse_id, warehouse_picks in sorted(by_warehouse.items()):
        walking = sorted(warehouse_picks, key=lambda p: (natural_key(p.bin), p.sku))
        picklist_id = uuid4()
        await repo.create_picklist(
            uow.conn,
            picklist_id=picklist_id,
            warehouse_id=warehouse_id,
            lines=[(order_id, p) for p in walking],
        )
        uow.emit(
            PicklistCreated(
                picklist_id=picklist_id,
                warehouse_id=warehouse_id,
                lines=[
                    PicklistLine(order_id=order_id, sku=p.sku, quantity=p.quantity, bin=p.bin)
                    for p in walking
                ],
            )
        )
        await repo.confirm_all_picked(uow.conn, picklist_id)
        await repo.ship_out(uow.conn, order_id, warehouse_id)
        country, postal_code = await repo.warehouse_origin(uow.conn, warehouse_id)
        units = sum(p.quantity for p in warehouse_picks)
        uow.emit(
            OrderPacked(
                order_id=order_id,
                warehouse_id=warehouse_id,
                parcels=[
                    Parcel(
                        weight_grams=min(units * GRAMS_PER_UNIT, 30_000),
                        length_mm=400,
                        width_mm=300,
                        height_mm=200,
                    )
                ],
                lines=[
                    ShipmentLine(sku=a.sku, quantity=a.quantity)
                    for a in _allocations(warehouse_picks)
                ],
                ship_from=Origin(country=country, postal_code=postal_code),
            )
        )
    await repo.set_order_status(uow.conn, order_id, "packed")
