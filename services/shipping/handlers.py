"""Use cases of the shipping service."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

from services.shipping.domain import tracking
from services.shipping.domain.rating import choose_rate
from services.shipping.domain.sla import delivery_breached_at
from services.shipping.storage import repository as repo
from shared.carriers import CarrierError, CarrierGateway, LabelRequest, Place, RateRequest
from shared.carriers.base import Label, TrackingEvent
from shared.carriers.resilience import RetryPolicy
from shared.db import UnitOfWork
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


async def remember_order(event: OrderAccepted, uow: UnitOfWork) -> None:
    released = await repo.remember_order(
        uow.conn,
        order_id=event.order_id,
        service_level=event.service_level,
        placed_at=event.placed_at,
        deliver_by=event.promised.deliver_by,
        ship_to=event.ship_to.model_dump(mode="json"),
    )
    if released:
        await notify(uow.conn, repo.LABELS_CHANNEL)


async def cancel_order(event: OrderCancelled, uow: UnitOfWork) -> None:
    """No label is bought for a cancelled order, and an unused one is marked cancelled."""
    await repo.cancel_shipments(uow.conn, event.order_id)


async def request_label(event: OrderPacked, uow: UnitOfWork) -> None:
    """Record the label purchase, with its idempotency key, before the first attempt."""
    shipment_id = shipment_id_for(event.order_id, event.warehouse_id)
    known = await repo.order_known(uow.conn, event.order_id)
    if await repo.order_cancelled(uow.conn, event.order_id):
        state = "cancelled"
    else:
        state = "label_pending" if known else "awaiting_order"
    await repo.insert_shipment(
        uow.conn,
        shipment_id=shipment_id,
        order_id=event.order_id,
        warehouse_id=event.warehouse_id,
        state=state,
        idempotency_key=f"waybill-{shipment_id}",
        ship_from=event.ship_from.model_dump() if event.ship_from else None,
        parcels=[p.model_dump() for p in event.parcels],
        lines=[line.model_dump() for line in event.lines],
    )
    if state == "label_pending":
        await notify(uow.conn, repo.LABELS_CHANNEL)


#: how label purchases back off between attempts
LABEL_RETRY = RetryPolicy(base_seconds=0.5, cap_seconds=60.0)


def retry_delay(attempts: int, error: CarrierError) -> float:
    """Seconds before the next attempt of a purchase that failed ``attempts`` times."""
    return LABEL_RETRY.delay(max(1, attempts), retry_after=error.retry_after)


def origin_of(shipment: dict[str, Any]) -> Place:
    return Place(**shipment["ship_from"]) if shipment["ship_from"] else DEFAULT_ORIGIN


async def choose_service(
    shipment: dict[str, Any], *, gateway: CarrierGateway, now: datetime
) -> dict[str, Any]:
    """Rate-shop against the promise; the result is stored before any label is bought."""
    ship_to = shipment["ship_to"]
    rates = await gateway.rates(
        RateRequest(
            ship_from=origin_of(shipment),
            ship_to=Place(country=ship_to["country"], postal_code=ship_to["postal_code"]),
            parcels=shipment["parcels"],
        )
    )
    chosen = choose_rate(rates, ship_at=now, deliver_by=shipment["deliver_by"])
    if chosen is None:
        raise CarrierError("no carrier quoted a rate", retryable=True)
    return {
        "carrier": chosen.rate.carrier,
        "service": chosen.rate.service,
        "estimated_delivery": chosen.estimated_delivery,
        "at_risk": chosen.at_risk,
        # one key per shipment and carrier: every retry with this carrier reuses it
        "idempotency_key": f"waybill-{shipment['shipment_id']}-{chosen.rate.carrier}",
    }


async def buy_label(shipment: dict[str, Any], *, gateway: CarrierGateway) -> Label:
    return await gateway.buy_label(
        LabelRequest(
            carrier=shipment["carrier"],
            service=shipment["service"],
            ship_from=origin_of(shipment),
            ship_to=shipment["ship_to"],
            parcels=shipment["parcels"],
            reference=shipment["order_id"],
        ),
        idempotency_key=shipment["idempotency_key"],
    )


async def record_label(uow: UnitOfWork, shipment: dict[str, Any], label: Label) -> None:
    if not await repo.record_label(
        uow.conn,
        shipment["shipment_id"],
        tracking_number=label.tracking_number,
        label_url=label.label_url,
        estimated_delivery=label.estimated_delivery,
    ):
        return
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
        )
    )


async def record_tracking(uow: UnitOfWork, update: TrackingEvent, *, source: str) -> bool | None:
    """Apply a tracking event once; None when the tracking number is unknown."""
    shipment = await repo.lock_by_tracking_number(uow.conn, update.tracking_number)
    if shipment is None:
        return None
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
    return True


def lease_for(timeout_seconds: float) -> timedelta:
    """How long a worker holds a purchase: longer than both carrier calls can take."""
    return timedelta(seconds=timeout_seconds * 4 + 10)
