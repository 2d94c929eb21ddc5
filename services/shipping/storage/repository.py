"""SQL of the shipping service."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from shared.carriers.purchase_store import PurchaseRows, as_leased
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
    id_type="uuid",
)


async def lease_due_shipments(
    conn: Connection, *, limit: int, lease: timedelta
) -> list[dict[str, Any]]:
    """Take due label purchases for ``lease``; another worker skips them meanwhile.

    A stored choice is pinned while the try may call the carrier with it; each row's
    ``carrier_pinned`` is what the last recorded outcome said (:func:`as_leased`)."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT shipment_id, carrier_pinned FROM shipments
            WHERE state = 'label_pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE shipments s
           SET next_attempt_at = now() + $2::interval,
               carrier_pinned = s.carrier_pinned OR s.carrier IS NOT NULL
          FROM shipping_orders o, due d
         -- by primary key: joined to the CTE only, a plan made while the table was small
         -- keeps scanning the whole table on every lease
         WHERE s.shipment_id = ANY(ARRAY(SELECT shipment_id FROM due))
           AND d.shipment_id = s.shipment_id AND o.order_id = s.order_id
        RETURNING s.*, d.carrier_pinned AS pinned_before, o.deliver_by, o.ship_to,
                  o.service_level
        """,
        limit,
        lease,
    )
    return [as_leased(r) for r in rows]


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
         WHERE s.shipment_id = ANY(ARRAY(SELECT shipment_id FROM due))
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


async def shop_of_order(conn: Connection, order_id: str) -> str | None:
    shop_id: str | None = await conn.fetchval(
        "SELECT shop_id FROM shipping_orders WHERE order_id = $1", order_id
    )
    return shop_id


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
        WHERE s.shipment_id = ANY(ARRAY(SELECT shipment_id FROM quiet))
        RETURNING s.shipment_id, s.tracking_number, s.carrier
        """,
        quiet_since,
        now,
        limit,
    )
    return [dict(r) for r in rows]


# --- set-based statements of the hot path (one statement per batch, not per event) ---------


async def remember_orders(conn: Connection, orders: list[dict[str, Any]]) -> int:
    """Keep the orders; release shipments packed before we heard of them. Returns how many
    were released."""
    if not orders:
        return 0
    await conn.execute(
        """
        INSERT INTO shipping_orders (order_id, service_level, placed_at, deliver_by, ship_to,
                                     shop_id)
        SELECT o, l, p, d, s::jsonb, sh
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                    $6::text[])
             AS n(o, l, p, d, s, sh)
        ON CONFLICT (order_id) DO NOTHING
        """,
        [o["order_id"] for o in orders],
        [o["service_level"] for o in orders],
        [o["placed_at"] for o in orders],
        [o["deliver_by"] for o in orders],
        [json.dumps(o["ship_to"]) for o in orders],
        [o["shop_id"] for o in orders],
    )
    status = await conn.execute(
        """
        UPDATE shipments SET state = 'label_pending', next_attempt_at = now()
        WHERE order_id = ANY($1::text[]) AND state = 'awaiting_order'
        """,
        [o["order_id"] for o in orders],
    )
    return int(status.split()[-1])


async def orders_known_and_cancelled(
    conn: Connection, order_ids: list[str]
) -> tuple[set[str], set[str]]:
    """Which of the orders shipping has heard of, and which of them were cancelled."""
    if not order_ids:
        return set(), set()
    rows = await conn.fetch(
        """
        SELECT u.id,
               EXISTS (SELECT 1 FROM shipping_orders o WHERE o.order_id = u.id) AS known,
               EXISTS (SELECT 1 FROM cancelled_orders c WHERE c.order_id = u.id) AS cancelled
        FROM unnest($1::text[]) AS u(id)
        """,
        sorted(set(order_ids)),
    )
    return {r["id"] for r in rows if r["known"]}, {r["id"] for r in rows if r["cancelled"]}


async def insert_shipments(conn: Connection, shipments: list[dict[str, Any]]) -> None:
    """New shipments with their idempotency keys, before any carrier call; a shipment known
    already (a redelivered packing) is left as it is."""
    if not shipments:
        return
    await conn.execute(
        """
        INSERT INTO shipments (shipment_id, order_id, warehouse_id, state, idempotency_key,
                               ship_from, parcels, lines, trace_context)
        SELECT i, o, w, s, k, f::jsonb, p::jsonb, l::jsonb, t::jsonb
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::text[], $9::text[]) AS n(i, o, w, s, k, f, p, l, t)
        ON CONFLICT DO NOTHING
        """,
        [s["shipment_id"] for s in shipments],
        [s["order_id"] for s in shipments],
        [s["warehouse_id"] for s in shipments],
        [s["state"] for s in shipments],
        [s["idempotency_key"] for s in shipments],
        [json.dumps(s["ship_from"]) if s["ship_from"] is not None else None for s in shipments],
        [json.dumps(s["parcels"]) for s in shipments],
        [json.dumps(s["lines"]) for s in shipments],
        [json.dumps(s["trace_context"]) for s in shipments],
    )


async def choose_services(conn: Connection, choices: list[dict[str, Any]]) -> None:
    """The carrier service chosen for each shipment, with its idempotency key, pinned
    until the try that is about to call the carrier with it records its outcome."""
    if not choices:
        return
    await conn.execute(
        """
        UPDATE shipments s SET carrier = n.c, service = n.v, estimated_delivery = n.e,
                               at_risk = n.r, idempotency_key = n.k, carrier_pinned = true
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::boolean[],
                    $6::text[]) AS n(i, c, v, e, r, k)
        WHERE s.shipment_id = n.i AND s.shipment_id = ANY($1::uuid[])
        """,
        [c["shipment_id"] for c in choices],
        [c["carrier"] for c in choices],
        [c["service"] for c in choices],
        [c["estimated_delivery"] for c in choices],
        [c["at_risk"] for c in choices],
        [c["idempotency_key"] for c in choices],
    )


async def record_labels(conn: Connection, labels: list[dict[str, Any]]) -> dict[UUID, str]:
    """Keep bought labels. Returns each shipment's new state: ``label_created``, or
    ``void_pending`` when the order was cancelled while the purchase was under way (the
    label is voided); labels recorded already are left out."""
    if not labels:
        return {}
    rows = await conn.fetch(
        """
        UPDATE shipments s
           SET state = CASE WHEN s.state = 'label_pending' THEN 'label_created'
                            ELSE 'void_pending' END,
               tracking_status = 'pre_transit', tracking_number = n.t, label_url = n.u,
               estimated_delivery = n.e, carrier_shipment_id = n.c, attempts = n.a,
               carrier_pinned = n.p, label_created_at = now(), next_attempt_at = now(),
               last_error = NULL
          FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                      $6::int[], $7::boolean[]) AS n(i, t, u, e, c, a, p)
         WHERE s.shipment_id = n.i AND s.shipment_id = ANY($1::uuid[])
           AND s.tracking_number IS NULL
           AND s.state IN ('label_pending', 'cancelled', 'void_pending')
        RETURNING s.shipment_id, s.state
        """,
        [x["shipment_id"] for x in labels],
        [x["tracking_number"] for x in labels],
        [x["label_url"] for x in labels],
        [x["estimated_delivery"] for x in labels],
        [x["carrier_shipment_id"] for x in labels],
        [x["attempts"] for x in labels],
        [x["pinned"] for x in labels],
    )
    return {r["shipment_id"]: r["state"] for r in rows}


async def next_label_due(conn: Connection) -> datetime | None:
    """When the next label purchase is due (a retry, or a lease running out)."""
    due: datetime | None = await conn.fetchval(
        "SELECT min(next_attempt_at) FROM shipments WHERE state = 'label_pending'"
    )
    return due
