"""Use cases of the returns service."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from datetime import datetime
from typing import Any

from services.returns.domain.window import decide_return
from services.returns.storage import repository as repo
from shared.db import UnitOfWork
from shared.db.notify import notify
from shared.events import (
    OrderAccepted,
    ReturnApproved,
    ReturnLabel,
    ReturnRejected,
    ReturnRequested,
    ShipmentDelivered,
)
from shared.messaging import InvalidEvent


def rma_for(return_id: str) -> str:
    return "RMA-" + hashlib.sha256(return_id.encode()).hexdigest()[:10].upper()


def request_hash(event: ReturnRequested) -> str:
    content = event.model_dump(mode="json", exclude={"event_id", "occurred_at"})
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


async def remember_order(event: OrderAccepted, uow: UnitOfWork) -> None:
    await repo.remember_order(
        uow.conn,
        order_id=event.order_id,
        currency=event.currency,
        lines=[line.model_dump(mode="json") for line in event.lines],
        ship_to=event.ship_to.model_dump(mode="json"),
    )


async def record_delivery(event: ShipmentDelivered, uow: UnitOfWork) -> None:
    await repo.record_delivery(
        uow.conn,
        shipment_id=event.shipment_id,
        order_id=event.order_id,
        delivered_at=event.delivered_at,
        carrier=event.carrier,
        warehouse_id=event.warehouse_id,
        ship_from=event.ship_from.model_dump() if event.ship_from else None,
        lines=[line.model_dump() for line in event.lines],
    )


async def request_return(
    event: ReturnRequested, uow: UnitOfWork, *, window_days: int, now: datetime
) -> None:
    """Decide a return; a return_id seen before is a no-op."""
    if await repo.find_return(uow.conn, event.return_id) is not None:
        return
    order = await repo.lock_order(uow.conn, event.order_id)
    deliveries = await repo.deliveries_of(uow.conn, event.order_id) if order else []
    wanted: dict[str, int] = defaultdict(int)
    for line in event.lines:
        wanted[line.sku] += line.quantity
    decision = decide_return(
        requested_at=event.requested_at,
        lines=wanted,
        order_known=order is not None,
        deliveries=[d for d, _ in deliveries],
        already_returned=await repo.returned_quantities(uow.conn, event.order_id),
        window_days=window_days,
        now=now,
    )
    common: dict[str, Any] = {
        "return_id": event.return_id,
        "order_id": event.order_id,
        "requested_at": event.requested_at,
        "request_hash": request_hash(event),
        "lines": [line.model_dump() for line in event.lines],
        "resolution": event.resolution,
        "exchange_for": (
            [line.model_dump() for line in event.exchange_for] if event.exchange_for else None
        ),
        "idempotency_key": f"waybill-return-{event.return_id}",
    }
    if not decision.approved:
        assert decision.reason is not None
        await repo.insert_return(
            uow.conn, **common, status="rejected", reason=decision.reason, decided_at=now
        )
        uow.emit(
            ReturnRejected(
                return_id=event.return_id, order_id=event.order_id, reason=decision.reason
            )
        )
        return
    assert decision.deliveries is not None and order is not None
    rows = {str(row["shipment_id"]): row for _, row in deliveries}
    delivery = rows[max(decision.deliveries.values(), key=lambda d: d.delivered_at).shipment_id]
    await repo.insert_return(
        uow.conn,
        **common,
        status="label_pending",
        rma=rma_for(event.return_id),
        carrier=delivery["carrier"],
        warehouse_id=delivery["warehouse_id"],
        ship_to=order["ship_to"],
    )
    await notify(uow.conn, repo.LABELS_CHANNEL)


async def reject_invalid_return(invalid: InvalidEvent, uow: UnitOfWork) -> bool:
    """``returns.rejected`` reason ``invalid``; a payload with no usable ids is dead-lettered."""
    return_id, order_id = invalid.payload.get("return_id"), invalid.payload.get("order_id")
    if not (isinstance(return_id, str) and isinstance(order_id, str)):
        return False
    if not (0 < len(return_id) <= 64 and 0 < len(order_id) <= 64):
        return False
    if await repo.find_return(uow.conn, return_id) is not None:
        return True
    uow.emit(ReturnRejected(return_id=return_id, order_id=order_id, reason="invalid"))
    return True


async def approve_with_label(uow: UnitOfWork, ret: dict[str, Any], label: ReturnLabel) -> None:
    if await repo.approve(uow.conn, ret["return_id"], label=label.model_dump()):
        uow.emit(
            ReturnApproved(
                return_id=ret["return_id"],
                order_id=ret["order_id"],
                rma=ret["rma"],
                return_label=label,
            )
        )
