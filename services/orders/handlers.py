"""Use cases of the orders service: (event, unit of work) -> None. They emit, never publish."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from services.orders.domain.promises import promise_for
from services.orders.domain.status import advance, cancellation_refusal
from services.orders.shop_promises import ShopPromises
from services.orders.storage import repository as repo
from shared.db import UnitOfWork
from shared.events import (
    FieldReason,
    OrderAccepted,
    OrderCancellationRejected,
    OrderCancellationRequested,
    OrderCancelled,
    OrderPlaced,
    OrderRejected,
)
from shared.events.base import ORDER_ID_PATTERN
from shared.messaging import InvalidEvent

_ORDER_ID = re.compile(ORDER_ID_PATTERN)

IntakeOutcome = Literal["accepted", "duplicate", "conflict"]


def content_hash(order: OrderPlaced) -> str:
    """What makes two submissions of one order_id "the same content"."""
    content = order.model_dump(mode="json", exclude={"event_id", "occurred_at"})
    return hashlib.sha256(repo.canonical_json(content).encode()).hexdigest()


async def place_order(
    order: OrderPlaced, uow: UnitOfWork, *, promises: ShopPromises
) -> IntakeOutcome:
    """Accept a new order and promise its dates; a resubmission is a no-op or a conflict.

    The promise is the house one unless the shop has its own (``PUT /shops/{id}/promise``).
    """
    digest = content_hash(order)
    policy = await promises.policy_for(uow.conn, order.shop_id)
    promise = promise_for(order.placed_at, order.service_level, policy)
    if not await repo.insert_order(uow.conn, order, content_hash=digest, promise=promise):
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
    )
    await repo.append_timeline(
        uow.conn,
        order_id=order.order_id,
        status="accepted",
        at=accepted.occurred_at,
        topic=accepted.TOPIC,
        event_id=accepted.event_id,
        detail={"promised": promise.model_dump(mode="json")},
    )
    uow.emit(accepted)
    return "accepted"


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
