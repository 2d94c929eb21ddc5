"""SQL of the shipping service."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from shared.carriers.purchase_store import PurchaseRows
from shared.db.uow import Connection

LABELS_CHANNEL = "waybill_shipping_labels"
VOIDS_CHANNEL = "waybill_shipping_voids"

#: label purchases: one per shipment (state ``label_pending`` while being bought)
PURCHASES = PurchaseRows(
    table="shipments",
    id_column="shipment_id",
    status_column="state",
    carrier_column="carrier",
    service_column="service",
)


async def remember_order(
    conn: Connection,
    *,
    order_id: str,
    service_level: str,
    placed_at: datetime,
    deliver_by: datetime,
    ship_to: dict[str, Any],
) -> int:
    """Keep the order; release shipments packed before we heard of it. Returns how many."""
    await conn.execute(
        """
        INSERT INTO shipping_orders (order_id, service_level, placed_at, deliver_by, ship_to)
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING
        """,
        order_id,
        service_level,
        placed_at,
        deliver_by,
        ship_to,
    )
    status = await conn.execute(
        """
        UPDATE shipments SET state = 'label_pending', next_attempt_at = now()
        WHERE order_id = $1 AND state = 'awaiting_order'
        """,
        order_id,
    )
    return int(status.split()[-1])


async def order_cancelled(conn: Connection, order_id: str) -> bool:
    return (
        await conn.fetchval("SELECT true FROM cancelled_orders WHERE order_id = $1", order_id)
    ) is True


async def order_known(conn: Connection, order_id: str) -> bool:
    return (
        await conn.fetchval("SELECT true FROM shipping_orders WHERE order_id = $1", order_id)
    ) is True


async def insert_shipment(
    conn: Connection,
    *,
    shipment_id: UUID,
    order_id: str,
    warehouse_id: str,
    state: str,
    idempotency_key: str,
    ship_from: dict[str, Any] | None,
    parcels: list[dict[str, Any]],
    lines: list[dict[str, Any]],
    trace_context: dict[str, str] | None = None,
) -> bool:
    inserted = await conn.fetchval(
        """
        INSERT INTO shipments (shipment_id, order_id, warehouse_id, state, idempotency_key,
                               ship_from, parcels, lines, trace_context)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT DO NOTHING
        RETURNING true
        """,
        shipment_id,
        order_id,
        warehouse_id,
        state,
        idempotency_key,
        ship_from,
        parcels,
        lines,
        trace_context,
    )
    return inserted is True


async def lease_due_shipments(
    conn: Connection, *, limit: int, lease: timedelta
) -> list[dict[str, Any]]:
    """Take due label purchases for ``lease``; another worker skips them meanwhile."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT shipment_id FROM shipments
            WHERE state = 'label_pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE shipments s
           SET next_attempt_at = now() + $2::interval
          FROM due, shipping_orders o
         WHERE s.shipment_id = due.shipment_id AND o.order_id = s.order_id
        RETURNING s.*, o.deliver_by, o.ship_to, o.service_level
        """,
        limit,
        lease,
    )
    return [dict(r) for r in rows]


async def choose_service(
    conn: Connection,
    shipment_id: UUID,
    *,
    carrier: str,
    service: str,
    estimated_delivery: datetime,
    at_risk: bool,
    idempotency_key: str,
) -> None:
    await conn.execute(
        """
        UPDATE shipments SET carrier = $2, service = $3, estimated_delivery = $4, at_risk = $5,
                             idempotency_key = $6
        WHERE shipment_id = $1
        """,
        shipment_id,
        carrier,
        service,
        estimated_delivery,
        at_risk,
        idempotency_key,
    )


async def record_label(
    conn: Connection,
    shipment_id: UUID,
    *,
    tracking_number: str,
    label_url: str,
    estimated_delivery: datetime,
    carrier_shipment_id: str,
    attempts: int,
    pinned: bool,
) -> str | None:
    """Keep a bought label. Returns the new state: ``label_created``, or ``void_pending``
    when the order was cancelled while the purchase was under way (the label is voided);
    None if this label was recorded already."""
    state: str | None = await conn.fetchval(
        """
        UPDATE shipments
           SET state = CASE WHEN state = 'label_pending' THEN 'label_created'
                            ELSE 'void_pending' END,
               tracking_status = 'pre_transit', tracking_number = $2, label_url = $3,
               estimated_delivery = $4, carrier_shipment_id = $5, attempts = $6,
               carrier_pinned = $7, label_created_at = now(), next_attempt_at = now(),
               last_error = NULL
         WHERE shipment_id = $1 AND tracking_number IS NULL
           AND state IN ('label_pending', 'cancelled', 'void_pending')
        RETURNING state
        """,
        shipment_id,
        tracking_number,
        label_url,
        estimated_delivery,
        carrier_shipment_id,
        attempts,
        pinned,
    )
    return state


async def lease_due_voids(
    conn: Connection, *, limit: int, lease: timedelta
) -> list[dict[str, Any]]:
    """Take due label voids (labels of cancelled orders) for ``lease``."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT shipment_id FROM shipments
            WHERE state = 'void_pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE shipments s SET next_attempt_at = now() + $2::interval
          FROM due
         WHERE s.shipment_id = due.shipment_id
        RETURNING s.*
        """,
        limit,
        lease,
    )
    return [dict(r) for r in rows]


async def attach_label_to_void(
    conn: Connection,
    shipment_id: UUID,
    *,
    tracking_number: str,
    label_url: str,
    carrier_shipment_id: str,
) -> None:
    """The label an unanswered purchase did buy, found by replaying its key: void it next."""
    await conn.execute(
        """
        UPDATE shipments SET tracking_number = $2, label_url = $3, carrier_shipment_id = $4,
                             tracking_status = 'pre_transit'
         WHERE shipment_id = $1 AND state = 'void_pending' AND tracking_number IS NULL
        """,
        shipment_id,
        tracking_number,
        label_url,
        carrier_shipment_id,
    )


async def record_void(conn: Connection, shipment_id: UUID) -> bool:
    status = await conn.execute(
        """
        UPDATE shipments SET state = 'cancelled', tracking_status = 'cancelled',
                             voided_at = now(), last_error = NULL
         WHERE shipment_id = $1 AND state = 'void_pending'
        """,
        shipment_id,
    )
    return status == "UPDATE 1"


async def refuse_void(conn: Connection, shipment_id: UUID, *, error: str) -> bool:
    status = await conn.execute(
        """
        UPDATE shipments SET state = 'void_refused', last_error = $2
         WHERE shipment_id = $1 AND state = 'void_pending'
        """,
        shipment_id,
        error[:1000],
    )
    return status == "UPDATE 1"


async def postpone_void(
    conn: Connection, shipment_id: UUID, *, attempts: int, delay: timedelta, error: str
) -> None:
    await conn.execute(
        """
        UPDATE shipments SET attempts = $2, next_attempt_at = now() + $3::interval,
                             last_error = $4
         WHERE shipment_id = $1 AND state = 'void_pending'
        """,
        shipment_id,
        attempts,
        delay,
        error[:1000],
    )


async def lock_by_tracking_number(conn: Connection, tracking_number: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT * FROM shipments WHERE tracking_number = $1 FOR UPDATE", tracking_number
    )
    return dict(row) if row is not None else None


async def insert_tracking_event(
    conn: Connection,
    *,
    shipment_id: UUID,
    status: str,
    at: datetime,
    source: str,
    description: str | None,
    dedupe_key: str,
) -> bool:
    inserted = await conn.fetchval(
        """
        INSERT INTO tracking_events (shipment_id, status, at, source, description, dedupe_key)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING true
        """,
        shipment_id,
        status,
        at,
        source,
        description,
        dedupe_key,
    )
    return inserted is True


async def update_tracking(
    conn: Connection,
    shipment_id: UUID,
    *,
    status: str,
    shipped_at: datetime | None,
    delivered_at: datetime | None,
) -> None:
    await conn.execute(
        """
        UPDATE shipments SET tracking_status = $2, shipped_at = $3, delivered_at = $4
        WHERE shipment_id = $1
        """,
        shipment_id,
        status,
        shipped_at,
        delivered_at,
    )


async def shipments_of_order(conn: Connection, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT * FROM shipments WHERE order_id = $1 ORDER BY created_at", order_id
    )
    shipments = []
    for row in rows:
        shipment = dict(row)
        shipment["tracking"] = [
            dict(r)
            for r in await conn.fetch(
                """
                SELECT status, at, source, description FROM tracking_events
                WHERE shipment_id = $1 ORDER BY at, id
                """,
                row["shipment_id"],
            )
        ]
        shipments.append(shipment)
    return shipments


async def cancel_shipments(conn: Connection, order_id: str) -> int:
    """Stop label purchases of a cancelled order; labels not yet scanned (or possibly bought
    by a purchase whose answer was lost) are to be voided. Returns how many to void."""
    await conn.execute(
        "INSERT INTO cancelled_orders (order_id) VALUES ($1) ON CONFLICT DO NOTHING", order_id
    )
    voids: int = await conn.fetchval(
        """
        WITH cancelled AS (
            UPDATE shipments
               SET state = CASE
                       WHEN state = 'label_created' OR carrier_pinned THEN 'void_pending'
                       ELSE 'cancelled' END,
                   attempts = 0, next_attempt_at = now()
             WHERE order_id = $1
               AND state IN ('awaiting_order', 'label_pending', 'label_failed', 'label_created')
               AND shipped_at IS NULL
            RETURNING state
        )
        SELECT count(*) FILTER (WHERE state = 'void_pending') FROM cancelled
        """,
        order_id,
    )
    return voids


async def record_breach(
    conn: Connection, *, order_id: str, stage: str, deadline: datetime, observed_at: datetime
) -> bool:
    """True only the first time a breach of this order and stage is recorded."""
    inserted = await conn.fetchval(
        """
        INSERT INTO sla_breaches (order_id, stage, deadline, observed_at)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (order_id, stage) DO NOTHING
        RETURNING true
        """,
        order_id,
        stage,
        deadline,
        observed_at,
    )
    return inserted is True


async def deliver_by_of(conn: Connection, order_id: str) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT deliver_by FROM shipping_orders WHERE order_id = $1", order_id
    )
    return value


async def overdue_orders(conn: Connection, *, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Orders past their delivery promise with a shipment, or all of it, not delivered."""
    rows = await conn.fetch(
        """
        SELECT o.order_id, o.deliver_by FROM shipping_orders o
        WHERE o.deliver_by < $1
          AND NOT EXISTS (SELECT 1 FROM sla_breaches b
                          WHERE b.order_id = o.order_id AND b.stage = 'delivery')
          AND NOT EXISTS (SELECT 1 FROM cancelled_orders c WHERE c.order_id = o.order_id)
          AND (NOT EXISTS (SELECT 1 FROM shipments s WHERE s.order_id = o.order_id)
               OR EXISTS (SELECT 1 FROM shipments s
                          WHERE s.order_id = o.order_id AND s.delivered_at IS NULL
                            AND s.state <> 'cancelled'))
        ORDER BY o.deliver_by
        LIMIT $2
        """,
        now,
        limit,
    )
    return [dict(r) for r in rows]


async def lease_quiet_shipments(
    conn: Connection, *, quiet_since: datetime, now: datetime, limit: int
) -> list[dict[str, Any]]:
    """Shipments on the way with no tracking news since ``quiet_since``, not polled since
    then either; marks them polled now."""
    rows = await conn.fetch(
        """
        WITH quiet AS (
            SELECT s.shipment_id FROM shipments s
            WHERE s.state = 'label_created'
              AND coalesce(s.tracking_status, 'pre_transit')
                  NOT IN ('delivered', 'cancelled', 'return_to_sender')
              AND coalesce((SELECT max(t.received_at) FROM tracking_events t
                            WHERE t.shipment_id = s.shipment_id), s.label_created_at) < $1
              AND (s.last_polled_at IS NULL OR s.last_polled_at < $1)
            ORDER BY s.last_polled_at NULLS FIRST
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        )
        UPDATE shipments s SET last_polled_at = $2
        FROM quiet WHERE s.shipment_id = quiet.shipment_id
        RETURNING s.shipment_id, s.tracking_number, s.carrier
        """,
        quiet_since,
        now,
        limit,
    )
    return [dict(r) for r in rows]
