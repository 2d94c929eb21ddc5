"""Use cases of the returns service."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeGuard

from opentelemetry import trace
from pydantic import TypeAdapter, ValidationError

from services.returns.domain.window import decide_return
from services.returns.storage import repository as repo
from shared import telemetry
from shared.db import UnitOfWork
from shared.db.notify import notify
from shared.events import (
    ExchangeRequested,
    OrderAccepted,
    ReceivedLine,
    RefundRequested,
    ReturnApproved,
    ReturnLabel,
    ReturnLine,
    ReturnReceived,
    ReturnRejected,
    ReturnRequested,
    ShipmentDelivered,
)
from shared.events.base import Identifier, StaffRef
from shared.messaging import InvalidEvent


def rma_for(return_id: str) -> str:
    return "RMA-" + hashlib.sha256(return_id.encode()).hexdigest()[:10].upper()


def request_hash(event: ReturnRequested) -> str:
    content = event.model_dump(mode="json", exclude={"event_id", "occurred_at"})
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


async def remember_orders(
    events: Sequence[OrderAccepted], uow: UnitOfWork, *, window_days: int, now: datetime
) -> None:
    """Keep what returns needs of accepted orders; decide the requests that waited."""
    await telemetry.remember_order_traces(uow.conn, {e.order_id: uow.trace_of(e) for e in events})
    await repo.remember_orders(
        uow.conn,
        [
            {
                "order_id": e.order_id,
                "shop_id": e.shop_id,
                "currency": e.currency,
                "lines": [line.model_dump(mode="json") for line in e.lines],
                "ship_to": e.ship_to.model_dump(mode="json"),
            }
            for e in events
        ],
    )
    for ret in await repo.pending_of_orders(uow.conn, [e.order_id for e in events]):
        await decide(uow, ret, window_days=window_days, now=now, final=False)


async def record_delivery(
    event: ShipmentDelivered, uow: UnitOfWork, *, window_days: int, now: datetime
) -> None:
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
    await decide_pending(uow, event.order_id, window_days=window_days, now=now)


#: reasons that may only mean "not heard of yet": the order's or the delivery's event can
#: reach returns after the request does (they travel on other topics)
_MAYBE_NOT_YET = frozenset({"unknown_order", "not_delivered"})


async def request_return(
    event: ReturnRequested,
    uow: UnitOfWork,
    *,
    window_days: int,
    now: datetime,
    grace: timedelta = timedelta(0),
) -> None:
    """Record a return request and decide it; a return_id seen before is a no-op.

    A request that would be rejected for an unknown order or an undelivered shipment waits
    up to ``grace`` for that news (see :func:`decide_pending`) before it is rejected.
    """
    if await repo.find_return(uow.conn, event.return_id) is not None:
        return
    # a return starts a trace of its own (the shop's request), linked to the order's first
    for link in telemetry.link_to(await telemetry.order_trace(uow.conn, event.order_id)):
        trace.get_current_span().add_link(link.context, {"waybill.link": "order"})
    ret: dict[str, Any] = {
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
    await repo.insert_return(uow.conn, **ret, status="pending")
    await repo.wait_until(uow.conn, event.return_id, delay=grace)
    await decide(uow, ret, window_days=window_days, now=now, final=grace <= timedelta(0))


async def decide(
    uow: UnitOfWork, ret: dict[str, Any], *, window_days: int, now: datetime, final: bool
) -> bool:
    """Decide a pending return: approve (a label is bought next) or reject with one reason.
    Not ``final``: a rejection that later news could change leaves it pending. Returns
    whether it was decided."""
    order_id = ret["order_id"]
    order = await repo.lock_order(uow.conn, order_id)
    deliveries = await repo.deliveries_of(uow.conn, order_id) if order else []
    wanted: dict[str, int] = defaultdict(int)
    for line in ret["lines"]:
        wanted[line["sku"]] += int(line["quantity"])
    decision = decide_return(
        requested_at=ret["requested_at"],
        lines=wanted,
        order_known=order is not None,
        deliveries=[d for d, _ in deliveries],
        already_returned=await repo.returned_quantities(uow.conn, order_id),
        window_days=window_days,
        now=now,
    )
    if not decision.approved:
        assert decision.reason is not None
        if not final and decision.reason in _MAYBE_NOT_YET:
            return False
        await repo.decide(
            uow.conn, ret["return_id"], status="rejected", decided_at=now, reason=decision.reason
        )
        uow.emit(
            ReturnRejected(return_id=ret["return_id"], order_id=order_id, reason=decision.reason)
        )
        return True
    assert decision.deliveries is not None and order is not None
    rows = {str(row["shipment_id"]): row for _, row in deliveries}
    delivery = rows[max(decision.deliveries.values(), key=lambda d: d.delivered_at).shipment_id]
    await repo.decide(
        uow.conn,
        ret["return_id"],
        status="label_pending",
        decided_at=now,
        rma=rma_for(ret["return_id"]),
        carrier=delivery["carrier"],
        warehouse_id=delivery["warehouse_id"],
        ship_to=order["ship_to"],
        return_to=(
            {k: delivery["ship_from"][k] for k in ("country", "postal_code")}
            if delivery["ship_from"]
            else None
        ),
    )
    await notify(uow.conn, repo.LABELS_CHANNEL)
    return True


async def decide_pending(
    uow: UnitOfWork, order_id: str, *, window_days: int, now: datetime
) -> None:
    """News of an order or a delivery arrived: decide the requests that waited for it."""
    for ret in await repo.pending_of_order(uow.conn, order_id):
        await decide(uow, ret, window_days=window_days, now=now, final=False)


_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def _usable_identifier(value: object) -> TypeGuard[str]:
    try:
        _IDENTIFIER.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


async def reject_invalid_return(invalid: InvalidEvent, uow: UnitOfWork) -> bool:
    """``returns.rejected`` reason ``invalid``; a payload with no usable ids is dead-lettered."""
    return_id, order_id = invalid.payload.get("return_id"), invalid.payload.get("order_id")
    if not (_usable_identifier(return_id) and _usable_identifier(order_id)):
        return False  # a rejection naming it could not even be stored
    if await repo.find_return(uow.conn, return_id) is not None:
        return True
    uow.emit(ReturnRejected(return_id=return_id, order_id=order_id, reason="invalid"))
    return True


def replacement_order_id_for(return_id: str) -> str:
    """The replacement order of an exchange: one per return, whoever asks twice."""
    return "exchange:" + hashlib.sha256(return_id.encode()).hexdigest()[:20]


async def approve_with_label(
    uow: UnitOfWork, ret: dict[str, Any], label: ReturnLabel, *, attempts: int
) -> None:
    """The label is bought: approve, and for an exchange ask orders for the replacement."""
    exchange = ret["resolution"] == "exchange"
    replacement = replacement_order_id_for(ret["return_id"]) if exchange else None
    if not await repo.approve(
        uow.conn,
        ret["return_id"],
        label=label.model_dump(),
        attempts=attempts,
        replacement_order_id=replacement,
    ):
        return
    lines = [ReturnLine(**line) for line in ret["lines"]]
    uow.emit(
        ReturnApproved(
            return_id=ret["return_id"],
            order_id=ret["order_id"],
            rma=ret["rma"],
            return_label=label,
            lines=lines,
            warehouse_id=ret["warehouse_id"],
            resolution=ret["resolution"],
        )
    )
    if replacement is not None:
        # the same goods again unless the customer asked for others (another size)
        wanted = ret["exchange_for"] or ret["lines"]
        uow.emit(
            ExchangeRequested(
                return_id=ret["return_id"],
                order_id=ret["order_id"],
                replacement_order_id=replacement,
                lines=[ReturnLine(**line) for line in wanted],
            )
        )


class ReceiptRefused(Exception):
    """A receipt that does not fit the return: ``status`` says how (404, 409, 422)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


def refund_amount(order_lines: list[dict[str, Any]], received: list[ReceivedLine]) -> Decimal:
    """What the received goods cost in the order, to the cent (the first order line of a
    sku gives its price)."""
    prices: dict[str, Decimal] = {}
    for line in order_lines:
        prices.setdefault(line["sku"], Decimal(str(line["unit_price"])))
    total = sum((prices[line.sku] * line.quantity for line in received), Decimal("0"))
    return total.quantize(Decimal("0.01"))


def _receipt_problems(ret: dict[str, Any], lines: list[ReceivedLine]) -> list[dict[str, Any]]:
    expected: dict[str, int] = defaultdict(int)
    for line in ret["lines"]:
        expected[line["sku"]] += int(line["quantity"])
    received: dict[str, int] = defaultdict(int)
    for line in lines:
        received[line.sku] += line.quantity
    problems = []
    for index, line in enumerate(lines):
        if line.sku not in expected:
            problems.append(
                {
                    "loc": ["body", "lines", index, "sku"],
                    "msg": f"{line.sku} is not part of return {ret['return_id']}",
                    "type": "value_error",
                }
            )
        elif received[line.sku] > expected[line.sku]:
            problems.append(
                {
                    "loc": ["body", "lines", index, "quantity"],
                    "msg": f"{received[line.sku]} x {line.sku} received, "
                    f"{expected[line.sku]} expected",
                    "type": "value_error",
                }
            )
    return problems


def _same_receipt(ret: dict[str, Any], lines: list[ReceivedLine]) -> bool:
    def canonical(items: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
        return sorted((i["sku"], i["condition"], int(i["quantity"])) for i in items)

    return canonical(ret["received_lines"] or []) == canonical(
        [line.model_dump() for line in lines]
    )


async def receive_return(
    uow: UnitOfWork,
    return_id: str,
    lines: list[ReceivedLine],
    *,
    now: datetime,
    warehouse_id: str | None = None,
    warehouses: frozenset[str] | None = None,
    by: StaffRef | None = None,
) -> dict[str, Any]:
    """Record what came back: ``returns.received`` (with ``by``, who received it) and, for a
    refund, ``refunds.requested``, once. The same receipt again answers the first one; a
    different one is refused. ``warehouses``: where the receiver may work (None: all)."""
    ret = await repo.lock_return(uow.conn, return_id)
    if ret is None:
        raise ReceiptRefused(404, f"no return {return_id}")
    if warehouses is not None and ret["warehouse_id"] not in warehouses:
        raise ReceiptRefused(403, f"return {return_id} does not go to your warehouse")
    if ret["status"] == "received":
        if _same_receipt(ret, lines):
            return _receipt_view(ret)
        raise ReceiptRefused(409, f"return {return_id} was received already, with other lines")
    if ret["status"] != "approved":
        raise ReceiptRefused(409, f"return {return_id} is {ret['status']}, not approved")
    problems = _receipt_problems(ret, lines)
    if problems:
        raise ReceiptRefused(422, problems)
    if warehouse_id is not None and ret["warehouse_id"] not in (None, warehouse_id):
        raise ReceiptRefused(
            409, f"return {return_id} goes to {ret['warehouse_id']}, not {warehouse_id}"
        )
    amount = refund_amount(ret["order_lines"], lines) if ret["resolution"] == "refund" else None
    dumped = [line.model_dump() for line in lines]
    await repo.record_receipt(
        uow.conn, return_id, lines=dumped, refund_amount=amount, received_at=now
    )
    uow.emit(
        ReturnReceived(
            return_id=return_id,
            order_id=ret["order_id"],
            warehouse_id=ret["warehouse_id"] or warehouse_id,
            lines=lines,
            received_by=by,
        )
    )
    if amount is not None:
        uow.emit(
            RefundRequested(
                return_id=return_id,
                order_id=ret["order_id"],
                amount=amount,
                currency=ret["currency"],
            )
        )
    ret.update(status="received", received_lines=dumped, refund_amount=amount, received_at=now)
    return _receipt_view(ret)


def _receipt_view(ret: dict[str, Any]) -> dict[str, Any]:
    return {
        "return_id": ret["return_id"],
        "status": ret["status"],
        "received_at": ret["received_at"],
        "lines": ret["received_lines"],
        "refund": (
            {"amount": str(ret["refund_amount"]), "currency": ret["currency"]}
            if ret["refund_amount"] is not None
            else None
        ),
    }
