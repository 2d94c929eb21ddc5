"""Use cases of the orders service: (event, unit of work) -> None. They emit, never publish."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from services.orders import sla
from services.orders.domain.promises import promise_for
from services.orders.domain.status import advance, cancellation_refusal
from services.orders.shop_promises import ShopPromises
from services.orders.storage import repository as repo
from shared import metrics
from shared.db import UnitOfWork
from shared.events import (
    ExchangeRequested,
    FieldReason,
    OrderAccepted,
    OrderCancellationRejected,
    OrderCancellationRequested,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    ReturnRequested,
    SlaBreached,
)
from shared.events.base import ORDER_ID_PATTERN
from shared.messaging import InvalidEvent, PermanentFailure

_ORDER_ID = re.compile(ORDER_ID_PATTERN)

IntakeOutcome = Literal["accepted", "duplicate", "conflict"]


def content_hash(order: OrderPlaced) -> str:
    """What makes two submissions of one order_id "the same content"."""
    content = order.model_dump(mode="json", exclude={"event_id", "occurred_at"})
    return hashlib.sha256(repo.canonical_json(content).encode()).hexdigest()


async def place_order(
    order: OrderPlaced,
    uow: UnitOfWork,
    *,
    promises: ShopPromises,
    now: datetime,
    replaces: tuple[str, str] | None = None,
) -> IntakeOutcome:
    """Accept a new order and promise its dates; a resubmission is a no-op or a conflict.

    The promise is the house one unless the shop has its own (``PUT /shops/{id}/promise``).
    ``replaces``: (order_id, return_id) when this is an exchange's replacement order.
    """
    digest = content_hash(order)
    policy = await promises.policy_for(uow.conn, order.shop_id)
    promise = promise_for(order.placed_at, order.service_level, policy)
    if not await repo.insert_order(
        uow.conn, order, content_hash=digest, promise=promise, replaces=replaces
    ):
        if await repo.content_hash_of(uow.conn, order.order_id) == digest:
            return "duplicate"
        reasons = [
            FieldReason(
                field="order_id",
                message="an order with this order_id and different content exists",
            )
        ]
        await repo.insert_rejection(
            uow.conn,
            event_id=order.event_id,
            order_id=order.order_id,
            reason="conflict",
            reasons=[r.model_dump() for r in reasons],
        )
        uow.emit(
            OrderRejected(
                order_id=order.order_id, shop_id=order.shop_id, reason="conflict", reasons=reasons
            )
        )
        return "conflict"
    await repo.append_timeline(
        uow.conn,
        order_id=order.order_id,
        status="received",
        at=order.placed_at,
        topic=order.TOPIC,
        event_id=order.event_id,
    )
    accepted = OrderAccepted(
        order_id=order.order_id,
        shop_id=order.shop_id,
        service_level=order.service_level,
        placed_at=order.placed_at,
        currency=order.currency,
        lines=order.lines,
        ship_to=order.ship_to,
        promised=promise,
        replaces_order_id=replaces[0] if replaces else None,
    )
    await repo.append_timeline(
        uow.conn,
        order_id=order.order_id,
        status="accepted",
        at=accepted.occurred_at,
        topic=accepted.TOPIC,
        event_id=accepted.event_id,
        detail={"promised": promise.model_dump(mode="json")}
        | ({"replaces_order_id": replaces[0], "return_id": replaces[1]} if replaces else {}),
    )
    uow.emit(accepted)
    await sla.open_stages(
        uow, order_id=order.order_id, placed_at=order.placed_at, promise=promise, accepted_at=now
    )
    return "accepted"


async def exchange(
    request: ExchangeRequested, uow: UnitOfWork, *, promises: ShopPromises, now: datetime
) -> None:
    """An approved exchange: a replacement order for ``request.lines``, made from this
    service's own copy of the original (shop, customer, address, currency, service level),
    accepted like any order so that it is reserved, picked and shipped. The lines cost
    nothing: the customer paid with the original order. The original ends ``exchanged``.
    The same replacement_order_id again changes nothing."""
    original = await repo.fetch_order(uow.conn, request.order_id)
    if original is None:
        raise PermanentFailure(f"exchange for unknown order {request.order_id}")
    replacement = OrderPlaced(
        event_id=request.event_id,
        order_id=request.replacement_order_id,
        shop_id=original["shop_id"],
        placed_at=now,
        service_level=original["service_level"],
        currency=original["currency"],
        customer=original["customer"],
        ship_to=original["ship_to"],
        lines=[
            OrderLine(sku=line.sku, quantity=line.quantity, unit_price=Decimal("0.00"))
            for line in request.lines
        ],
    )
    outcome = await place_order(
        replacement,
        uow,
        promises=promises,
        now=now,
        replaces=(request.order_id, request.return_id),
    )
    if outcome != "accepted":
        return
    await record_progress(
        uow,
        order_id=request.order_id,
        status="exchanged",
        at=now,
        topic=request.TOPIC,
        event_id=request.event_id,
        detail={
            "return_id": request.return_id,
            "replacement_order_id": request.replacement_order_id,
        },
    )


async def return_requested(
    request: ReturnRequested, uow: UnitOfWork, *, now: datetime, decision_within: timedelta
) -> None:
    """Timeline, and the return-decision deadline: counted from when Waybill saw it."""
    await record_progress(
        uow,
        order_id=request.order_id,
        status="return_requested",
        at=request.requested_at,
        topic=request.TOPIC,
        event_id=request.event_id,
        detail={"return_id": request.return_id},
    )
    if await repo.lock_status(uow.conn, request.order_id) is None:
        return  # not an order of ours: returns rejects it, nobody waits for a decision
    await repo.record_return_request(
        uow.conn,
        return_id=request.return_id,
        order_id=request.order_id,
        seen_at=now,
        deadline=now + decision_within,
    )


async def return_decided(
    uow: UnitOfWork,
    *,
    return_id: str,
    order_id: str,
    decision: str,
    now: datetime,
    decision_within: timedelta,
) -> None:
    """A decision: a late one breaches the SLA now, unless the watcher already did."""
    late = await repo.record_return_decision(
        uow.conn,
        return_id=return_id,
        order_id=order_id,
        decision=decision,
        decided_at=now,
        deadline_if_unseen=now + decision_within,
    )
    if late is not None:
        await breach_return_decision(
            uow, return_id=return_id, order_id=late["order_id"], deadline=late["deadline"], at=now
        )


async def breach_return_decision(
    uow: UnitOfWork, *, return_id: str, order_id: str, deadline: datetime, at: datetime
) -> None:
    if await repo.mark_return_decision_breached(uow.conn, return_id, at):
        metrics.sla_breaches.add(1, {"service": "orders", "stage": "return_decision"})
        uow.emit(
            SlaBreached(
                order_id=order_id, stage="return_decision", deadline=deadline, observed_at=at
            )
        )


def usable_order_id(payload: dict[str, Any]) -> str | None:
    """The order_id of a payload, if it is one a rejection can be keyed by."""
    value = payload.get("order_id")
    if isinstance(value, str) and _ORDER_ID.match(value):
        return value
    return None


async def reject_invalid_order(invalid: InvalidEvent, uow: UnitOfWork) -> bool:
    """``orders.rejected`` with every field's reason; False (so: dead letter) without an id."""
    order_id = usable_order_id(invalid.payload)
    if order_id is None:
        return False
    reasons = [FieldReason(field=f, message=m) for f, m in invalid.field_errors()]
    shop_id = invalid.payload.get("shop_id")
    rejected = OrderRejected(
        order_id=order_id,
        shop_id=shop_id if isinstance(shop_id, str) else None,
        reason="invalid",
        reasons=reasons,
    )
    await repo.insert_rejection(
        uow.conn,
        event_id=rejected.event_id,
        order_id=order_id,
        reason="invalid",
        reasons=[r.model_dump() for r in reasons],
    )
    uow.emit(rejected)
    return True


async def record_progress(
    uow: UnitOfWork,
    *,
    order_id: str,
    status: str,
    at: datetime,
    topic: str,
    event_id: UUID,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an event to an order's timeline and move its status forward."""
    current = await repo.lock_status(uow.conn, order_id)
    await repo.append_timeline(
        uow.conn,
        order_id=order_id,
        status=status,
        at=at,
        topic=topic,
        event_id=event_id,
        detail=detail,
    )
    if current is not None:
        new_status = advance(current, status)
        if new_status != current:
            await repo.set_status(uow.conn, order_id, new_status)


async def cancel_order(request: OrderCancellationRequested, uow: UnitOfWork) -> None:
    """Cancel while nothing is in a carrier's hands; inventory and shipping follow the event."""
    status = await repo.lock_status(uow.conn, request.order_id)
    refusal = cancellation_refusal(status)
    if refusal is not None:
        refused = OrderCancellationRejected(order_id=request.order_id, reason=refusal)
        uow.emit(refused)
        if status is not None:
            await repo.append_timeline(
                uow.conn,
                order_id=request.order_id,
                status="cancellation_rejected",
                at=refused.occurred_at,
                topic=refused.TOPIC,
                event_id=refused.event_id,
                detail={"reason": refusal},
            )
        return
    cancelled = OrderCancelled(order_id=request.order_id, reason=request.reason)
    uow.emit(cancelled)
    await repo.close_slas(uow.conn, request.order_id)
    await record_progress(
        uow,
        order_id=request.order_id,
        status="cancelled",
        at=cancelled.occurred_at,
        topic=cancelled.TOPIC,
        event_id=cancelled.event_id,
        detail={"reason": request.reason} if request.reason else None,
    )


async def reject_invalid_cancellation(invalid: InvalidEvent, uow: UnitOfWork) -> bool:
    """A cancellation request that is not valid is answered when it names an order."""
    order_id = usable_order_id(invalid.payload)
    if order_id is None:
        return False
    uow.emit(OrderCancellationRejected(order_id=order_id, reason="invalid"))
    return True
