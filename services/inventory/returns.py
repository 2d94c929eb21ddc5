"""Returns in the warehouse: expected parcels by RMA, receiving them on the warehouse page,
and putting what comes back sellable on the shelf again (damaged goods are written off).

Returns (the service) decides and is the authority on what was received: the page's
receipt goes to it as ``warehouse.return-scanned``, and stock only changes on its
``returns.received``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from services.inventory.handlers import serve_backorders
from services.inventory.storage import repository as repo
from shared.db import UnitOfWork
from shared.events import (
    ReceivedLine,
    ReturnApproved,
    ReturnReceived,
    ReturnScanned,
    StockRestocked,
)
from shared.events.base import StaffRef
from shared.messaging import PermanentFailure


class ReceiptRefused(Exception):
    """A receipt on the page that does not fit the expected return."""

    def __init__(self, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


async def expect_return(event: ReturnApproved, uow: UnitOfWork) -> None:
    """Remember an approved return until its parcel is back.

    A return whose ``warehouse_id`` is None (returns did not learn which warehouse shipped
    the goods) is stored all the same but listed on no warehouse page: each page shows only
    its own warehouse's returns. ``GET /returns/expected`` without ``warehouse_id`` lists it,
    and it can still be received through returns' ``POST /returns/{id}/received``.

    ``returns.received`` travels on another topic and may be handled first (a replay from the
    dead letters, a lagging partition): then the return is stored as received already, so
    that it never shows up on the page again.
    """
    await repo.lock_return(uow.conn, event.return_id)
    received_at = await repo.return_received_at(uow.conn, event.return_id)
    await repo.expect_return(
        uow.conn,
        return_id=event.return_id,
        rma=event.rma,
        order_id=event.order_id,
        warehouse_id=event.warehouse_id,
        lines=[line.model_dump() for line in event.lines],
        resolution=event.resolution,
        approved_at=event.occurred_at,
        received_at=received_at,
    )


def check_receipt(expected: dict[str, Any], lines: list[ReceivedLine]) -> None:
    """Raise ReceiptRefused unless ``lines`` take back at most what the return announced."""
    wanted: dict[str, int] = defaultdict(int)
    for line in expected["lines"]:
        wanted[line["sku"]] += int(line["quantity"])
    got: dict[str, int] = defaultdict(int)
    for line in lines:
        got[line.sku] += line.quantity
    if not got:
        raise ReceiptRefused("enter at least one item as sellable or damaged")
    for sku, quantity in got.items():
        if sku not in wanted:
            raise ReceiptRefused(f"{sku} is not part of {expected['rma']}")
        if quantity > wanted[sku]:
            raise ReceiptRefused(
                f"{quantity} x {sku} received, but {expected['rma']} announced {wanted[sku]}"
            )


async def scan_return(
    uow: UnitOfWork,
    *,
    warehouse_id: str,
    return_id: str,
    lines: list[ReceivedLine],
    now: datetime,
    by: StaffRef | None = None,
) -> dict[str, Any]:
    """Staff received a return parcel: check it, then tell returns (once), with who."""
    expected = await repo.lock_expected_return(uow.conn, return_id)
    if expected is None or expected["warehouse_id"] != warehouse_id:
        raise ReceiptRefused(f"no return {return_id} expected in {warehouse_id}", status=404)
    if expected["status"] != "expected":
        raise ReceiptRefused(f"{expected['rma']} was received already", status=409)
    check_receipt(expected, lines)
    await repo.mark_return(uow.conn, return_id, status="scanned", at=now)
    uow.emit(
        ReturnScanned(return_id=return_id, warehouse_id=warehouse_id, lines=lines, received_by=by)
    )
    return expected


async def restock_return(
    event: ReturnReceived, uow: UnitOfWork, *, autopick: bool, now: datetime
) -> None:
    """Sellable goods back on hand where they were shipped from (then backorders waiting on
    them are served); damaged goods written off. Once per return and sku.

    Returns is the authority on what came back and where: its ``warehouse_id`` wins over the
    one the approval announced; without one, the approval's is used.

    A warehouse inventory does not know (or none at all) is dead-lettered
    (``PermanentFailure``), as ``inventory.stock-received`` for an unknown warehouse is, and
    nothing of the event is applied: guessing another warehouse would put goods on the wrong
    shelf, dropping the event would lose them, and inventing the warehouse would give it no
    location for allocation. The dead letter keeps the event whole, so ops can register the
    warehouse (``PUT /warehouses/{id}``) and replay it (``waybill dlq``); it then restocks
    exactly once like any other delivery.
    """
    await repo.lock_return(uow.conn, event.return_id)
    expected = await repo.lock_expected_return(uow.conn, event.return_id)
    warehouse_id = event.warehouse_id or (expected or {}).get("warehouse_id")
    if warehouse_id is None or not await repo.warehouse_exists(uow.conn, warehouse_id):
        raise PermanentFailure(
            f"return {event.return_id} received for unknown warehouse {warehouse_id!r}: "
            "register the warehouse, then replay this dead letter"
        )
    sellable: dict[str, int] = defaultdict(int)
    damaged: dict[str, int] = defaultdict(int)
    for line in event.lines:
        (sellable if line.condition == "sellable" else damaged)[line.sku] += line.quantity
    for sku, quantity in sorted(damaged.items()):
        await repo.write_off(
            uow.conn,
            return_id=event.return_id,
            warehouse_id=warehouse_id,
            sku=sku,
            quantity=quantity,
        )
    for sku, quantity in sorted(sellable.items()):
        if not await repo.restock(
            uow.conn,
            return_id=event.return_id,
            warehouse_id=warehouse_id,
            sku=sku,
            quantity=quantity,
        ):
            continue
        uow.emit(
            StockRestocked(
                return_id=event.return_id,
                order_id=event.order_id,
                warehouse_id=warehouse_id,
                sku=sku,
                quantity=quantity,
            )
        )
        await serve_backorders(uow, sku, autopick=autopick, now=now)
    if expected is not None and expected["status"] != "received":
        await repo.mark_return(uow.conn, event.return_id, status="received", at=now)
