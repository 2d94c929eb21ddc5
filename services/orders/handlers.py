"""Use cases of the orders service: (event, unit of work) -> None. They emit, never publish."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
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
from shared.messaging.consumer import rounds

_ORDER_ID = re.compile(ORDER_ID_PATTERN)

IntakeOutcome = Literal["accepted", "duplicate", "conflict"]


def content_hash(order: OrderPlaced) -> str:
    """What makes two submissions of one order_id "the same content"."""
    content = order.model_dump(mode="json", exclude={"event_id", "occurred_at"})
    return hashlib.sha256(repo.canonical_json(content).encode()).hexdigest()


@dataclass(frozen=True)
class Progress:
    """One event on an order's timeline: it moves the order's status forward."""

    order_id: str
    status: str
    at: datetime
    topic: str
    event_id: UUID
    detail: dict[str, Any] | None = None


async def place_order(
    order: OrderPlaced,
    uow: UnitOfWork,
    *,
    promises: ShopPromises,
    now: datetime,
    replaces: tuple[str, str] | None = None,
) -> IntakeOutcome:
    """Accept one order (see :func:`place_orders`). ``replaces``: (order_id, return_id)
    when this is an exchange's replacement order."""
    outcomes = await place_orders(
        [order],
        uow,
        promises=promises,
        now=now,
        replaces={order.order_id: replaces} if replaces else None,
    )
    return outcomes[order.order_id]


async def place_orders(
    orders: Sequence[OrderPlaced],
    uow: UnitOfWork,
    *,
    promises: ShopPromises,
    now: datetime,
    replaces: dict[str, tuple[str, str]] | None = None,
) -> dict[str, IntakeOutcome]:
    """Accept new orders and promise their dates; a resubmission is a no-op or a conflict.

    A batch is a constant number of statements. The promise is the house one unless the
    shop has its own (``PUT /shops/{id}/promise``). The same order_id twice in a batch is
    taken in order: the second is a resubmission of the first.
    """
    outcomes: dict[str, IntakeOutcome] = {}
    for round_ in rounds(orders, key=lambda o: o.order_id):
        outcomes.update(
            await _place_round(round_, uow, promises=promises, now=now, replaces=replaces or {})
        )
    return outcomes


async def _place_round(
    orders: list[OrderPlaced],
    uow: UnitOfWork,
    *,
    promises: ShopPromises,
    now: datetime,
    replaces: dict[str, tuple[str, str]],
) -> dict[str, IntakeOutcome]:
    policies = await promises.policies_for(uow.conn, [o.shop_id for o in orders])
    digests = {o.order_id: content_hash(o) for o in orders}
    promised = {
        o.order_id: promise_for(o.placed_at, o.service_level, policies[o.shop_id]) for o in orders
    }
    inserted = await repo.insert_orders(
        uow.conn,
        [
            {
                "order_id": o.order_id,
                "shop_id": o.shop_id,
                "service_level": o.service_level,
                "currency": o.currency,
                "placed_at": o.placed_at,
                "content_hash": digests[o.order_id],
                "lines": [line.model_dump(mode="json") for line in o.lines],
                "ship_to": o.ship_to.model_dump(mode="json"),
                "customer": o.customer.model_dump(mode="json"),
                "dispatch_by": promised[o.order_id].dispatch_by,
                "deliver_by": promised[o.order_id].deliver_by,
                "replaces_order_id": replaces[o.order_id][0] if o.order_id in replaces else None,
                "replaces_return_id": replaces[o.order_id][1] if o.order_id in replaces else None,
            }
            for o in orders
        ],
    )
    outcomes: dict[str, IntakeOutcome] = {}
    existing = await repo.content_hashes(
        uow.conn, [o.order_id for o in orders if o.order_id not in inserted]
    )
    rejections = []
    for o in orders:
        if o.order_id in inserted:
            continue
        if existing.get(o.order_id) == digests[o.order_id]:
            outcomes[o.order_id] = "duplicate"
            continue
        outcomes[o.order_id] = "conflict"
        reasons = [
            FieldReason(
                field="order_id",
                message="an order with this order_id and different content exists",
            )
        ]
        rejections.append(
            {
                "event_id": o.event_id,
                "order_id": o.order_id,
                "shop_id": o.shop_id,
                "reason": "conflict",
                "reasons": [r.model_dump() for r in reasons],
            }
        )
        uow.emit(
            OrderRejected(
                order_id=o.order_id, shop_id=o.shop_id, reason="conflict", reasons=reasons
            ),
            cause=o,
        )
    await repo.insert_rejections(uow.conn, rejections)
    timeline: list[dict[str, Any]] = []
    windows: list[dict[str, Any]] = []
    accepted_orders = [o for o in orders if o.order_id in inserted]
    for o in accepted_orders:
        promise = promised[o.order_id]
        replaced = replaces.get(o.order_id)
        accepted = OrderAccepted(
            order_id=o.order_id,
            shop_id=o.shop_id,
            service_level=o.service_level,
            placed_at=o.placed_at,
            currency=o.currency,
            lines=o.lines,
            ship_to=o.ship_to,
            promised=promise,
            replaces_order_id=replaced[0] if replaced else None,
        )
        timeline.append(
            {
                "order_id": o.order_id,
                "status": "received",
                "at": o.placed_at,
                "topic": o.TOPIC,
                "event_id": o.event_id,
            }
        )
        timeline.append(
            {
                "order_id": o.order_id,
                "status": "accepted",
                "at": accepted.occurred_at,
                "topic": accepted.TOPIC,
                "event_id": accepted.event_id,
                "detail": {"promised": promise.model_dump(mode="json")}
                | (
                    {"replaces_order_id": replaced[0], "return_id": replaced[1]} if replaced else {}
                ),
            }
        )
        uow.emit(accepted, cause=o)
        windows += sla.windows_of(o, promise, accepted_at=now)
        outcomes[o.order_id] = "accepted"
    await repo.append_timelines(uow.conn, timeline)
    opened = await repo.open_slas(uow.conn, windows)
    causes = {o.order_id: o for o in accepted_orders}
    sla.opened(uow, [w for w in windows if (w["order_id"], w["stage"]) in opened], causes)
    return outcomes


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
    usable_shop = isinstance(shop_id, str) and 0 < len(shop_id) <= 64 and "\x00" not in shop_id
    rejected = OrderRejected(
        order_id=order_id,
        shop_id=shop_id if usable_shop else None,
        reason="invalid",
        reasons=reasons,
    )
    await repo.insert_rejection(
        uow.conn,
        event_id=rejected.event_id,
        order_id=order_id,
        shop_id=rejected.shop_id,
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
    await record_progress_batch(uow, [Progress(order_id, status, at, topic, event_id, detail)])


async def record_progress_batch(uow: UnitOfWork, progress: Sequence[Progress]) -> None:
    """Add events to their orders' timelines and move each order's status forward, in three
    statements for the batch. Events of one order apply in the order given."""
    if not progress:
        return
    statuses = await repo.lock_statuses(uow.conn, [p.order_id for p in progress])
    await repo.append_timelines(
        uow.conn,
        [
            {
                "order_id": p.order_id,
                "status": p.status,
                "at": p.at,
                "topic": p.topic,
                "event_id": p.event_id,
                "detail": p.detail,
            }
            for p in progress
        ],
    )
    changed: dict[str, str] = {}
    for p in progress:
        current = changed.get(p.order_id, statuses.get(p.order_id))
        if current is None:
            continue  # not an order of ours (yet): the timeline keeps the event
        new_status = advance(current, p.status)
        if new_status != current:
            changed[p.order_id] = new_status
    await repo.set_statuses(uow.conn, changed)


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
