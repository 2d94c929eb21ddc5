"""Use cases of the shipping service."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import asyncpg
from opentelemetry.context import Context

from services.shipping.domain import tracking
from services.shipping.domain.rating import choose_rate
from services.shipping.domain.sla import delivery_breached_at
from services.shipping.storage import repository as repo
from shared import metrics, telemetry
from shared.batching import Coalescer
from shared.carriers import CarrierError, LabelRequest, Place, RateRequest
from shared.carriers.base import Quotes, TrackingEvent
from shared.carriers.purchase import (
    Attempt,
    Choice,
    LabelPurchaser,
    Pick,
    PurchaseState,
    carrier_call,
)
from shared.db import UnitOfWork, unit_of_work
from shared.db.notify import notify
from shared.events import (
    OrderAccepted,
    OrderCancelled,
    OrderPacked,
    Origin,
    ShipmentDelivered,
    ShipmentException,
    ShipmentLabelCreated,
    ShipmentLine,
    ShipmentShipped,
    SlaBreached,
)

log = logging.getLogger("waybill.shipping")

_SHIPMENT_NAMESPACE = UUID("5b0f1c2e-8d4a-4f7e-b1a3-6c9d2e8f4a10")
#: where a parcel leaves from when the packing event does not say
DEFAULT_ORIGIN = Place(country="DE", postal_code="10115")


def shipment_id_for(order_id: str, warehouse_id: str) -> UUID:
    """One shipment per order and warehouse: a redelivered packing event finds the same one."""
    return uuid5(_SHIPMENT_NAMESPACE, f"{order_id}/{warehouse_id}")


async def remember_orders(events: Sequence[OrderAccepted], uow: UnitOfWork) -> None:
    """Keep what shipping needs of accepted orders; release shipments packed before."""
    await telemetry.remember_order_traces(uow.conn, {e.order_id: uow.trace_of(e) for e in events})
    released = await repo.remember_orders(
        uow.conn,
        [
            {
                "order_id": e.order_id,
                "shop_id": e.shop_id,
                "service_level": e.service_level,
                "placed_at": e.placed_at,
                "deliver_by": e.promised.deliver_by,
                "ship_to": e.ship_to.model_dump(mode="json"),
            }
            for e in events
        ],
    )
    if released:
        await notify(uow.conn, repo.LABELS_CHANNEL)


async def cancel_order(event: OrderCancelled, uow: UnitOfWork) -> None:
    """No label is bought for a cancelled order, and one not yet scanned is voided."""
    if await repo.cancel_shipments(uow.conn, event.order_id):
        await notify(uow.conn, repo.VOIDS_CHANNEL)


async def request_labels(events: Sequence[OrderPacked], uow: UnitOfWork) -> None:
    """Record each label purchase, with its idempotency key, before the first attempt."""
    known, cancelled = await repo.orders_known_and_cancelled(uow.conn, [e.order_id for e in events])
    shipments = []
    for event in events:
        shipment_id = shipment_id_for(event.order_id, event.warehouse_id)
        if event.order_id in cancelled:
            state = "cancelled"
        else:
            state = "label_pending" if event.order_id in known else "awaiting_order"
        shipments.append(
            {
                "shipment_id": shipment_id,
                "order_id": event.order_id,
                "warehouse_id": event.warehouse_id,
                "state": state,
                "idempotency_key": f"waybill-{shipment_id}",
                "ship_from": event.ship_from.model_dump() if event.ship_from else None,
                "parcels": [p.model_dump() for p in event.parcels],
                "lines": [line.model_dump() for line in event.lines],
                # the label's purchase continues the order's trace from here
                "trace_context": uow.trace_of(event),
            }
        )
    await repo.insert_shipments(uow.conn, shipments)
    if any(s["state"] == "label_pending" for s in shipments):
        await notify(uow.conn, repo.LABELS_CHANNEL)


def origin_of(shipment: dict[str, Any]) -> Place:
    return Place(**shipment["ship_from"]) if shipment["ship_from"] else DEFAULT_ORIGIN


def key_prefix_of(shipment: dict[str, Any]) -> str:
    return f"waybill-{shipment['shipment_id']}"


def purchase_state(shipment: dict[str, Any]) -> PurchaseState:
    """A stored shipment as the purchaser sees it."""
    choice = None
    if shipment["carrier"] is not None:
        choice = Choice(
            carrier=shipment["carrier"],
            service=shipment["service"],
            idempotency_key=shipment["idempotency_key"],
        )
    return PurchaseState(
        key_prefix=key_prefix_of(shipment),
        choice=choice,
        pinned=shipment["carrier_pinned"],
        attempts=shipment["attempts"],
    )


def rate_request(shipment: dict[str, Any], carriers: Collection[str] | None) -> RateRequest:
    ship_to = shipment["ship_to"]
    return RateRequest(
        ship_from=origin_of(shipment),
        ship_to=Place(country=ship_to["country"], postal_code=ship_to["postal_code"]),
        parcels=shipment["parcels"],
        carriers=tuple(sorted(carriers)) if carriers is not None else None,
    )


def pick_rate(quotes: Quotes, *, ship_at: datetime, deliver_by: datetime | None) -> Pick | None:
    """Rate shopping against the promise (see domain.rating)."""
    chosen = choose_rate(quotes.rates, ship_at=ship_at, deliver_by=deliver_by)
    if chosen is None:
        return None
    return Pick(
        carrier=chosen.rate.carrier,
        service=chosen.rate.service,
        details={"estimated_delivery": chosen.estimated_delivery, "at_risk": chosen.at_risk},
    )


def label_request(shipment: dict[str, Any], choice: Choice) -> LabelRequest:
    return LabelRequest(
        carrier=choice.carrier,
        service=choice.service,
        ship_from=origin_of(shipment),
        ship_to=shipment["ship_to"],
        parcels=shipment["parcels"],
        reference=shipment["order_id"],
    )


class LabelBook:
    """Where the label worker writes what its purchases decided, many purchases per
    statement: the choices (each durable before its carrier call) and the outcomes."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema
        self.choices: Coalescer[dict[str, Any], None] = Coalescer(self._save_choices)
        self.outcomes: Coalescer[tuple[dict[str, Any], Attempt, Context], None] = Coalescer(
            self._save_outcomes
        )

    async def _save_choices(self, choices: Sequence[dict[str, Any]]) -> list[None]:
        async with self._pool.acquire() as conn:
            await repo.choose_services(conn, list(choices))
        return [None] * len(choices)

    async def _save_outcomes(
        self, outcomes: Sequence[tuple[dict[str, Any], Attempt, Context]]
    ) -> list[None]:
        async with unit_of_work(self._pool, schema=self._schema) as uow:
            await record_outcomes(uow, outcomes)
        return [None] * len(outcomes)

    async def close(self) -> None:
        await self.choices.close()
        await self.outcomes.close()


async def buy_label_once(
    shipment: dict[str, Any], *, purchaser: LabelPurchaser, book: LabelBook, now: datetime
) -> Attempt:
    """One try at the label of a leased shipment; its outcome is stored before returning."""

    async def quote(carriers: Collection[str] | None) -> Quotes:
        return await purchaser.gateway.rates(rate_request(shipment, carriers))

    async def save_choice(choice: Choice) -> None:
        await book.choices.submit(
            {
                "shipment_id": shipment["shipment_id"],
                "carrier": choice.carrier,
                "service": choice.service,
                "estimated_delivery": choice.details["estimated_delivery"],
                "at_risk": choice.details["at_risk"],
                "idempotency_key": choice.idempotency_key,
            }
        )
        shipment["at_risk"] = choice.details["at_risk"]

    # the order's trace goes on: the packing event's context was stored with the shipment
    with telemetry.span(
        "buy label",
        service="shipping",
        parent=telemetry.context_from(shipment.get("trace_context")),
        attributes={
            "waybill.order_id": shipment["order_id"],
            "waybill.stage": "label",
            "waybill.attempts": shipment["attempts"],
        },
    ) as current:
        attempt = await purchaser.attempt(
            purchase_state(shipment),
            quote=quote,
            choose=lambda quotes: pick_rate(quotes, ship_at=now, deliver_by=shipment["deliver_by"]),
            label_request=lambda choice: label_request(shipment, choice),
            save_choice=save_choice,
        )
        state = attempt.state
        if state.choice is not None:
            current.set_attribute("waybill.carrier", state.choice.carrier)
        current.set_attribute("waybill.label_bought", attempt.label is not None)
        context = telemetry.context_with(current)
    await book.outcomes.submit((shipment, attempt, context))
    return attempt


async def record_outcomes(
    uow: UnitOfWork, outcomes: Sequence[tuple[dict[str, Any], Attempt, Context]]
) -> None:
    """What tries at labels came to, in a few statements: labels bought (announced in the
    trace of each one's purchase), retries scheduled, budgets spent."""
    bought = [(s, a, c) for s, a, c in outcomes if a.label is not None]
    states = await repo.record_labels(
        uow.conn,
        [
            {
                "shipment_id": s["shipment_id"],
                "tracking_number": a.label.tracking_number,
                "label_url": a.label.label_url,
                "estimated_delivery": a.label.estimated_delivery,
                "carrier_shipment_id": a.label.carrier_shipment_id,
                "attempts": a.state.attempts,
                "pinned": a.state.pinned,
            }
            for s, a, _ in bought
            if a.label is not None
        ],
    )
    voids = False
    for shipment, attempt, context in bought:
        label = attempt.label
        assert label is not None
        outcome = states.get(shipment["shipment_id"])
        if outcome == "void_pending":  # cancelled while we were buying: void it, say nothing
            voids = True
        elif outcome == "label_created":
            uow.emit(
                ShipmentLabelCreated(
                    order_id=shipment["order_id"],
                    shipment_id=shipment["shipment_id"],
                    warehouse_id=shipment["warehouse_id"],
                    carrier=label.carrier,
                    service=label.service,
                    tracking_number=label.tracking_number,
                    label_url=label.label_url,
                    estimated_delivery=label.estimated_delivery,
                    at_risk=shipment["at_risk"],
                    lines=[ShipmentLine(**line) for line in shipment["lines"]],
                ),
                context=context,
            )
    if voids:
        await notify(uow.conn, repo.VOIDS_CHANNEL)
    retries = [(s["shipment_id"], a) for s, a, _ in outcomes if a.label is None and not a.exhausted]
    await repo.PURCHASES.save_attempts(uow.conn, retries)
    for shipment, attempt, _ in outcomes:
        if attempt.label is None and attempt.exhausted:
            await give_up_label(uow, shipment, attempt.state, attempt.error or "")


async def give_up_label(
    uow: UnitOfWork, shipment: dict[str, Any], state: PurchaseState, error: str
) -> None:
    """The retry budget is spent: ``label_failed`` and a ``shipments.exception`` for ops."""
    if not await repo.PURCHASES.give_up(uow.conn, shipment["shipment_id"], state, error):
        return
    log.error(
        "label for order %s failed %d times; waiting for ops (last error: %s)",
        shipment["order_id"],
        state.attempts,
        error,
    )
    uow.emit(
        ShipmentException(
            order_id=shipment["order_id"],
            shipment_id=shipment["shipment_id"],
            status="label_failed",
            detail=f"no label after {state.attempts} carrier calls; last error: {error}"[:1000],
        )
    )


async def void_label_once(
    shipment: dict[str, Any], *, purchaser: LabelPurchaser, pool: asyncpg.Pool, schema: str
) -> None:
    """One try at voiding the label of a cancelled order (or refusing, once scanned)."""
    carrier = shipment["carrier"]
    breaker = purchaser.breakers.of(carrier)
    attempts = shipment["attempts"]
    try:
        if not breaker.allows_call():
            raise CarrierError(f"carrier {carrier} is failing (circuit open)", retryable=True)
        attempts += 1
        carrier_shipment_id = shipment["carrier_shipment_id"]
        if carrier_shipment_id is None:
            # An unanswered purchase may have bought a label: replaying its key finds it
            # (or buys it), so that it can be voided rather than left unpaid-for and unused.
            state = purchase_state(shipment)
            assert state.choice is not None
            label = await carrier_call(
                purchaser.gateway.buy_label(
                    label_request(shipment, state.choice),
                    idempotency_key=state.choice.idempotency_key,
                ),
                maybe_processed=True,
            )
            async with pool.acquire() as conn:
                await repo.attach_label_to_void(
                    conn,
                    shipment["shipment_id"],
                    tracking_number=label.tracking_number,
                    label_url=label.label_url,
                    carrier_shipment_id=label.carrier_shipment_id,
                )
            carrier_shipment_id = label.carrier_shipment_id
            attempts += 1
        await carrier_call(
            purchaser.gateway.cancel_label(carrier, carrier_shipment_id), maybe_processed=True
        )
    except CarrierError as exc:
        if exc.retryable:
            if exc.status != 429:
                breaker.record_failure()
        else:
            breaker.release()
        async with unit_of_work(pool, schema=schema) as uow:
            if not exc.retryable or purchaser.retry.exhausted(attempts):
                await refuse_void(uow, shipment, str(exc))
                return
            delay = purchaser.retry.delay(max(1, attempts), retry_after=exc.retry_after)
            await repo.postpone_void(
                uow.conn,
                shipment["shipment_id"],
                attempts=attempts,
                delay=timedelta(seconds=delay),
                error=str(exc),
            )
        return
    breaker.record_success()
    async with pool.acquire() as conn:
        await repo.record_void(conn, shipment["shipment_id"])


async def refuse_void(uow: UnitOfWork, shipment: dict[str, Any], error: str) -> None:
    """The carrier will not void it (scanned already) or kept failing: ops must know."""
    if not await repo.refuse_void(uow.conn, shipment["shipment_id"], error=error):
        return
    uow.emit(
        ShipmentException(
            order_id=shipment["order_id"],
            shipment_id=shipment["shipment_id"],
            status="void_refused",
            detail=f"order cancelled, label {shipment['tracking_number']} not voided: {error}"[
                :1000
            ],
        )
    )


async def record_tracking(uow: UnitOfWork, update: TrackingEvent, *, source: str) -> bool | None:
    """Apply a tracking event once; None when the tracking number is unknown.

    Tracking comes days after the order's first trace: it starts a trace of its own, linked
    to the order's, and what it publishes (shipped, delivered) travels on in it.
    """
    shipment = await repo.lock_by_tracking_number(uow.conn, update.tracking_number)
    if shipment is None:
        return None
    order_trace = await telemetry.order_trace(uow.conn, shipment["order_id"])
    with telemetry.span(
        "tracking update",
        service="shipping",
        parent=telemetry.NEW_TRACE,
        links=telemetry.link_to(order_trace or shipment.get("trace_context")),
        attributes={
            "waybill.order_id": shipment["order_id"],
            "waybill.shipment_id": str(shipment["shipment_id"]),
            "waybill.stage": "delivery",
            "waybill.tracking_status": update.status,
            "waybill.source": source,
        },
    ):
        return await _apply_tracking(uow, shipment, update, source=source)


async def _apply_tracking(
    uow: UnitOfWork, shipment: dict[str, Any], update: TrackingEvent, *, source: str
) -> bool:
    status = update.status if tracking.is_known(update.status) else "unknown"
    dedupe_key = update.event_id or f"{update.tracking_number}/{status}/{update.at.isoformat()}"
    if not await repo.insert_tracking_event(
        uow.conn,
        shipment_id=shipment["shipment_id"],
        status=status,
        at=update.at,
        source=source,
        description=update.description,
        dedupe_key=f"{shipment['carrier']}/{dedupe_key}",
    ):
        return False  # a replay: recorded once already
    current = shipment["tracking_status"] or "pre_transit"
    new_status = tracking.advance(current, status)
    shipped_at = shipment["shipped_at"]
    delivered_at = shipment["delivered_at"]
    if shipped_at is None and status in tracking.IN_CARRIER_HANDS:
        shipped_at = update.at
        uow.emit(
            ShipmentShipped(
                order_id=shipment["order_id"],
                shipment_id=shipment["shipment_id"],
                carrier=shipment["carrier"],
                tracking_number=update.tracking_number,
                shipped_at=shipped_at,
            )
        )
    if delivered_at is None and status == "delivered":
        delivered_at = update.at
        deliver_by = await repo.deliver_by_of(uow.conn, shipment["order_id"])
        if deliver_by is not None:
            await check_delivery_promise(
                uow,
                order_id=shipment["order_id"],
                deliver_by=deliver_by,
                delivered_at=delivered_at,
                now=delivered_at,
            )
        uow.emit(
            ShipmentDelivered(
                order_id=shipment["order_id"],
                shipment_id=shipment["shipment_id"],
                delivered_at=delivered_at,
                source=source,
                carrier=shipment["carrier"],
                warehouse_id=shipment["warehouse_id"],
                ship_from=Origin(**shipment["ship_from"]) if shipment["ship_from"] else None,
                lines=[ShipmentLine(**line) for line in shipment["lines"]],
            )
        )
    if status in tracking.EXCEPTIONS and new_status == status:
        uow.emit(
            ShipmentException(
                order_id=shipment["order_id"],
                shipment_id=shipment["shipment_id"],
                status=status,
                detail=update.description or status,
            )
        )
    await repo.update_tracking(
        uow.conn,
        shipment["shipment_id"],
        status=new_status,
        shipped_at=shipped_at,
        delivered_at=delivered_at,
    )
    return True


async def check_delivery_promise(
    uow: UnitOfWork,
    *,
    order_id: str,
    deliver_by: datetime,
    delivered_at: datetime | None,
    now: datetime,
) -> bool:
    """Publish ``sla.breached`` (stage delivery) once per order when the promise is broken."""
    observed = delivery_breached_at(deliver_by=deliver_by, delivered_at=delivered_at, now=now)
    if observed is None:
        return False
    if not await repo.record_breach(
        uow.conn, order_id=order_id, stage="delivery", deadline=deliver_by, observed_at=observed
    ):
        return False
    uow.emit(
        SlaBreached(order_id=order_id, stage="delivery", deadline=deliver_by, observed_at=observed)
    )
    metrics.sla_breaches.add(1, {"service": "shipping", "stage": "delivery"})
    return True


def lease_for(timeout_seconds: float) -> timedelta:
    """How long a worker holds a purchase: longer than both carrier calls can take."""
    return timedelta(seconds=timeout_seconds * 4 + 10)
