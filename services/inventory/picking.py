"""Use cases of picking and packing: waves of pick lists, picks confirmed by scan, packing.

Reserved goods wait in a queue per warehouse; the wave builder puts them on pick lists
(in walking order) when a wave is full or its oldest order has waited long enough.
Warehouse staff confirm each line by scanning its SKU, then pack the order, which
moves the goods out of stock and emits ``orders.packed``. Like the handlers, these
functions take a unit of work and emit, never publish.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from services.inventory.config import InventorySettings
from services.inventory.domain.allocation import Pick, Warehouse
from services.inventory.domain.waves import (
    PickLine,
    WavePolicy,
    lines_of_wave,
    plan_waves,
    walking_order,
)
from services.inventory.storage import picking as store
from services.inventory.storage import repository as repo
from shared import telemetry
from shared.db import UnitOfWork, unit_of_work
from shared.db.notify import ChannelListener, notify
from shared.events import (
    Event,
    OrderPacked,
    Origin,
    Parcel,
    PicklistCreated,
    PicklistLine,
    ShipmentLine,
)
from shared.events.base import StaffRef
from shared.runtime import ServiceRuntime

log = logging.getLogger("waybill.inventory.picking")

#: the automatic packer's assumption about goods it has never weighed
GRAMS_PER_UNIT = 500
AUTOPACK_PARCEL = {"length_mm": 400, "width_mm": 300, "height_mm": 200}


# -- refusals: what the floor's state does not allow, worded for a person ----------------


#: pick-list line numbers are PostgreSQL integers, counted from 1
MAX_LINE_NO = 2**31 - 1


class PickingRefused(Exception):
    """A pick or a pack that cannot be done; the message says why, for the person doing it."""


class NotFound(PickingRefused):
    """No such pick-list line or order (HTTP 404)."""


class NotYours(PickingRefused):
    """A staff member's key does not reach the warehouse this happens in (HTTP 403)."""


class Conflict(PickingRefused):
    """The order or line is not in a state that allows this (HTTP 409)."""


class Invalid(PickingRefused):
    """What was scanned or entered cannot be right (HTTP 422)."""


class WrongSku(Invalid):
    pass


class OverPick(Invalid):
    pass


class NotAllPicked(Conflict):
    def __init__(self, message: str, missing: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.missing = missing


class AlreadyPacked(Conflict):
    pass


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PickResult:
    picklist_id: UUID
    line_no: int
    warehouse_id: str
    order_id: str
    sku: str
    bin: str
    quantity: int
    picked_quantity: int
    #: the same full-quantity scan again: nothing changed
    repeated: bool
    #: every line of this order in this warehouse is picked now: it can be packed
    order_picked: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "picklist_id": str(self.picklist_id),
            "line_no": self.line_no,
            "warehouse_id": self.warehouse_id,
            "order_id": self.order_id,
            "sku": self.sku,
            "bin": self.bin,
            "quantity": self.quantity,
            "picked_quantity": self.picked_quantity,
            "status": "picked" if self.picked_quantity >= self.quantity else "open",
            "repeated": self.repeated,
            "order_picked": self.order_picked,
        }


@dataclass(frozen=True)
class PackResult:
    order_id: str
    warehouse_id: str
    parcels: list[Parcel]
    lines: list[ShipmentLine]
    #: every warehouse of the order has packed now
    order_packed: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "warehouse_id": self.warehouse_id,
            "parcels": [p.model_dump() for p in self.parcels],
            "lines": [line.model_dump() for line in self.lines],
            "order_packed": self.order_packed,
        }


@dataclass
class WaveBuilderStats:
    """How often the wave builder looked and what it released (tests wait on ``checks``)."""

    checks: int = 0
    waves: int = 0


# -- reservation hooks (called by the reservation handlers) -------------------------------


async def on_reserved(
    uow: UnitOfWork,
    reserved: Sequence[tuple[str, Sequence[Pick]]],
    *,
    autopick: bool,
    now: datetime,
    warehouses: Sequence[Warehouse],
    causes: Mapping[str, Event],
) -> None:
    """Orders whose stock is reserved in this transaction: the stock is taken and the picks
    are queued for picking, all in a few statements.

    With ``autopick`` (demo, benchmark) the warehouse picks and packs them at once instead:
    the goods leave the shelves, each order gets a pick list per warehouse, confirmed and
    packed, and ``orders.packed`` says what left from where.
    """
    picks = [(order_id, p) for order_id, order_picks in reserved for p in order_picks]
    if not picks:
        return
    await repo.take_stock(uow.conn, picks, shipped=autopick)
    if not autopick:
        await store.enqueue_many(uow.conn, picks, queued_at=now)
        await notify(uow.conn, store.waves_channel(uow.schema))
        return
    origin_of = {
        w.warehouse_id: Origin(country=w.country, postal_code=w.postal_code) for w in warehouses
    }
    picklists: list[tuple[UUID, str, list[PickLine]]] = []
    packings: list[tuple[str, str, list[dict[str, Any]]]] = []
    for order_id, order_picks in reserved:
        cause = causes.get(order_id)
        by_warehouse: dict[str, list[Pick]] = defaultdict(list)
        for p in order_picks:
            by_warehouse[p.warehouse_id].append(p)
        for warehouse_id, warehouse_picks in sorted(by_warehouse.items()):
            lines = walking_order(
                PickLine(order_id, p.sku, p.bin, p.quantity) for p in warehouse_picks
            )
            picklist_id = uuid4()
            picklists.append((picklist_id, warehouse_id, lines))
            uow.emit(_picklist_created(picklist_id, warehouse_id, lines), cause=cause)
            units = sum(p.quantity for p in warehouse_picks)
            parcel = Parcel(weight_grams=min(units * GRAMS_PER_UNIT, 30_000), **AUTOPACK_PARCEL)
            packings.append((order_id, warehouse_id, [parcel.model_dump()]))
            uow.emit(
                OrderPacked(
                    order_id=order_id,
                    warehouse_id=warehouse_id,
                    parcels=[parcel],
                    lines=_shipment_lines(lines),
                    ship_from=origin_of[warehouse_id],
                ),
                cause=cause,
            )
    await store.create_picked_and_packed(uow.conn, picklists, now=now)
    await store.insert_packings(uow.conn, packings, packed_at=now)


def _shipment_lines(lines: Sequence[PickLine]) -> list[ShipmentLine]:
    totals: dict[str, int] = defaultdict(int)
    for line in lines:
        totals[line.sku] += line.quantity
    return [ShipmentLine(sku=s, quantity=q) for s, q in sorted(totals.items())]


async def release_unpicked(
    uow: UnitOfWork, order_id: str, *, also_when_packed: bool = False
) -> bool:
    """Cancellation: take the order off the picking queue and its open pick lists.

    Returns False when any part of the order was packed already, and then changes
    nothing, unless ``also_when_packed`` (a cancellation that goes ahead anyway, the
    packed parcels going back to the shelf): then the unpacked rest is taken off too.
    Stock counts are the caller's to release.
    """
    await store.lock_order(uow.conn, order_id)
    packed = bool(await store.packed_warehouses(uow.conn, order_id))
    if packed and not also_when_packed:
        return False
    await store.dequeue_order(uow.conn, order_id)
    touched = await store.cancel_unpacked_lines(uow.conn, order_id, now=None)
    await store.close_finished_picklists(uow.conn, touched, now=None)
    return not packed


# -- waves ---------------------------------------------------------------------------------


def wave_policy(settings: InventorySettings) -> WavePolicy:
    return WavePolicy(
        max_orders=settings.wave_max_orders,
        max_age=timedelta(seconds=settings.wave_max_age_seconds),
    )


async def release_due_waves(uow: UnitOfWork, *, policy: WavePolicy, now: datetime) -> int:
    """Put every wave that is due on a pick list; returns how many pick lists were made."""
    if not await store.lock_wave_builder(uow.conn, uow.schema):
        return 0  # another replica is building right now
    # a cancelled order never goes to the floor, even if its cancellation missed the queue
    await store.drop_cancelled_from_queue(uow.conn)
    made = 0
    for wave in plan_waves(await store.waiting_orders(uow.conn), policy=policy, now=now):
        # only what is still queued: a cancellation may have taken an order out meanwhile
        queued = await store.take_from_queue(
            uow.conn, warehouse_id=wave.warehouse_id, order_ids=wave.order_ids
        )
        lines = lines_of_wave(wave, queued)
        if not lines:
            continue
        picklist_id = uuid4()
        await store.create_lines(
            uow.conn, picklist_id=picklist_id, warehouse_id=wave.warehouse_id, lines=lines
        )
        # a wave serves several orders: its own trace, linked to each order's
        links = [
            link
            for order_id in wave.order_ids
            for link in telemetry.link_to(await telemetry.order_trace(uow.conn, order_id))
        ]
        with telemetry.span(
            "release wave",
            service="inventory",
            parent=telemetry.NEW_TRACE,
            attributes={"waybill.picklist_id": str(picklist_id), "waybill.orders": len(links)},
            links=links,
        ):
            uow.emit(_picklist_created(picklist_id, wave.warehouse_id, lines))
        log.info(
            "wave of %d order(s) for %s (%s): pick list %s",
            len(wave.order_ids),
            wave.warehouse_id,
            wave.reason,
            picklist_id,
        )
        made += 1
    return made


async def build_waves(runtime: ServiceRuntime) -> None:
    """Background worker: release waves when due; woken by NOTIFY, else every few seconds."""
    settings = runtime.settings
    if not isinstance(settings, InventorySettings):
        raise TypeError("build_waves runs in the inventory service")
    policy = wave_policy(settings)
    stats: WaveBuilderStats = runtime.extras.setdefault("waves", WaveBuilderStats())
    async with ChannelListener(runtime.dsn, store.waves_channel(runtime.schema)) as listener:
        while True:
            async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
                stats.waves += await release_due_waves(uow, policy=policy, now=runtime.clock.now())
            stats.checks += 1
            await listener.wait(settings.wave_check_seconds)


def _picklist_created(
    picklist_id: UUID, warehouse_id: str, lines: list[PickLine]
) -> PicklistCreated:
    return PicklistCreated(
        picklist_id=picklist_id,
        warehouse_id=warehouse_id,
        lines=[
            PicklistLine(order_id=x.order_id, sku=x.sku, quantity=x.quantity, bin=x.bin)
            for x in lines
        ],
    )


# -- picking ---------------------------------------------------------------------------------


async def confirm_pick(
    uow: UnitOfWork,
    *,
    picklist_id: UUID,
    line_no: int,
    scanned_sku: str,
    quantity: int,
    now: datetime,
    warehouse_id: str | None = None,
    warehouses: frozenset[str] | None = None,
    by: StaffRef | None = None,
) -> PickResult:
    """The picker took ``quantity`` of the scanned SKU for this line.

    A SKU other than the line's is refused, and so is more than the line still needs;
    the same full-quantity scan of a line already picked changes nothing. ``warehouses``:
    the ones the picker may work in (None: all); ``by``: who picked, recorded on the line.
    """
    if not 1 <= line_no <= MAX_LINE_NO:  # beyond the column's range: no such line either
        raise NotFound(f"pick list {picklist_id} has no line {line_no}")
    line = await store.lock_line(uow.conn, picklist_id, line_no)
    if line is None or (warehouse_id is not None and line["warehouse_id"] != warehouse_id):
        raise NotFound(f"pick list {picklist_id} has no line {line_no}")
    if warehouses is not None and line["warehouse_id"] not in warehouses:
        raise NotYours(f"pick list {picklist_id} is in {line['warehouse_id']}, not yours")
    where = f"line {line_no} ({line['quantity']} x {line['sku']} from bin {line['bin']})"
    if line["status"] == "cancelled" or line["order_status"] == "cancelled":
        raise Conflict(
            f"order {line['order_id']} was cancelled: {where} is no longer needed; "
            f"put back what you took into bin {line['bin']}"
        )
    if line["status"] == "packed":
        raise AlreadyPacked(f"order {line['order_id']} is packed already: {where} is done")
    scanned = scanned_sku.strip()
    if scanned != line["sku"]:
        raise WrongSku(
            f'wrong SKU: scanned "{scanned}", but line {line_no} needs "{line["sku"]}" '
            f"from bin {line['bin']}; nothing was counted"
        )
    if quantity < 1:
        raise Invalid("the quantity picked is at least 1")
    remaining = line["quantity"] - line["picked_quantity"]
    if remaining == 0 and quantity == line["quantity"]:
        return await _pick_result(uow, line, picked=line["picked_quantity"], repeated=True)
    if remaining == 0:
        raise OverPick(f"{where} is picked in full already; nothing was counted")
    if quantity > remaining:
        already = f"{line['picked_quantity']} of {line['quantity']} picked already"
        raise OverPick(
            f"too many: {where} needs only {remaining} more ({already}); nothing was counted"
        )
    picked = await store.add_picked(
        uow.conn,
        picklist_id,
        line_no,
        quantity=quantity,
        now=now,
        by=by.model_dump() if by is not None else None,
    )
    return await _pick_result(uow, line, picked=picked, repeated=False)


async def _pick_result(
    uow: UnitOfWork, line: dict[str, Any], *, picked: int, repeated: bool
) -> PickResult:
    missing = await _missing_lines(uow, line["order_id"], line["warehouse_id"])
    return PickResult(
        picklist_id=line["picklist_id"],
        line_no=line["line_no"],
        warehouse_id=line["warehouse_id"],
        order_id=line["order_id"],
        sku=line["sku"],
        bin=line["bin"],
        quantity=line["quantity"],
        picked_quantity=picked,
        repeated=repeated,
        order_picked=not missing,
    )


async def _missing_lines(uow: UnitOfWork, order_id: str, warehouse_id: str) -> list[dict[str, Any]]:
    """What of the order in this warehouse is not picked yet: queued or short lines."""
    missing: list[dict[str, Any]] = [
        {
            "picklist_id": None,
            "line_no": None,
            "sku": q["sku"],
            "bin": q["bin"],
            "quantity": q["quantity"],
            "picked_quantity": 0,
            "reason": "not on a pick list yet",
        }
        for q in await store.queued_lines_of_order(uow.conn, order_id, lock=False)
        if q["warehouse_id"] == warehouse_id
    ]
    for line in await store.lines_of_order(uow.conn, order_id, lock=False):
        if line["warehouse_id"] == warehouse_id and line["status"] == "open":
            missing.append(
                {
                    "picklist_id": str(line["picklist_id"]),
                    "line_no": line["line_no"],
                    "sku": line["sku"],
                    "bin": line["bin"],
                    "quantity": line["quantity"],
                    "picked_quantity": line["picked_quantity"],
                    "reason": "not picked in full",
                }
            )
    return missing


# -- packing ---------------------------------------------------------------------------------


async def pack_order(
    uow: UnitOfWork,
    *,
    order_id: str,
    parcels: Sequence[Parcel],
    now: datetime,
    warehouse_id: str | None = None,
    warehouses: frozenset[str] | None = None,
    by: StaffRef | None = None,
) -> PackResult:
    """The order's picked goods in one warehouse are packed into ``parcels``.

    Only when every line of the order in that warehouse is picked; once per order and
    warehouse. Emits ``orders.packed`` (with who packed and who picked) and takes the goods
    out of stock. ``warehouses``: the ones the packer may work in (None: all).
    """
    if not parcels:
        raise Invalid("a packing needs at least one parcel")
    status = await store.lock_order(uow.conn, order_id)  # cancellation takes this lock too
    if status is None:
        raise NotFound(f"unknown order {order_id}")
    if status == "cancelled":
        raise Conflict(f"order {order_id} was cancelled: do not pack it")
    lines = await store.lines_of_order(uow.conn, order_id, lock=True)
    queued = await store.queued_lines_of_order(uow.conn, order_id, lock=True)
    packed = await store.packed_warehouses(uow.conn, order_id)
    unpacked = sorted(
        {line["warehouse_id"] for line in lines if line["status"] != "packed"}
        | {q["warehouse_id"] for q in queued}
    )
    if warehouse_id is None:
        if len(unpacked) > 1:
            raise Invalid(
                f"order {order_id} is picked in several warehouses ({', '.join(unpacked)}): "
                "say which one this packing is for (warehouse_id)"
            )
        if not unpacked:
            if packed:
                raise AlreadyPacked(f"order {order_id} is packed already")
            raise Conflict(f"order {order_id} has nothing to pack (status {status})")
        warehouse_id = unpacked[0]
    if warehouses is not None and warehouse_id not in warehouses:
        raise NotYours(f"order {order_id} is packed in {warehouse_id}, not in yours")
    if warehouse_id in packed:
        raise AlreadyPacked(f"order {order_id} is packed already in {warehouse_id}")
    if warehouse_id not in unpacked:
        raise NotFound(f"order {order_id} has nothing to pack in {warehouse_id}")
    missing = await _missing_lines(uow, order_id, warehouse_id)
    if missing:
        listed = ", ".join(
            f"{m['sku']} from {m['bin']} ({m['picked_quantity']} of {m['quantity']} picked)"
            for m in missing
        )
        raise NotAllPicked(
            f"order {order_id} cannot be packed in {warehouse_id} yet: not picked: {listed}",
            missing,
        )
    picked = [
        PickLine(order_id, line["sku"], line["bin"], line["quantity"])
        for line in lines
        if line["warehouse_id"] == warehouse_id
    ]
    if not await store.insert_packing(
        uow.conn,
        order_id=order_id,
        warehouse_id=warehouse_id,
        parcels=[p.model_dump() for p in parcels],
        packed_at=now,
    ):
        raise AlreadyPacked(f"order {order_id} is packed already in {warehouse_id}")
    if by is not None:
        await store.record_packer(
            uow.conn, order_id=order_id, warehouse_id=warehouse_id, by=by.model_dump()
        )
    pickers = _pickers(line for line in lines if line["warehouse_id"] == warehouse_id)
    touched = await store.mark_packed(
        uow.conn, order_id=order_id, warehouse_id=warehouse_id, now=now
    )
    await store.close_finished_picklists(uow.conn, touched, now=now)
    shipment_lines = await _ship(
        uow,
        order_id,
        warehouse_id,
        picked,
        list(parcels),
        now=now,
        packed_by=by,
        picked_by=pickers,
    )
    order_packed = not await store.still_reserved(uow.conn, order_id)
    if order_packed:
        await repo.set_order_status(uow.conn, order_id, "packed")
    return PackResult(order_id, warehouse_id, list(parcels), shipment_lines, order_packed)


async def _ship(
    uow: UnitOfWork,
    order_id: str,
    warehouse_id: str,
    lines: Sequence[PickLine],
    parcels: list[Parcel],
    *,
    now: datetime,
    packed_by: StaffRef | None = None,
    picked_by: Sequence[StaffRef] = (),
) -> list[ShipmentLine]:
    """Packed goods leave the shelves, and ``orders.packed`` says what and from where."""
    await repo.ship_out(uow.conn, order_id, warehouse_id)
    country, postal_code = await repo.warehouse_origin(uow.conn, warehouse_id)
    shipment_lines = _shipment_lines(lines)
    # packing continues the order's trace, also when it happens on the warehouse page
    stored = await telemetry.order_trace(uow.conn, order_id)
    with telemetry.span(
        "pack order",
        service="inventory",
        parent=telemetry.context_from(stored) if stored else None,
        attributes={"waybill.order_id": order_id, "waybill.stage": "dispatch"},
    ):
        uow.emit(
            OrderPacked(
                order_id=order_id,
                warehouse_id=warehouse_id,
                parcels=parcels,
                lines=shipment_lines,
                ship_from=Origin(country=country, postal_code=postal_code),
                packed_by=packed_by,
                picked_by=list(picked_by),
            )
        )
    return shipment_lines


def _pickers(lines: Iterable[dict[str, Any]]) -> list[StaffRef]:
    """Who picked these lines, each once, in the order they first appear."""
    seen: dict[str, StaffRef] = {}
    for line in lines:
        for who in line.get("picked_by") or []:
            seen.setdefault(who["staff_id"], StaffRef.model_validate(who))
    return list(seen.values())


# -- what the floor sees ---------------------------------------------------------------------


async def list_picklists(
    uow: UnitOfWork,
    *,
    warehouse_id: str | None,
    status: str | None,
    picklist_id: UUID | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Pick lists with their lines in walking order and where each order stands."""
    found = await store.picklists(
        uow.conn, warehouse_id=warehouse_id, status=status, picklist_id=picklist_id, limit=limit
    )
    orders = await store.orders_picked_in(uow.conn, [p["picklist_id"] for p in found])
    for p in found:
        p["orders"] = [
            {"order_id": order_id, "status": order_status}
            for order_id, order_status in orders.get(p["picklist_id"], {}).items()
        ]
    return found


def picklist_json(picklist: dict[str, Any]) -> dict[str, Any]:
    return {
        "picklist_id": str(picklist["picklist_id"]),
        "warehouse_id": picklist["warehouse_id"],
        "status": picklist["status"],
        "created_at": picklist["created_at"].isoformat(),
        "closed_at": picklist["closed_at"].isoformat() if picklist["closed_at"] else None,
        "lines": [dict(line) for line in picklist["lines"]],
        "orders": picklist["orders"],
    }
